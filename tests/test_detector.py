"""The landmark face detector (RetinaFace, shipped in weights/), eye alignment from its
landmarks, the fallback to OpenCV's Haar cascades, and what a run records of them."""

import json
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage import data as skimage_data

from ftkit import faces
from ftkit.cli import main
from ftkit.faces import BoxCache, Haar, RetinaFace, aligned_crop, detect_faces, detector
from conftest import TINY, write_split_folder


@pytest.fixture(autouse=True)
def fresh_detectors():
    detector.cache_clear()
    yield
    detector.cache_clear()


def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512x512 RGB, one face at about (177, 66), side 95


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT)


def eye_tilt(box) -> float:
    (x1, y1), (x2, y2) = box.eyes
    return float(np.degrees(np.arctan2(y2 - y1, x2 - x1)))


def test_two_faces_give_two_boxes_with_eye_points():
    face = astronaut()
    picture = np.full((600, 1200, 3), 90, dtype=np.uint8)
    picture[40:552, 20:532] = face
    picture[60:316, 800:1056] = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)  # a second, smaller one
    boxes = detect_faces(picture)
    assert len(boxes) == 2 and boxes[0].area > boxes[1].area
    for box, (left, top, scale) in zip(boxes, ((20, 40, 1.0), (800, 60, 0.5))):
        assert box.score > 0.9 and box.eyes is not None
        (lx, ly), (rx, ry) = box.eyes
        assert lx < rx and abs(ly - ry) < 8 * scale  # an upright face: eyes nearly level, left of right
        assert box.x < lx < box.x + box.w and box.y < ly < box.y + box.h * 0.6  # eyes in the upper part of the box
        # the face's own eyes (measured once on the photo: about (205, 101) and (247, 103))
        assert abs(lx - (left + 205 * scale)) < 6 and abs(rx - (left + 247 * scale)) < 6
        assert abs(ly - (top + 101 * scale)) < 6
    # on one thread it finds the same; the anchors it keeps for this size are not changed by a call
    assert [b.to_list() for b in RetinaFace(threads=1)(picture)] == [b.to_list() for b in boxes]
    assert [b.to_list() for b in detect_faces(picture)] == [b.to_list() for b in boxes]


def _placed(image: np.ndarray, size: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    """``image`` on a plain ``size`` (width, height) frame, its top-left corner ``at``."""
    frame = np.full((size[1], size[0], 3), 90, dtype=np.uint8)
    part = image[:size[1] - at[1], :size[0] - at[0]]
    frame[at[1]:at[1] + part.shape[0], at[0]:at[0] + part.shape[1]] = part
    return frame


def test_a_small_face_in_a_large_frame_is_found_by_the_second_look():
    small = cv2.resize(astronaut(), None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)  # a face of about 38 px
    frame = _placed(small, (1920, 1080), (1300, 700))  # shrunk to 640 px wide, the face is 13 px: below every anchor
    assert RetinaFace(threads=1, fine_side=0)(frame) == []
    (box,) = RetinaFace(threads=1)(frame)
    assert abs(box.x + box.w / 2 - (1300 + 0.4 * 226)) < 8 and abs(box.y + box.h / 2 - (700 + 0.4 * 110)) < 8
    assert 30 < box.w < 50 and box.eyes is not None


def test_no_second_look_that_would_not_see_the_frame_larger(monkeypatch):
    detect, looks = RetinaFace(threads=1, max_side=1920), []  # a first look as fine as a second would be
    first_look = detect._look

    def look(rgb, scale):
        looks.append(scale)
        return first_look(rgb, scale)

    monkeypatch.setattr(detect, "_look", look)
    detect(np.full((2000, 3000, 3), 90, dtype=np.uint8))
    assert looks == [0.64]  # once: the second would have been at 0.64 too


def test_a_face_filling_a_phone_photo_is_one_box():
    big = cv2.resize(astronaut(), None, fx=7, fy=7, interpolation=cv2.INTER_CUBIC)  # a face of about 660 px
    frame = _placed(big, (4032, 3024), (200, 0))
    boxes = RetinaFace(threads=1)(frame)
    assert [b.to_list() for b in boxes] == [b.to_list() for b in RetinaFace(threads=1, fine_side=0)(frame)]  # the first look's
    (box,) = boxes
    assert 600 < box.w < 900 and box.x < box.eyes[0][0] < box.eyes[1][0] < box.x + box.w


def test_a_face_turned_20_degrees_comes_out_level():
    tilted = rotated(astronaut(), 20)
    box = detect_faces(tilted)[0]
    assert abs(eye_tilt(box) + 20) < 6  # the landmarks follow the tilt (the image turned 20 degrees anticlockwise)
    crop = aligned_crop(tilted, box, 0.25)
    again = detect_faces(crop)[0]
    assert abs(again.eyes[0][1] - again.eyes[1][1]) <= 3  # level within 3 px
    plain = faces.square_crop(tilted, box, 0.25)
    assert abs(eye_tilt(detect_faces(plain)[0])) > 12  # without alignment the crop keeps the tilt


def test_an_image_that_is_already_a_face_crop_is_used_whole():
    """A face that fills its image (FER2013's crops: the box spans over 0.85 of the side) is not
    cropped again, so already-cropped faces keep their framing; a head with room around it is cropped."""
    x, y, side = 177, 66, 95  # the astronaut's face box (see astronaut())
    for pad, whole in ((0, True), (40, False)):
        image = cv2.resize(astronaut()[y - pad:y + side + pad, x - pad:x + side + pad], (64, 64), interpolation=cv2.INTER_AREA)
        box = detect_faces(image)[0]
        assert faces.fills(box, image) is whole
        for align in (False, True):
            crop = faces.face_crop(image, box, -0.1, align)
            assert (crop.shape == image.shape and np.array_equal(crop, image)) is whole
        crops, stats = faces.crop_faces(["x"], [image], "crop", -0.1)
        assert stats.whole == int(whole) and stats.found == 1 and np.array_equal(crops[0], image) is whole


def test_boxes_keep_the_cascade_geometry_so_margins_mean_the_same():
    """RetinaFace's box is mapped onto the frontal cascade's: on the same upright face the two
    boxes agree within a few percent of the side."""
    image = astronaut()
    rf, haar = detect_faces(image, "retinaface")[0], detect_faces(image, "haar")[0]
    assert rf.w == rf.h and haar.eyes is None
    assert abs(rf.w - haar.w) < 0.3 * haar.w
    assert abs((rf.x + rf.w / 2) - (haar.x + haar.w / 2)) < 0.15 * haar.w


def test_without_onnxruntime_auto_falls_back_to_haar_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.warns(UserWarning, match="face detector: OpenCV's Haar cascades .onnxruntime is not installed"):
        chosen = detector("auto")
    assert isinstance(chosen, Haar) and detect_faces(astronaut(), "auto")[0].eyes is None
    with pytest.raises(faces.UsageError, match="onnxruntime, which is not installed"):
        detector("retinaface")
    assert isinstance(detector("haar"), Haar)


def test_the_box_cache_is_kept_per_detector(tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(astronaut()).save(path)
    image = astronaut()
    rf, haar = BoxCache(tmp_path / "cache", "retinaface"), BoxCache(tmp_path / "cache", "haar")
    first = rf.boxes(str(path), image)
    rf.save()
    assert haar._file(str(path)) != rf._file(str(path))
    assert haar.boxes(str(path), image)[0].eyes is None  # not the other detector's cached boxes
    assert BoxCache(tmp_path / "cache", "retinaface").boxes(str(path), image) == first  # read back, eyes and all
    assert isinstance(rf.detect, RetinaFace)


def _face_folder(root, n=3):
    """root/<split>/<class>/: the astronaut at a few scales and tilts, one class per tilt direction."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 1), ("test", 1)):
        for label, sign in (("left", 1), ("right", -1)):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rotated(astronaut(), sign * rng.uniform(5, 25))
                Image.fromarray(cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)).save(root / split / label / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("chosen", ["auto", "haar"])
def test_run_json_records_the_detector_that_ran(tmp_path, chosen, monkeypatch):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path / "cache"))
    data = _face_folder(tmp_path / "faces")
    r = CliRunner().invoke(main, ["finetune", "--data", str(data), "--backbone", TINY, "--no-pretrained", "--img-size", "32",
                                  "--epochs", "1", "--batch-size", "4", "--workers", "0", "--faces", "crop", "--face-align",
                                  "--face-detector", chosen, "--project", str(tmp_path / "runs"), "--name", "run"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "run"
    recorded = json.loads((run / "run.json").read_text())["data"]["faces"]
    expected = "retinaface" if chosen == "auto" else "haar"
    assert recorded["detector"]["name"] == expected and recorded["found"] + recorded["fallback"] == 10
    if expected == "retinaface":
        assert recorded["found"] == 10  # every tilted face; the cascades miss some
    assert recorded["detector"] == faces.describe(detector(expected))  # name, version and settings
    assert f"{expected} detector" in (run / "report.md").read_text()
    assert f"faces: {expected}" in r.output and f"found one in {recorded['found']} of 10 image(s)" in r.output  # said which ran
    # predict crops as the run did: its detector, unless --face-detector says otherwise
    photo = tmp_path / "photo.png"
    Image.fromarray(astronaut()).save(photo)
    out = CliRunner().invoke(main, ["predict", str(run), str(photo), "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.splitlines()[0])["detections"][0]["region"] == "face"


def test_predict_labels_every_face_and_data_faces_counts_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path / "cache"))
    write_split_folder(tmp_path / "data", sizes=(("train", 4), ("val", 2)))
    r = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path / "data"), "--backbone", TINY, "--no-pretrained",
                                  "--img-size", "32", "--epochs", "1", "--workers", "0", "--project", str(tmp_path / "runs"),
                                  "--name", "plain"])
    assert r.exit_code == 0, r.output
    picture = np.full((600, 1200, 3), 90, dtype=np.uint8)
    picture[40:552, 20:532] = astronaut()
    picture[60:316, 800:1056] = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    (tmp_path / "group").mkdir()
    Image.fromarray(picture).save(tmp_path / "group" / "two.png")
    out = CliRunner().invoke(main, ["predict", str(tmp_path / "runs" / "plain"), str(tmp_path / "group" / "two.png"),
                                    "--faces", "all", "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    assert [d["region"] for d in json.loads(out.output.splitlines()[0])["detections"]] == ["face", "face"]
    crops = CliRunner().invoke(main, ["data", "faces", str(tmp_path / "group"), str(tmp_path / "crops"), "--size", "64"])
    assert crops.exit_code == 0, crops.output
    assert "(retinaface detector)" in crops.output and "1 of them with more than one face" in " ".join(crops.output.split())
