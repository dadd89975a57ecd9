import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from ftkit import images
from ftkit.data import DataError, load_data, read_image, stratified_split
from ftkit.predict import expand_paths
from conftest import TINY, tiny_config, write_images, write_split_folder


def test_split_layout_uses_given_splits(split_folder, tmp_path, classes):
    data = load_data(tiny_config(split_folder, tmp_path))
    assert data.classes == classes
    assert data.source == "folders"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 36, "val": 12, "test": 12}
    assert data.summary()["val"] == {"alpha": 4, "beta": 4, "gamma": 4}
    assert data.eval_split == "test"
    # cached as uint8 RGB arrays
    assert data.splits["train"].images[0].dtype == np.uint8
    assert data.splits["train"].images[0].shape == (24, 24, 3)


def test_class_folders_beside_train_are_named_as_left_out(split_folder, tmp_path, classes):
    write_images(split_folder / "delta", 0, 3, np.random.default_rng(0))  # meant for train/delta/
    (split_folder / "notes").mkdir()  # no images: not worth a word
    with pytest.warns(UserWarning, match=r"only its train/, val/, test/ folders are read; the images in delta/ beside"):
        data = load_data(tiny_config(split_folder, tmp_path))
    assert data.classes == classes


def test_missing_val_is_carved_from_train(split_folder, tmp_path):
    import shutil

    shutil.rmtree(split_folder / "val")
    data = load_data(tiny_config(split_folder, tmp_path, val_split=0.25))
    assert data.summary()["val"] == {"alpha": 3, "beta": 3, "gamma": 3}
    assert data.summary()["train"] == {"alpha": 9, "beta": 9, "gamma": 9}
    assert not set(data.splits["train"].keys) & set(data.splits["val"].keys)


def test_flat_layout_is_split_stratified_and_deterministic(flat_folder, tmp_path):
    cfg = tiny_config(flat_folder, tmp_path, val_split=0.2, test_split=0.25)
    a, b = load_data(cfg), load_data(cfg)
    assert a.source == "flat"
    assert a.summary() == {
        "train": {"alpha": 11, "beta": 11, "gamma": 11},
        "val": {"alpha": 4, "beta": 4, "gamma": 4},
        "test": {"alpha": 5, "beta": 5, "gamma": 5},
    }
    for name in ("train", "val", "test"):
        assert a.splits[name].keys == b.splits[name].keys
    keys = [set(s.keys) for s in a.splits.values()]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    other = load_data(tiny_config(flat_folder, tmp_path, val_split=0.2, test_split=0.25, seed=7))
    assert other.splits["val"].keys != a.splits["val"].keys


def test_archivers_and_viewers_folders_are_not_data(flat_folder, tmp_path, classes):
    # a zip made on macOS adds __MACOSX/ with AppleDouble "._" copies; viewers add .thumbnails/
    image = next((Path(flat_folder) / classes[0]).glob("*.png")).read_bytes()
    for extra in (f"__MACOSX/{classes[0]}/._a.png", f"{classes[0]}/.thumbnails/a.png", f"{classes[1]}/__MACOSX/b.png"):
        (Path(flat_folder) / extra).parent.mkdir(parents=True, exist_ok=True)
        (Path(flat_folder) / extra).write_bytes(image)
    data = load_data(tiny_config(flat_folder, tmp_path))
    assert data.classes == classes
    assert sum(len(s.keys) for s in data.splits.values()) == 20 * len(classes)
    assert not any("__MACOSX" in k or ".thumbnails" in k for s in data.splits.values() for k in s.keys)
    listed = expand_paths([str(flat_folder)])
    assert len(listed) == 20 * len(classes) and not any("__MACOSX" in str(f) or ".thumbnails" in str(f) for f in listed)


def test_stratified_split_gives_every_split_an_image_of_small_classes():
    labels = np.array([0] * 3 + [1] * 40)
    where = stratified_split(labels, {"val": 0.1, "test": 0.1}, seed=0)
    assert sorted(where[:3]) == ["test", "train", "val"]
    assert (where[3:] == "val").sum() == 4 and (where[3:] == "test").sum() == 4


def test_a_class_too_small_to_share_out_is_named_for_the_splits_that_lack_it(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "data" / "many", 0, 20, rng)
    write_images(tmp_path / "data" / "one", 1, 1, rng)
    with pytest.warns(UserWarning) as caught:
        data = load_data(tiny_config(tmp_path / "data", tmp_path))
    said = [str(w.message) for w in caught]
    assert data.summary()["train"]["one"] == 1
    for name in ("val", "test"):
        assert f"the {name} split has no image of one, so its scores say nothing about it" in " ".join(said)
    assert sum("split has no image of" in n for n in data.notes) == 2


def test_split_listing_reproduces_the_split(flat_folder, tmp_path):
    from ftkit.data import write_split_listing

    data = load_data(tiny_config(flat_folder, tmp_path))
    write_split_listing(data, tmp_path / "split.csv")
    again = load_data(tiny_config(flat_folder, tmp_path, seed=99, splits=str(tmp_path / "split.csv")))
    for name in data.splits:
        assert again.splits[name].keys == data.splits[name].keys
        assert again.splits[name].labels.tolist() == data.splits[name].labels.tolist()
    assert again.notes == []
    hidden = Path(flat_folder) / ".cache" / "thumb.png"  # not data: the scan without a listing skips it too
    hidden.parent.mkdir()
    hidden.write_bytes(next(Path(flat_folder).rglob("*.png")).read_bytes())
    assert load_data(tiny_config(flat_folder, tmp_path, splits=str(tmp_path / "split.csv"))).notes == []
    # an image added since the listing was written is left out, and the run says so
    added = next(Path(flat_folder).rglob("*.png"))
    (added.parent / "added-later.png").write_bytes(added.read_bytes())
    with pytest.warns(UserWarning, match="1 image.s. under .* are not in the split listing"):
        later = load_data(tiny_config(flat_folder, tmp_path, splits=str(tmp_path / "split.csv")))
    assert sum(len(s.keys) for s in later.splits.values()) == sum(len(s.keys) for s in data.splits.values())
    assert "added-later.png" in later.notes[0]


def test_a_listing_of_ones_own_labels_the_images_and_ftkit_splits_them(flat_folder, tmp_path, classes):
    """A CSV of path and label (fastai's from_csv): classes from the CSV, not the folders; with
    no split column ftkit carves the splits; extra columns are left aside; a BOM is read through."""
    images = sorted(Path(flat_folder).rglob("*.png"))
    rows = [f"{p.relative_to(flat_folder).as_posix()},{p.parent.name.upper()},subject{i % 5}" for i, p in enumerate(images)]
    (tmp_path / "labels.csv").write_text("\ufeffpath,label,subject\n" + "\n".join(rows[:-3]) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="3 image.s. under .* are not in the split listing"):
        data = load_data(tiny_config(flat_folder, tmp_path, splits=str(tmp_path / "labels.csv")))
    assert data.classes == [c.upper() for c in classes]
    counts = {name: len(split.keys) for name, split in data.splits.items()}
    assert set(counts) == {"train", "val", "test"} and sum(counts.values()) == len(images) - 3
    for bad, message in (("name,class\na.png,x\n", "expected a header with path .or file, filename, image. and class"),
                         ("path,class\na.png,\n", "line 2: an empty class")):
        (tmp_path / "bad.csv").write_text(bad)
        with pytest.raises(DataError, match=message):
            load_data(tiny_config(flat_folder, tmp_path, splits=str(tmp_path / "bad.csv")))


def test_a_listing_written_by_hand_or_on_windows_reads_as_meant(flat_folder, tmp_path, classes):
    """Headers in any case (Filename, Label, Split), spaces after the commas, and backslashes in
    the paths: the classes used to keep their leading space (' alpha') and the paths were
    'listed but not there'."""
    images = sorted(Path(flat_folder).rglob("*.png"))
    rows = [f"{p.parent.name}\\{p.name}, {p.parent.name} , {'train' if i % 4 else 'val'}" for i, p in enumerate(images)]
    (tmp_path / "labels.csv").write_text("Filename, Label, Split\n" + "\n".join(rows) + "\n")
    data = load_data(tiny_config(flat_folder, tmp_path, splits=str(tmp_path / "labels.csv")))
    assert data.classes == classes
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 45, "val": 15}
    assert all(Path(k).is_file() for split in data.splits.values() for k in split.keys)


def test_a_listing_of_a_run_that_drops_a_class_warns_of_nothing(flat_folder, tmp_path, classes, recwarn):
    """The dropped class's images are not in the listing, and are not 'left out' by it."""
    from ftkit.data import write_split_listing

    cfg = tiny_config(flat_folder, tmp_path, drop_classes=[classes[0]])
    write_split_listing(load_data(cfg), tmp_path / "split.csv")
    again = load_data(tiny_config(flat_folder, tmp_path, drop_classes=[classes[0]], splits=str(tmp_path / "split.csv")))
    assert again.notes == [] and not [w for w in recwarn if "split listing" in str(w.message)]
    # a --shots run's listing leaves the images it did not draw out by design
    shots = load_data(tiny_config(flat_folder, tmp_path, shots=2, test_split=0.3))
    write_split_listing(shots, tmp_path / "shots.csv")
    assert sum(len(s.keys) for s in shots.splits.values()) < len(list(Path(flat_folder).rglob("*.png")))
    scored = load_data(tiny_config(flat_folder, tmp_path, shots=2, splits=str(tmp_path / "shots.csv")), carve=False)
    assert not [n for n in scored.notes if "split listing" in n]
    merge = {classes[0]: classes[1]}  # the listing names the merged images by their new class
    write_split_listing(load_data(tiny_config(flat_folder, tmp_path, merge_classes=merge)), tmp_path / "merged.csv")
    merged = load_data(tiny_config(flat_folder, tmp_path, merge_classes=merge, splits=str(tmp_path / "merged.csv")))
    assert merged.classes == classes[1:]


def test_scoring_one_split_decodes_and_crops_only_that_split(split_folder, flat_folder, tmp_path):
    data = load_data(tiny_config(split_folder, tmp_path, faces="crop"), carve=False, only="val")
    assert list(data.splits) == ["val"] and len(data.splits["val"].images) == len(data.splits["val"]) == 12
    assert data.faces["found"] + data.faces["fallback"] == 12  # the train split's 36 images were not looked at
    assert list(load_data(tiny_config(flat_folder, tmp_path), carve=False, only="test").splits) == ["all"]
    # a split the data lacks keeps them all, so that the caller can name what there is
    assert set(load_data(tiny_config(split_folder, tmp_path), carve=False, only="dev").splits) == {"train", "val", "test"}


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA", "CMYK"])
@pytest.mark.parametrize("fmt", ["png", "tiff", "bmp", "jpg"])
def test_read_image_handles_modes_and_formats(tmp_path, mode, fmt):
    base = Image.fromarray(np.arange(16 * 20, dtype=np.uint8).reshape(16, 20) % 251)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base).astype(np.uint16) * 257))
    else:
        img = base.convert(mode)
    path = tmp_path / f"x.{fmt}"
    try:
        img.save(path)
    except (OSError, ValueError, KeyError):
        pytest.skip(f"PIL cannot write {mode} as {fmt}")
    arr = read_image(path)
    assert arr.shape == (16, 20, 3) and arr.dtype == np.uint8
    if mode in ("L", "I;16") and fmt != "jpg":  # JPEG is lossy
        # 16-bit is rescaled to 8-bit: same picture as the 8-bit original
        assert np.abs(arr[:, :, 0].astype(int) - np.asarray(base).astype(int)).max() <= 1


def test_phone_photo_formats_are_read(split_folder, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")  # in the dev extras
    pillow_heif.register_heif_opener()  # to write one; ftkit registers it on its first HEIC
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    formats = ["heic", "avif"] if features.check("avif") else ["heic"]
    for fmt in formats:
        picture.save(split_folder / "train" / "alpha" / f"phone.{fmt.upper()}")  # as a phone names them
        assert read_image(split_folder / "train" / "alpha" / f"phone.{fmt.upper()}").shape == (16, 20, 3)
    data = load_data(tiny_config(split_folder, tmp_path))
    assert data.summary()["train"]["alpha"] == 12 + len(formats) and not data.skipped


def test_a_heic_photo_without_pillow_heif_says_what_to_install(split_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    monkeypatch.setattr(images, "_heif_opener", functools.lru_cache(images._heif_opener.__wrapped__))
    photo = split_folder / "train" / "alpha" / "IMG_0001.HEIC"
    photo.write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(DataError, match=r"IMG_0001.HEIC: a HEIC/HEIF photo, which needs pillow-heif: pip install pillow-heif"):
        read_image(photo)
    with pytest.warns(UserWarning, match=r"skipped 1 unusable file\(s\).*IMG_0001.HEIC.*pip install pillow-heif"):
        data = load_data(tiny_config(split_folder, tmp_path))
    assert data.summary()["train"]["alpha"] == 12


def test_corrupt_and_non_image_files_are_skipped_with_a_warning(split_folder, tmp_path):
    bad = split_folder / "train" / "alpha" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    (split_folder / "train" / "beta" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match=r"skipped 2 unusable file\(s\).*broken\.jpg.*notes\.txt|skipped 2 unusable file\(s\).*notes\.txt.*broken\.jpg"):
        data = load_data(tiny_config(split_folder, tmp_path))
    assert len(data.skipped) == 2
    assert data.summary()["train"] == {"alpha": 12, "beta": 12, "gamma": 12}


def test_corrupt_file_is_skipped_when_streaming_too(split_folder, tmp_path):
    (split_folder / "train" / "alpha" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        data = load_data(tiny_config(split_folder, tmp_path, cache="stream"))
    assert data.splits["train"].images is None
    assert len(data.splits["train"]) == 36


def test_strict_fails_on_corrupt_file(split_folder, tmp_path):
    (split_folder / "train" / "alpha" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="broken.jpg"):
        load_data(tiny_config(split_folder, tmp_path, strict=True))


def test_empty_class_folder_fails(split_folder, tmp_path):
    (split_folder / "train" / "delta").mkdir()
    with pytest.raises(DataError, match="without images in .*: delta"):
        load_data(tiny_config(split_folder, tmp_path))


def test_single_class_fails(tmp_path):
    write_images(tmp_path / "one" / "only", 0, 5, np.random.default_rng(0))
    with pytest.raises(DataError, match=r"the data has 1 class \(only\): a classifier needs at least two"):
        load_data(tiny_config(tmp_path / "one", tmp_path))


def test_val_class_missing_from_train_fails(split_folder, tmp_path):
    write_images(split_folder / "val" / "omega", 0, 2, np.random.default_rng(0))
    with pytest.raises(DataError, match="train/ lacks: omega"):
        load_data(tiny_config(split_folder, tmp_path))
    (split_folder / "val" / "omega").rename(split_folder / "val" / "Beta")  # the same class, spelt otherwise
    with pytest.raises(DataError, match=r"train/ lacks: Beta \(train/ has beta\)\. .*rename or remove"):
        load_data(tiny_config(split_folder, tmp_path))


def test_missing_folder_fails_with_its_name(tmp_path):
    with pytest.raises(DataError, match="nowhere does not exist"):
        load_data(tiny_config(tmp_path / "nowhere", tmp_path))


@pytest.mark.parametrize("name, how", [("faces.zip", "unzip"), ("faces.tar.gz", "tar -xf"), ("faces.tgz", "tar -xf")])
def test_an_archive_given_as_data_is_named_with_how_to_extract_it(tmp_path, name, how):
    (tmp_path / name).write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=rf"{re.escape(name)} is an archive .*extract it first \(.*{how} "):
        load_data(tiny_config(tmp_path / name, tmp_path))
    with pytest.raises(DataError, match=rf"{re.escape(name)} is an archive .*give the folder of images it holds"):
        expand_paths([str(tmp_path / name)])  # `ftkit predict MODEL faces.zip`


def test_class_drop_merge_and_whitelist(split_folder, tmp_path):
    dropped = load_data(tiny_config(split_folder, tmp_path, drop_classes=["beta"]))
    assert dropped.classes == ["alpha", "gamma"]
    assert dropped.summary()["train"] == {"alpha": 12, "gamma": 12}
    merged = load_data(tiny_config(split_folder, tmp_path, merge_classes={"beta": "alpha"}))
    assert merged.classes == ["alpha", "gamma"]
    assert merged.summary()["train"] == {"alpha": 24, "gamma": 12}
    assert merged.class_map == {"beta": "alpha"}
    kept = load_data(tiny_config(split_folder, tmp_path, classes=["beta", "gamma"]))
    assert kept.classes == ["beta", "gamma"]
    with pytest.raises(DataError, match="unknown class 'gama'.*Did you mean 'gamma'"):
        load_data(tiny_config(split_folder, tmp_path, drop_classes=["gama"]))


def test_class_names_with_commas_are_named_whole_and_other_values_are_comma_lists(tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    data = write_split_folder(tmp_path / "data", classes=("alpha", "happy, smiling", "gamma", "delta"))
    assert load_data(tiny_config(data, tmp_path, drop_classes=["happy, smiling"])).classes == ["alpha", "delta", "gamma"]
    assert load_data(tiny_config(data, tmp_path, drop_classes=["alpha,gamma"])).classes == ["delta", "happy, smiling"]
    assert load_data(tiny_config(data, tmp_path, classes=["happy, smiling", "alpha"])).classes == ["alpha", "happy, smiling"]
    with pytest.raises(DataError, match=r"unknown class 'happy'.*Classes in the data: alpha, delta, gamma, 'happy, smiling'"):
        load_data(tiny_config(data, tmp_path, classes=["happy,alpha"]))
    # on the command line both options repeat, and each value may be a comma list
    r = CliRunner().invoke(main, ["finetune", "--data", str(data), "--classes", "happy, smiling", "--classes", "alpha,gamma",
                                  "--drop-class", "gamma", "--backbone", TINY, "--no-pretrained", "--img-size", "32",
                                  "--epochs", "1", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "commas"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "runs" / "commas" / "classes.json").read_text()) == ["alpha", "happy, smiling"]


def test_shrinking_averages_pixels_and_enlarging_keeps_the_models_interpolation():
    import cv2

    from ftkit.models import DataConfig
    from ftkit.transforms import eval_transform

    tf = eval_transform(DataConfig(80, 3, False, [0.0] * 3, [1.0] * 3, "bicubic"))
    stripes = np.zeros((320, 320, 3), np.uint8)
    stripes[:, ::4] = 255  # one white column in four: every 4x4 block of the 320-pixel image averages to 63.75
    small = tf(stripes).numpy() * 255
    assert small.shape == (3, 80, 80)
    assert np.abs(small - 63.75).max() < 1.0  # bicubic alone samples between the white columns: black
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    enlarged = tf(tiny).numpy().transpose(1, 2, 0) * 255
    assert np.abs(enlarged - cv2.resize(tiny, (80, 80), interpolation=cv2.INTER_CUBIC)).max() < 1e-3


def test_a_run_directory_given_as_data_is_named_as_such(tmp_path):
    """Its plots made 'classes' and its checkpoints folder an 'empty class folder'."""
    run = tmp_path / "runs" / "a"
    (run / "checkpoints").mkdir(parents=True)
    (run / "args.yaml").write_text("data: x\n")
    (run / "run.json").write_text("{}")
    Image.new("RGB", (8, 8)).save(run / "curves.png")
    for data, message in ((run, "is an ftkit run directory, not data"), (tmp_path / "runs", "holds ftkit run directories (a...)")):
        with pytest.raises(DataError, match=re.escape(message)):
            load_data(tiny_config(data, tmp_path))


def test_classes_from_file_names_in_flat_and_split_folders(tmp_path):
    """--label-from: the class is the pattern's first group in the path inside the data (or
    split) folder; a file it finds no class in is named; non-image files are skipped."""
    from conftest import class_image

    rng = np.random.default_rng(1)
    flat, split = tmp_path / "flat", tmp_path / "split"
    for root, parts in ((flat, [""]), (split, ["train/", "val/"])):
        for part in parts:
            for i in range(6):
                for code in ("AN", "HA"):
                    path = root / f"{part}s{i % 3}" / f"KA.{code}{i}.{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(class_image(int(code == "HA"), rng)).save(path)
    (flat / "s0" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt .not an image file"):
        data = load_data(tiny_config(flat, tmp_path, label_from=r"^s[0-9]/KA[.]([A-Z]{2})", val_split=0.25, test_split=0.25))
    assert data.classes == ["AN", "HA"] and data.source == "flat"
    assert sum(len(s.keys) for s in data.splits.values()) == 12
    assert all(Path(k).name.split(".")[1][:2] == data.classes[y] for s in data.splits.values() for k, y in zip(s.keys, s.labels))
    assert any("notes.txt" in f for f, _ in data.skipped)
    by_split = load_data(tiny_config(split, tmp_path, label_from=r"^s[0-9]/KA[.]([A-Z]{2})"))
    assert by_split.summary()["val"] == {"AN": 6, "HA": 6}  # the pattern sees paths inside train/ and val/
    Image.fromarray(class_image(0, rng)).save(flat / "s0" / "unnamed.png")
    with pytest.raises(DataError, match=re.escape("finds no class in s0/unnamed.png")):
        load_data(tiny_config(flat, tmp_path, label_from=r"^s[0-9]/KA[.]([A-Z]{2})"))
    (tmp_path / "fer.csv").write_text("emotion,pixels,Usage\n")
    with pytest.raises(DataError, match="whose rows carry their labels"):
        load_data(tiny_config(tmp_path / "fer.csv", tmp_path, label_from="(x)"))
