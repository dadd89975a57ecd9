import json

import pytest
from click.testing import CliRunner

from ftkit.cli import main


@pytest.mark.slow
def test_demo_defaults_learn_the_synthetic_faces(tmp_path, monkeypatch):
    """The promise of `ftkit demo`: far above chance (>= 80 % val accuracy) with no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTKIT_WEIGHTS", str(tmp_path / "no-weights"))  # same path as a fresh clone
    result = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "demo"
    record = json.loads((run / "run.json").read_text())
    assert record["weights"]["source"] == "none"
    history = (run / "metrics.csv").read_text().splitlines()
    best_val = max(float(line.split(",")[5]) for line in history[1:])
    assert best_val >= 0.80
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "test" and report["n"] == 7 * 30
    assert report["accuracy"] >= 0.80
    assert (tmp_path / "runs" / "demo-data" / "train").is_dir()  # beside the run, as --help says, and reused


def test_demo_refuses_zero_epochs(tmp_path):
    """--epochs 0 used to be taken as 'not given' and ran the demo's 10 epochs."""
    result = CliRunner().invoke(main, ["demo", "--epochs", "0", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "'--epochs': 0 is not in the range x>=1" in result.output
    assert not (tmp_path / "d").exists()
