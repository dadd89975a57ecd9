"""Every shipped recipe loads, validates and names a known backbone."""

from pathlib import Path

import pytest

from ftkit.config import resolve
from ftkit.models import resolve_name

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {"rgb224", "gray48", "fer2013-fast", "fer2013-best", "fer2013-gpu", "fewshot"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_resolves(recipe, tmp_path):
    cfg = resolve(str(recipe), data=str(tmp_path))
    import timm

    assert resolve_name(cfg.backbone) in timm.list_models()
    assert cfg.freeze_epochs <= cfg.epochs
