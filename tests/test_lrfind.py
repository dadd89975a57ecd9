"""`ftkit lr-find`: the learning-rate range test on a tiny model, its suggestions and its refusals."""

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TINY, tiny_config
from ftkit.cli import main
from ftkit.config import ConfigError
from ftkit.lrfind import LRFinding, find_lr, plot_lr_finding


def test_suggestions_read_off_a_known_curve():
    lrs = list(np.geomspace(1e-6, 1.0, 61))
    x = np.log10(lrs)
    losses = list(2.0 - 0.8 * np.exp(-((x + 2) ** 2) / 0.5) + np.where(x > -1, 2 * (x + 1), 0))  # lowest at 1e-2
    finding = LRFinding(lrs, losses, "full", False)
    assert finding.minimum == pytest.approx(1e-2, rel=0.3) and finding.suggestion == pytest.approx(1e-3, rel=0.3)
    assert 1e-4 < finding.steepest < finding.minimum  # the fall is steepest on the way down to the minimum
    spiked = LRFinding(lrs, [losses[0], losses[1] + 0.5, *losses[2:]], "full", False)
    assert spiked.steepest == finding.steepest  # the first, noisy steps do not count
    flat = LRFinding(lrs, [2.0 + 0.001 * np.sin(i) for i in range(61)], "head", False)
    assert not flat.fell and flat.suggestion is None


def test_the_drift_of_the_first_batches_is_not_the_steepest_fall():
    """A few-shot loss falls gently, by 0.15 around 1e-3, then rises; its first batch happened
    to score 1.0 more than the rest, and the bias-corrected average carries that down over the
    first tens of steps: that drift is not the steepest fall."""
    from ftkit.lrfind import SMOOTHING

    lrs = np.geomspace(1e-7, 1.0, 100)
    x = np.log10(lrs)
    batches = 1.5 - 0.15 / (1 + np.exp(-(x + 3) * 2)) + np.where(x > -2, 1.5 * (x + 2), 0) + (np.arange(100) == 0)
    average, losses = 0.0, []
    for step, loss in enumerate(batches):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        losses.append(average / (1 - SMOOTHING ** (step + 1)))
    finding = LRFinding(list(lrs), losses, "full", False)
    assert 1e-4 < finding.steepest < 1e-2 and finding.suggestion == pytest.approx(finding.minimum / 10)


def test_the_range_test_steps_geometrically_and_writes_only_its_plot(split_folder, tmp_path):
    cfg = tiny_config(split_folder, tmp_path, freeze_epochs=0, lr=1e-3)
    finding = find_lr(cfg, start=1e-5, end=10.0, steps=30)
    assert finding.phase == "full" and len(finding.lrs) == len(finding.losses) >= 3
    ratios = np.diff(np.log(finding.lrs))
    assert np.allclose(ratios, np.log(1e6) / 29) and finding.lrs[0] == pytest.approx(1e-5)
    assert all(np.isfinite(finding.losses))
    assert finding.stopped_early or len(finding.lrs) == 30
    plot_lr_finding(finding, tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "runs").exists()  # nothing but the plot: no run directory
    # a rate far too high makes the loss blow up, and the test stops there
    wild = find_lr(cfg, start=1e-3, end=1e6, steps=40)
    assert wild.stopped_early and len(wild.lrs) < 40


def test_lr_find_cli_and_refusals(split_folder, tmp_path):
    r = CliRunner().invoke(main, ["lr-find", "--data", str(split_folder), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--batch-size", "8", "--workers", "0", "--freeze-epochs", "0",
                                  "--start", "1e-5", "--end", "10", "--steps", "30", "--plot", str(tmp_path / "p.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.png", split_folder.name])  # nothing else written
    # a tiny random model may or may not learn in 30 steps: either a rate, or the reason there is none
    assert (r.exit_code == 0 and "suggested --lr" in r.output) or (r.exit_code == 1 and "did not fall" in r.output)
    for settings, message in (({"folds": 3}, "leave out --folds"), ({"head": "logreg"}, "--head logreg")):
        with pytest.raises(ConfigError, match=message):
            find_lr(tiny_config(split_folder, tmp_path, **settings))
    with pytest.raises(ConfigError, match="0 < start < end"):
        find_lr(tiny_config(split_folder, tmp_path), start=1.0, end=0.1)


@pytest.mark.parametrize("pretrained", [False, True])
def test_a_test_that_names_no_rate_says_why(pretrained, split_folder, tmp_path, monkeypatch):
    """A flat curve names no rate; the frozen-random-backbone reason is given only when the model
    had no pretrained weights (it was given to an ImageNet model whose loss had not fallen 3 %)."""
    import ftkit.lrfind

    flat = LRFinding(list(np.geomspace(1e-7, 1.0, 20)), [2.0] * 20, "head", False, pretrained=pretrained)
    monkeypatch.setattr(ftkit.lrfind, "find_lr", lambda *args, **kwargs: flat)
    r = CliRunner().invoke(main, ["lr-find", "--data", str(split_folder), "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "did not fall between lr 1e-07 and 1 (head phase" in r.output
    assert ("without pretrained weights learns little" in r.output) is not pretrained and "more --steps" in r.output


def test_the_plot_never_replaces_a_file_that_is_not_an_earlier_plot(split_folder, tmp_path, monkeypatch):
    """--plot notes.txt used to be overwritten with the PNG after the test had run."""
    import ftkit.lrfind

    ran = []
    monkeypatch.setattr(ftkit.lrfind, "find_lr", lambda *args, **kwargs: ran.append(1))
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "notes.png").write_text("not a picture")
    for name, message in (("notes.txt", "give a path ending in .png"), ("notes.png", "is a file that is not a PNG image")):
        r = CliRunner().invoke(main, ["lr-find", "--data", str(split_folder), "--plot", str(tmp_path / name)])
        assert r.exit_code == 1 and message in r.output, r.output
    assert ran == [] and (tmp_path / "notes.txt").read_text() == "my notes" and (tmp_path / "notes.png").read_text() == "not a picture"
    finding = LRFinding(list(np.geomspace(1e-7, 1.0, 20)), [2.0] * 20, "head", False)
    plot_lr_finding(finding, tmp_path / "earlier.png")
    ftkit.lrfind.check_plot_path(tmp_path / "earlier.png")  # an earlier plot may be replaced


def test_the_range_test_steps_as_an_accumulating_run_would(split_folder, tmp_path, monkeypatch):
    """With --accumulate N each tested rate is one optimizer step over N batches, as the run's."""
    import ftkit.lrfind as lrfind

    calls = {"backward": 0, "step": 0}
    real_backward, real_step = lrfind.backward_pass, lrfind.apply_step

    def backward(parts, x, y, weight=1.0):
        calls["backward"] += 1
        assert weight == pytest.approx(1 / 3)
        return real_backward(parts, x, y, weight)

    def step(parts):
        calls["step"] += 1
        real_step(parts)

    monkeypatch.setattr(lrfind, "backward_pass", backward)
    monkeypatch.setattr(lrfind, "apply_step", step)
    finding = find_lr(tiny_config(split_folder, tmp_path, freeze_epochs=0, accumulate=3), start=1e-5, end=1e-3, steps=6)
    assert len(finding.lrs) == 6 and calls == {"backward": 18, "step": 6}
