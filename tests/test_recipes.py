"""Every shipped recipe loads, validates and names a known backbone."""

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
