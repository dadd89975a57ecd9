"""Face detection on real photographs that ship with scikit-image, placed at several scales
and positions in larger frames, and on images that contain no face."""

import cv2
import numpy as np
import pytest
from PIL import Image

from ftkit.faces import EYE_HEIGHT, Box, BoxCache, FaceStats, aligned_crop, centre_crop, crop_faces, detect_faces, find_eyes, square_crop

skimage_data = pytest.importorskip("skimage.data")
ASTRONAUT_FACE = (177, 66, 95)  # x, y, side of the face in skimage's astronaut photo (detected once, checked by eye)


def framed(scale: float, fx: float, fy: float, shape=(576, 720)):
    """The astronaut photo scaled and pasted into a plain film-sized frame; returns the frame
    and where the face should be."""
    rng = np.random.default_rng(0)
    frame = np.full((*shape, 3), 90, np.uint8) + rng.integers(0, 12, (*shape, 3), dtype=np.uint8)
    photo = cv2.resize(skimage_data.astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = photo.shape[:2]
    y, x = int((shape[0] - h) * fy), int((shape[1] - w) * fx)
    frame[y:y + h, x:x + w] = photo
    fx0, fy0, side = ASTRONAUT_FACE
    return frame, (x + fx0 * scale, y + fy0 * scale, side * scale)


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.1])
@pytest.mark.parametrize("where", [(0.0, 0.0), (0.5, 0.3), (1.0, 1.0), (0.1, 0.8)])
def test_face_found_at_scales_and_positions(scale, where):
    frame, (x, y, side) = framed(scale, *where)
    boxes = detect_faces(frame)
    assert boxes, "no face found"
    b = boxes[0]
    assert abs(b.x - x) < 0.25 * side and abs(b.y - y) < 0.25 * side
    assert 0.7 * side < b.w < 1.4 * side


@pytest.mark.parametrize("kind", ["blank", "noise", "gradient"])
def test_no_face_in_images_without_one(kind):
    rng = np.random.default_rng(1)
    if kind == "blank":
        img = np.full((300, 400, 3), 128, np.uint8)
    elif kind == "noise":
        img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    else:
        img = np.repeat(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], 300, 0).repeat(3, 2)
    assert detect_faces(img) == []


def test_square_crop_size_and_margin():
    img = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    crop = square_crop(img, Box(100, 50, 40, 60), margin=0.25)
    assert crop.shape == (90, 90, 3)  # longest side 60 grown by 2 x 25 %
    # the centre of the crop is the centre of the box
    assert np.array_equal(crop[45, 45], img[50 + 30, 100 + 20])
    edge = square_crop(img, Box(0, 0, 40, 40), margin=0.5)  # reaches outside: padded, still square
    assert edge.shape == (80, 80, 3)
    inside = square_crop(img, Box(100, 50, 40, 60), margin=-0.1)  # negative: inside the box
    assert inside.shape == (48, 48, 3) and np.array_equal(inside[24, 24], img[50 + 30, 100 + 20])
    assert centre_crop(img).shape == (200, 200, 3)


def test_crop_faces_fallback_require_and_cache(tmp_path):
    frame, _ = framed(0.8, 0.3, 0.3)
    blank = np.full((200, 260, 3), 40, np.uint8)
    paths = []
    for name, img in (("face.png", frame), ("blank.png", blank)):
        Image.fromarray(img).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    cache = BoxCache(tmp_path / "cache")
    crops, stats = crop_faces(paths, [frame, blank], "crop", 0.2, cache)
    assert stats.found == 1 and stats.fallback == [paths[1]]
    assert crops[0].shape[0] == crops[0].shape[1] and crops[1].shape == (200, 200, 3)
    assert list((tmp_path / "cache").glob("*.json"))
    # second pass: boxes come from the cache, the detector is not called
    import ftkit.faces as faces

    calls = []
    real = faces.detect_faces
    faces.detect_faces = lambda img, *a, **k: calls.append(1) or real(img)
    try:
        again, _ = crop_faces(paths, [frame, blank], "require", 0.2, BoxCache(tmp_path / "cache"))
    finally:
        faces.detect_faces = real
    assert calls == [] and again[1] is None and np.array_equal(again[0], crops[0])


def test_face_counts_add_up_field_by_field():
    """What a run and `data faces` total over splits and files: no count may be left out."""
    one = FaceStats(found=3, fallback=["a.png"], skipped=["b.png"], several=2, whole=1)
    total = FaceStats()
    total.add(one)
    assert total == one
    total.add(FaceStats(found=1, fallback=["c.png"]))
    assert total.to_dict() == {"found": 4, "fallback": 2, "skipped": 1, "several": 2, "whole": 1,
                               "fallback_files": ["a.png", "c.png"], "skipped_files": ["b.png"]}
    assert one.fallback == ["a.png"]  # the counts added in are left as they were


def test_data_faces_cli(tmp_path):
    from click.testing import CliRunner

    from ftkit.cli import main

    frame, _ = framed(0.8, 0.5, 0.5)
    (tmp_path / "src" / "happy").mkdir(parents=True)
    Image.fromarray(frame).save(tmp_path / "src" / "happy" / "a.jpg")
    Image.fromarray(np.full((100, 100, 3), 30, np.uint8)).save(tmp_path / "src" / "happy" / "empty.jpg")
    r = CliRunner().invoke(main, ["data", "faces", str(tmp_path / "src"), str(tmp_path / "dst"), "--size", "64", "--require"])
    assert r.exit_code == 0, r.output
    out = list((tmp_path / "dst").rglob("*.png"))
    assert [p.name for p in out] == ["a.png"]
    assert Image.open(out[0]).size == (64, 64)
    assert "empty.jpg" in r.output


def test_data_faces_keeps_same_stem_crops_apart_and_names_unreadable_files(tmp_path):
    """a.jpg and a.png used to be written to the same a.png, the second over the first; an
    unreadable file was reported as 'no face'."""
    from click.testing import CliRunner

    from ftkit.cli import main

    frame, _ = framed(0.8, 0.5, 0.5)
    (tmp_path / "src" / "happy").mkdir(parents=True)
    Image.fromarray(frame).save(tmp_path / "src" / "happy" / "a.jpg")
    Image.fromarray(frame[:, ::-1]).save(tmp_path / "src" / "happy" / "a.png")
    Image.fromarray(frame).save(tmp_path / "src" / "happy" / "b.jpg")
    (tmp_path / "src" / "happy" / "broken.jpg").write_bytes(b"not an image")
    r = CliRunner().invoke(main, ["data", "faces", str(tmp_path / "src"), str(tmp_path / "dst")])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "dst" / "happy").iterdir())
    assert names == ["a.jpg.png", "a.png.png", "b.png"]
    left, right = (np.asarray(Image.open(tmp_path / "dst" / "happy" / n)) for n in ("a.jpg.png", "a.png.png"))
    assert not np.array_equal(left, right)
    assert "3 crop(s) written" in r.output and "unreadable, left out 1" in r.output
    assert "unreadable, left out: cannot decode image" in r.output and "broken.jpg" in r.output
    assert "no face" not in r.output.replace("no face, left out 0", "")


def test_an_interrupted_data_faces_leaves_no_half_folder(tmp_path, monkeypatch):
    """DST appears only when every crop is written: a Ctrl-C halfway used to leave a half
    folder that the next `ftkit data faces` refused ('already holds files')."""
    from ftkit import faces as faces_module

    frame, _ = framed(0.8, 0.5, 0.5)
    (tmp_path / "src" / "happy").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(frame).save(tmp_path / "src" / "happy" / f"{i}.jpg")
    real, calls = faces_module.crop_faces, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(faces_module, "crop_faces", interrupted)
    with pytest.raises(KeyboardInterrupt):
        faces_module.crop_folder(tmp_path / "src", tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    monkeypatch.setattr(faces_module, "crop_faces", real)
    assert faces_module.crop_folder(tmp_path / "src", tmp_path / "dst").written == 3


def tilt(angle: float) -> np.ndarray:
    """The astronaut's frame turned by ``angle`` degrees about its centre."""
    frame, _ = framed(1.0, 0.5, 0.5)
    h, w = frame.shape[:2]
    return cv2.warpAffine(frame, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)


def eye_angle(image: np.ndarray) -> float:
    box = detect_faces(image)[0]
    eyes = find_eyes(image, box)
    assert eyes is not None, "eyes not found"
    (lx, ly), (rx, ry) = eyes
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


@pytest.mark.parametrize("angle", [0, 10, 15])
def test_aligned_crop_levels_the_eyes(angle):
    # (turned clockwise the frame makes the face detector prefer a false face on the suit)
    turned = tilt(angle)
    if angle:
        assert eye_angle(turned) < -5  # tilted as the photo was turned (cv2 turns counter-clockwise)
    box = detect_faces(turned)[0]
    crop = aligned_crop(turned, box, 0.2)
    assert crop.shape[0] == crop.shape[1] and crop.shape[2] == 3
    assert abs(eye_angle(crop)) < 4  # level after alignment
    eyes = find_eyes(crop, detect_faces(crop)[0])
    middle = (eyes[0] + eyes[1]) / 2 / crop.shape[0]
    # the eyes sit where the detector's box puts them on average, inside the margin
    assert abs(middle[0] - 0.5) < 0.06 and abs(middle[1] - (0.2 + EYE_HEIGHT) / 1.4) < 0.06


def test_aligned_crop_falls_back_to_the_box_without_eyes():
    blank = np.full((200, 200, 3), 128, np.uint8)
    box = Box(50, 50, 100, 100)
    assert find_eyes(blank, box) is None
    assert np.array_equal(aligned_crop(blank, box, 0.1), square_crop(blank, box, 0.1))
    frame, _ = framed(0.8, 0.5, 0.5)
    plain, _ = crop_faces(["a"], [frame], "crop", 0.1)
    levelled, stats = crop_faces(["a"], [frame], "crop", 0.1, align=True)
    assert stats.found == 1 and not np.array_equal(plain[0], levelled[0])


def test_faces_require_that_leaves_a_class_without_images_says_so_before_any_run(tmp_path):
    """With no face in any image of a class, --faces require used to leave an empty training
    class and end in a PyTorch sampler error, called a bug, with a failed run directory."""
    from click.testing import CliRunner

    from ftkit.cli import main
    from conftest import TINY

    frame, _ = framed(0.8, 0.5, 0.5)
    rng = np.random.default_rng(0)
    for folder in ("data", "none"):
        for c in ("happy", "sad"):
            (tmp_path / folder / c).mkdir(parents=True)
            for i in range(6):
                face = frame if (folder, c) == ("data", "happy") else rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
                Image.fromarray(face).save(tmp_path / folder / c / f"{i}.png")
    common = ["--backbone", TINY, "--no-pretrained", "--img-size", "32", "--epochs", "1", "--workers", "0",
              "--faces", "require", "--project", str(tmp_path / "runs")]
    r = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path / "data"), *common])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "--faces require: no face found in any training image of class(es) sad" in said
    assert "Traceback" not in r.output and not (tmp_path / "runs").exists()
    r = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path / "none"), *common])
    assert r.exit_code == 1 and "no face found in any image of the train split, so none is left" in " ".join(r.output.split())
