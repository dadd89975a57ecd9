"""Every shipped recipe loads, validates and names a known backbone."""

from dataclasses import replace
from pathlib import Path

import pytest

from ftkit.models import resolve_name
from ftkit.zoo import resolve_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {"rgb224", "gray48", "fer2013-fast", "fer2013-best", "fer2013-gpu", "fewshot",
                                         "fewshot-imagenet"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_resolves(recipe, tmp_path):
    cfg = resolve_config(str(recipe), data=str(tmp_path))  # a recipe's init fixes backbone and input
    import timm

    assert resolve_name(cfg.backbone) in timm.list_models()
    assert cfg.freeze_epochs <= cfg.epochs


def test_a_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from ftkit.config import ConfigError, find_recipe

    monkeypatch.chdir(tmp_path)
    assert find_recipe("fewshot") == find_recipe("fewshot.yaml") == RECIPES[0].parent / "fewshot.yaml"
    assert resolve_config("gray48", data=str(tmp_path)).img_size == resolve_config(str(RECIPES[0].parent / "gray48.yaml"),
                                                                                    data=str(tmp_path)).img_size
    (tmp_path / "fewshot").mkdir()
    (tmp_path / "fewshot" / "mine.yaml").write_text("epochs: 3\n")
    assert find_recipe("fewshot/mine.yaml") == Path("fewshot/mine.yaml")  # a path is a path
    with pytest.raises(ConfigError, match=r"recipe 'fewshots' not found: .*\(fer2013-best, .*fewshot, "):
        find_recipe("fewshots")
    with pytest.raises(ConfigError, match="not found"):
        find_recipe("other/fewshot.yaml")  # a path elsewhere is not taken for a name


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_end_to_end(recipe, tmp_path):
    """Each shipped recipe's own settings (augmentation, mixup, phases, TTA, memory format, ...)
    train and report from the CLI; only the size, length and weights are shrunk for the CPU."""
    import json

    import yaml
    from click.testing import CliRunner
    from conftest import write_split_folder

    from ftkit.cli import main

    data = write_split_folder(tmp_path / "data", sizes=(("train", 8), ("val", 3), ("test", 3)))
    args = ["finetune", "--recipe", str(recipe), "--data", str(data), "--epochs", "2", "--img-size", "32",
            "--no-pretrained", "--batch-size", "8", "--workers", "0", "--device", "cpu",
            "--project", str(tmp_path / "runs"), "--name", "r"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r"
    shipped = yaml.safe_load(recipe.read_text())
    used = yaml.safe_load((run / "args.yaml").read_text())
    shrunk = ("epochs", "img_size", "batch_size", "workers", "device", "backbone")
    kept = {k: v for k, v in shipped.items() if k not in shrunk}
    assert {k: used[k] for k in kept} == kept
    assert resolve_name(used["backbone"]) == resolve_name(shipped.get("backbone") or resolve_config(str(recipe)).backbone)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "report.html").is_file() and len((run / "predictions.csv").read_text().splitlines()) == 1 + 9


PIPELINE = """\
augment_pipeline:
  - HorizontalFlip: {p: 0.5}
  - OneOf:
      transforms:
        - GaussianBlur: {blur_limit: [3, 5]}
        - ToGray: {}
      p: 0.3
  - Affine: {rotate: [-15, 15]}
"""


def test_a_recipe_gives_a_whole_albumentations_pipeline(tmp_path):
    """Entries are {Name: {arguments}}, compositions (OneOf) nest, an argument left out takes
    the transform's own default; the run trains with exactly that pipeline."""
    import albumentations as A
    import yaml
    from click.testing import CliRunner
    from conftest import TINY, write_split_folder

    from ftkit.cli import main
    from ftkit.models import DataConfig
    from ftkit.transforms import train_transform

    recipe = tmp_path / "aug.yaml"
    recipe.write_text(PIPELINE)
    cfg = resolve_config(str(recipe), data=str(tmp_path))
    steps = train_transform(DataConfig(32, 3, False, (0.5,) * 3, (0.5,) * 3, "bilinear"), cfg.augment,
                            cfg.augment_pipeline).pipeline.transforms
    flip, one_of, affine = steps[1:4]  # after the resize, before the normalisation
    assert isinstance(flip, A.HorizontalFlip) and isinstance(one_of, A.OneOf) and isinstance(affine, A.Affine)
    assert [type(t) for t in one_of.transforms] == [A.GaussianBlur, A.ToGray] and one_of.p == 0.3
    assert affine.p == A.Affine().p and tuple(affine.rotate) == (-15, 15)
    data = write_split_folder(tmp_path / "data", sizes=(("train", 4), ("val", 2)))
    r = CliRunner().invoke(main, ["finetune", "--recipe", str(recipe), "--data", str(data), "--backbone", TINY,
                                  "--no-pretrained", "--img-size", "32", "--epochs", "1", "--workers", "0",
                                  "--project", str(tmp_path / "runs"), "--name", "aug"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "runs" / "aug" / "args.yaml").read_text())["augment_pipeline"] == \
        yaml.safe_load(PIPELINE)["augment_pipeline"]


@pytest.mark.parametrize("entry, message", [
    ("- HorizontalFlip: {prob: 0.5}", r"'prob' are not valid for transform"),  # Albumentations only warns
    ("- OneOf: {transforms: [{GausianBlur: {}}]}", r"unknown Albumentations transform 'GausianBlur'.*'GaussianBlur'"),
    ("- Affine: {rotate: x}", r"Albumentations cannot build \{'Affine'"),
    ("- HorizontalFlip: 0.5", r"entries must look like \{HorizontalFlip: \{p: 0.5\}\}"),
])
def test_a_pipeline_entry_albumentations_cannot_build_is_named(tmp_path, entry, message):
    from ftkit.config import ConfigError
    from ftkit.transforms import augmentations

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"augment_pipeline:\n  {entry}\n")
    cfg = resolve_config(str(recipe), data=str(tmp_path / "data"))
    with pytest.raises(ConfigError, match=message):
        augmentations(cfg.augment, cfg.augment_pipeline)
    from ftkit.train import finetune  # refused before any run directory is made

    with pytest.raises(ConfigError, match=message):
        finetune(replace(cfg, project=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("preset", ["none", "light", "fer", "strong", "wild"])
def test_an_augmented_face_stays_gray_for_a_gray_model(preset):
    """A gray model is trained on gray images whatever colour an augmentation adds (strong's and
    wild's noise), as it sees them in evaluation."""
    import numpy as np

    from ftkit.models import DataConfig
    from ftkit.transforms import eval_transform, train_transform

    dc = DataConfig(32, 3, True, (0.5,) * 3, (0.5,) * 3, "bilinear")
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)  # a colourful face
    augment = train_transform(dc, preset, seed=0)
    for _ in range(60):
        x = augment(image)
        assert x.shape == (3, 32, 32) and (x[0] == x[1]).all() and (x[1] == x[2]).all()
    x = eval_transform(dc)(image)
    assert (x[0] == x[1]).all() and (x[1] == x[2]).all()


def test_the_wild_preset_changes_the_exposure():
    """wild darkens some faces to under 60 % of their brightness; fer, which moves faces only, does not."""
    import numpy as np

    from ftkit.models import DataConfig
    from ftkit.transforms import train_transform

    dc = DataConfig(32, 3, True, (0.0,) * 3, (1.0,) * 3, "bilinear")
    image = np.full((48, 48, 3), 160, np.uint8)
    brightness = {preset: [float(augment(image)[:, 8:24, 8:24].mean()) / (160 / 255) for _ in range(80)]
                  for preset, augment in (("fer", train_transform(dc, "fer", seed=1)), ("wild", train_transform(dc, "wild", seed=1)))}
    assert min(brightness["fer"]) > 0.95 and min(brightness["wild"]) < 0.6
