"""Test-time augmentation: the views it averages over (evaluate --tta is tested in test_cli); the
accuracy interval of a report."""

import pytest
import torch

from ftkit.evaluation import TTA_SHIFT, accuracy_interval, tta_probs, tta_views


def test_flip_views_are_the_image_and_its_mirror():
    x = torch.randn(2, 3, 10, 10)
    views = tta_views(x, "flip")
    assert len(views) == 2 and torch.equal(views[0], x) and torch.equal(views[1], x.flip(-1))


def test_shift_views_move_the_image_by_a_few_pixels_with_edges_repeated():
    x = torch.randn(2, 3, 50, 50)
    s = round(TTA_SHIFT * 50)  # 3 px
    views = tta_views(x, "shift")
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    # views 2-5 are the unflipped image moved; 6-9 the mirror moved the same ways
    moved = {tuple(v[0, 0, 25, 25:27].tolist()) for v in views[2:6]}
    assert len(moved) == 4  # four different shifts
    down = [v for v in views[2:6] if torch.equal(v[..., s:, :], x[..., :-s, :])]
    assert len(down) == 1 and torch.equal(down[0][..., :s, :], x[..., :1, :].expand(-1, -1, s, -1))
    right = [v for v in views[2:6] if torch.equal(v[..., :, s:], x[..., :, :-s])]
    assert len(right) == 1
    assert any(torch.equal(v[..., :, s:], x.flip(-1)[..., :, :-s]) for v in views[6:])


def test_tta_probs_average_the_views():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(5, 3, 8, 8)
    expected = sum(model(v).softmax(1) for v in tta_views(x, "shift")) / 10
    got = tta_probs(model, x, "shift")
    assert torch.allclose(got, expected) and torch.allclose(got.sum(1), torch.ones(5))
    # a flat image looks the same in every view, so TTA changes nothing
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(tta_probs(model, flat, "shift"), model(flat).softmax(1), atol=1e-6)


def test_unknown_tta_mode_is_refused():
    with pytest.raises(ValueError, match="shift"):
        tta_views(torch.zeros(1, 3, 4, 4), "tencrop")



def test_accuracy_interval_narrows_with_more_images_and_stays_in_0_1():
    """Wilson's interval: published values (Newcombe 1998, table I: 81/263 -> 0.2553-0.3662), none
    for no image, inside [0, 1] at 0 and n correct, and narrower for the same rate on more images."""
    assert accuracy_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert accuracy_interval(0, 0) is None
    low, high = accuracy_interval(0, 10)
    assert low == pytest.approx(0, abs=1e-12) and 0 < high < 0.35
    low, high = accuracy_interval(10, 10)
    assert 0.65 < low < 1 and high == pytest.approx(1)
    small, large = accuracy_interval(7, 14), accuracy_interval(700, 1400)
    assert small[1] - small[0] > 5 * (large[1] - large[0]) and small[0] < 0.5 < small[1]
