"""The imported ImageNet weights are the real thing: they classify natural photos correctly.

Skipped when the weight store lacks them (a fresh clone); `ftkit weights pull mobilenetv2_100`
and `ftkit weights pull efficientnet_lite0` put them there.
"""

import pytest
import torch

from ftkit.config import Config
from ftkit.models import create, resolve_data_config
from ftkit.transforms import eval_transform
from ftkit.weights import WeightsError, find_pretrained

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


@pytest.mark.parametrize("backbone", ["mobilenetv2", "efficientnet-lite0"])
def test_imagenet_weights_classify_photos(backbone, monkeypatch):
    monkeypatch.setenv("FTKIT_OFFLINE", "1")
    skimage_data = pytest.importorskip("skimage.data")
    try:
        state_dict, info = find_pretrained(backbone, None, allow_download=False)
    except WeightsError:
        pytest.skip(f"no {backbone} weights in the store (ftkit weights pull {backbone})")
    cfg = Config(backbone=backbone, mean=info.mean, std=info.std)
    model = create(cfg, 1000, state_dict).eval()
    transform = eval_transform(resolve_data_config(model, cfg))
    with torch.no_grad():
        cat = model(transform(skimage_data.chelsea())[None]).softmax(1)[0]
        coffee = model(transform(skimage_data.coffee())[None]).softmax(1)[0]
    assert cat.argmax().item() in (EGYPTIAN_CAT, TABBY, TIGER_CAT)
    assert cat[[EGYPTIAN_CAT, TABBY, TIGER_CAT]].sum() > 0.8
    assert coffee.argmax().item() == ESPRESSO
