"""Models that leave the lab: export with parity checks, ONNX predictions, faces in photos
and videos, annotated outputs."""

import csv
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ftkit.cli import main
from conftest import TINY, class_image, write_split_folder

skimage_data = pytest.importorskip("skimage.data")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    write_split_folder(tmp / "data", sizes=(("train", 10), ("val", 3), ("test", 3)))
    r = invoke("finetune", "--data", tmp / "data", "--backbone", TINY, "--no-pretrained", "--img-size", 32,
               "--epochs", 1, "--freeze-epochs", 0, "--batch-size", 8, "--workers", 0,
               "--project", tmp / "runs", "--name", "deploy", "--tta", "flip")
    assert r.exit_code == 0, r.output
    return tmp / "runs" / "deploy"


def _astronaut_frame(x: int, y: int, shape=(360, 480)) -> np.ndarray:
    frame = np.full((*shape, 3), 80, np.uint8)
    photo = cv2.resize(skimage_data.astronaut(), (200, 200), interpolation=cv2.INTER_AREA)
    frame[y:y + 200, x:x + 200] = photo
    return frame


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_model_metadata_and_checks_parity(run, fmt, tmp_path):
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.ts")
    r = invoke("export", run, "--format", fmt, "--out", out)
    assert r.exit_code == 0, r.output
    assert "largest difference from PyTorch" in r.output
    sidecar = json.loads(out.with_suffix(out.suffix + ".json").read_text())
    assert sidecar["classes"] == ["alpha", "beta", "gamma"] and sidecar["img_size"] == 32
    assert sidecar["parity_max_abs_diff"] <= 1e-3
    if fmt == "onnx":
        from ftkit.export import read_onnx_metadata

        meta = read_onnx_metadata(out)
        assert meta["mean"] == sidecar["mean"] and meta["channels"] == 3
        import onnxruntime as ort

        session = ort.InferenceSession(str(out))
        for batch in (1, 5):  # dynamic batch size
            y = session.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})[0]
            assert y.shape == (batch, 3)
    else:
        import torch

        from ftkit.export import load_torchscript

        model, meta = load_torchscript(out)
        assert meta["classes"] == ["alpha", "beta", "gamma"] and meta == {k: sidecar[k] for k in meta}
        assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 3)


def test_export_format_follows_the_file_name_and_refuses_a_mismatch(run, tmp_path):
    """A TorchScript file named .onnx used to be written, and failed later in onnxruntime."""
    r = CliRunner().invoke(main, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "torchscript files end in .ts or .pt" in r.output
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "m.txt")])
    assert r.exit_code == 1 and "onnx files end in .onnx; torchscript files end in .ts or .pt" in r.output
    assert list(tmp_path.iterdir()) == []
    r = invoke("export", run, "--out", tmp_path / "m.pt")  # the suffix picks TorchScript
    assert r.exit_code == 0 and "torchscript model" in r.output
    from ftkit.export import load_torchscript

    assert load_torchscript(tmp_path / "m.pt")[1]["classes"] == ["alpha", "beta", "gamma"]


def test_export_fails_beyond_tolerance(run, tmp_path, monkeypatch):
    """A broken export (here: outputs shifted by 0.01) is refused and set aside, not shipped."""
    from ftkit import export

    real = export._onnx_runner
    monkeypatch.setattr(export, "_onnx_runner", lambda path: (lambda x: real(path)(x) + 0.01))
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "differs from PyTorch by 1.00e-02 > tolerance 0.001" in r.output
    assert (tmp_path / "m.onnx.failed").is_file() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("tta", ["none", "shift"])
def test_onnx_and_pytorch_predictions_agree(run, tmp_path, tta):
    invoke("export", run, "--out", tmp_path / "m.onnx")
    invoke("export", run, "--out", tmp_path / "m.ts")
    rng = np.random.default_rng(4)
    for i in range(6):
        Image.fromarray(class_image(i % 3, rng)).save(tmp_path / f"img{i}.png")
    images = [tmp_path / f"img{i}.png" for i in range(6)]
    invoke("predict", run, *images, "--tta", tta, "--output", tmp_path / "torch.json")
    invoke("predict", tmp_path / "m.onnx", *images, "--tta", tta, "--output", tmp_path / "onnx.json")
    invoke("predict", tmp_path / "m.ts", *images, "--tta", tta, "--output", tmp_path / "ts.json")
    a = json.loads((tmp_path / "torch.json").read_text())
    b = json.loads((tmp_path / "onnx.json").read_text())
    c = json.loads((tmp_path / "ts.json").read_text())
    assert len(a) == len(b) == len(c) == 6
    for ra, rb in [*zip(a, b), *zip(a, c)]:
        pa, pb = ra["detections"][0]["probabilities"], rb["detections"][0]["probabilities"]
        assert max(abs(pa[c] - pb[c]) for c in pa) < 1e-4
        assert ra["detections"][0]["top"][0]["class"] == rb["detections"][0]["top"][0]["class"]


def test_predict_takes_the_models_tta(run, tmp_path):
    """Without --tta, predict scores images as the model's own report did (the run's TTA, which
    an export carries), so its probabilities are those of the published numbers; --tta overrides."""
    invoke("export", run, "--out", tmp_path / "m.onnx")
    invoke("export", run, "--out", tmp_path / "m.ts")
    rng = np.random.default_rng(5)
    images = []
    for i in range(3):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images[-1])  # not mirror-symmetric

    def probabilities(model, *flags):
        r = invoke("predict", model, *images, *flags, "--format", "jsonl")
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
        return np.array([list(row["detections"][0]["probabilities"].values()) for row in rows])

    for model in (run, tmp_path / "m.onnx", tmp_path / "m.ts"):
        default, flip, none = probabilities(model), probabilities(model, "--tta", "flip"), probabilities(model, "--tta", "none")
        assert default.shape == (3, 3)
        np.testing.assert_allclose(default, flip, atol=1e-6, err_msg=str(model))
        assert np.abs(default - none).max() > 1e-4, model  # flip-averaging changed them: the default is not none


def test_predict_says_how_to_classify_faces_when_large_photos_were_classified_whole(run, tmp_path):
    """The model's own setting (no face cropping) classifies a photo whole; predict then says how
    to classify the faces in it. Not for images near the model's input size, nor when --faces was given."""
    rng = np.random.default_rng(6)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    r = invoke("predict", run, tmp_path / "small.png")
    assert r.exit_code == 0 and "--faces crop" not in r.output
    r = invoke("predict", run, tmp_path / "small.png", tmp_path / "photo.png", "--output", tmp_path / "p.json")
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "1 image(s) over twice the model's 32-pixel input were classified whole" in said
    assert "add --faces crop (the largest face) or --faces all" in said
    sizes = {Path(row["path"]).name: row["size"] for row in json.loads((tmp_path / "p.json").read_text())}
    assert sizes == {"small.png": [40, 40], "photo.png": [90, 120]}  # width, height
    r = invoke("predict", run, tmp_path / "photo.png", "--faces", "none")
    assert r.exit_code == 0 and "--faces crop" not in r.output


def test_predict_every_face_and_annotate(run, tmp_path):
    two = np.full((400, 700, 3), 70, np.uint8)
    face = cv2.resize(skimage_data.astronaut(), (220, 220), interpolation=cv2.INTER_AREA)
    two[20:240, 20:240] = face
    two[150:370, 450:670] = face
    Image.fromarray(two).save(tmp_path / "two.png")
    Image.fromarray(np.full((100, 100, 3), 20, np.uint8)).save(tmp_path / "none.png")
    r = invoke("predict", run, tmp_path / "two.png", tmp_path / "none.png", "--faces", "all",
               "--annotate", tmp_path / "ann", "--format", "jsonl")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    two_faces = next(x for x in rows if x["path"].endswith("two.png"))["detections"]
    assert len(two_faces) == 2
    xs = sorted(d["box"][0] for d in two_faces)
    assert xs[0] < 200 < 400 < xs[1]
    assert next(x for x in rows if x["path"].endswith("none.png"))["detections"] == []
    assert "2 of 2 image(s) read, 2 face(s) found by retinaface" in r.output  # the closing line (standard error)
    annotated = np.asarray(Image.open(tmp_path / "ann" / "two.png"))
    assert annotated.shape == two.shape and not np.array_equal(annotated, two)


def test_a_big_folder_table_shows_the_first_images_and_the_counts_cover_all(run, tmp_path, monkeypatch):
    import ftkit.cli_predict as cli

    monkeypatch.setattr(cli, "TABLE_IMAGES", 3)
    rng = np.random.default_rng(3)
    for i in range(7):
        Image.fromarray(class_image(i % 3, rng)).save(tmp_path / f"img{i}.png")
    r = invoke("predict", run, tmp_path, "--output", tmp_path / "all.csv")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "the first 3 of 7 images: --output FILE or --format csv gives every one" in said
    assert sum(f"img{i}.png" in r.output for i in range(7)) == 3
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    counts = Counter(row["predicted"] for row in rows)
    assert len(rows) == 7 and f"7 of 7 image(s) read; top class: {', '.join(f'{c} {n}' for c, n in counts.most_common())}" in said


def test_predict_reads_a_folder_a_chunk_at_a_time(run, tmp_path):
    """A big folder is read, classified and annotated a chunk at a time: the results, their
    order, the unreadable file's error and the annotated names are those of one big chunk."""
    from ftkit.predict import open_predictor, predict_paths

    rng = np.random.default_rng(7)
    for i in range(5):
        Image.fromarray(class_image(i % 3, rng)).save(tmp_path / f"img{i}.png")
    (tmp_path / "img2.png").write_bytes(b"broken")
    pred, seen = open_predictor(run), []
    small = predict_paths(pred, [str(tmp_path)], chunk=2, annotate_dir=tmp_path.parent / "ann-small",
                          progress=seen.append)
    whole = predict_paths(pred, [str(tmp_path)], chunk=100, annotate_dir=tmp_path.parent / "ann-whole")
    assert seen == [2, 2, 1]
    assert [r["path"] for r in small] == [str(tmp_path / f"img{i}.png") for i in range(5)]
    assert "error" in small[2] and [("error" in r) for r in small] == [("error" in r) for r in whole]
    for a, b in zip(small, whole):
        if "error" not in a:
            assert Path(a["annotated"]).name == Path(b["annotated"]).name
            assert a["detections"][0]["top"][0]["class"] == b["detections"][0]["top"][0]["class"]
            pa, pb = a["detections"][0]["probabilities"], b["detections"][0]["probabilities"]
            assert max(abs(pa[c] - pb[c]) for c in pa) < 1e-5


def test_video_predictions_and_annotated_video(run, tmp_path):
    src = tmp_path / "moving.mp4"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 360))
    for i in range(12):
        writer.write(cv2.cvtColor(_astronaut_frame(20 + 20 * i, 60 + 5 * i), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "annotated.mp4"
    r = invoke("predict", run, "--video", src, "--out", out, "--every", 3)
    assert r.exit_code == 0, r.output
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (480, 360)
    capture.release()
    track = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [t["frame"] for t in track] == [0, 3, 6, 9]
    found = [t for t in track if t["detections"]]
    assert len(found) >= 3
    # the face moves right across the frames, and so does its box
    boxes = [t["detections"][0]["box"][0] for t in found]
    assert boxes == sorted(boxes)


def _moving_video(path, frames=12):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 360))
    for i in range(frames):
        writer.write(cv2.cvtColor(_astronaut_frame(20 + 20 * i, 60 + 5 * i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_video_without_out_prints_and_writes_its_predictions(run, tmp_path):
    """Without --out the frames' predictions still reach the user: streamed with --format,
    written with --output, and summed up in a table."""
    src = _moving_video(tmp_path / "moving.mp4")
    r = CliRunner().invoke(main, ["predict", str(run), "--video", str(src), "--every", "4", "--format", "jsonl",
                                  "--output", str(tmp_path / "track.csv")])
    assert r.exit_code == 0, r.output
    streamed = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert [t["frame"] for t in streamed] == [0, 4, 8]
    rows = list(csv.DictReader((tmp_path / "track.csv").open()))
    faces = [(t["frame"], d) for t in streamed for d in t["detections"]]
    assert len(faces) >= 2 and len(rows) == len(faces) + sum(not t["detections"] for t in streamed)
    for row, (frame, d) in zip([x for x in rows if x["predicted"]], faces):
        assert int(row["frame"]) == frame and row["predicted"] == d["top"][0]["class"]
        assert abs(float(row["p_beta"]) - d["probabilities"]["beta"]) < 1e-6
    tops = [d["top"][0]["class"] for _, d in faces]
    said = " ".join(r.output.split())  # rich wraps a title to the table's width
    assert f"moving.mp4: {len(faces)} face(s) in" in said and "12 frames read, 3 analysed (every 4)" in said
    table = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in r.output.splitlines()
             if line.count("│") == 5 and line.split("│")[1].strip() in ("alpha", "beta", "gamma")}
    assert table == {c: str(tops.count(c)) for c in ("alpha", "beta", "gamma")}


def test_a_video_given_as_a_path_is_read_as_one(run, tmp_path):
    """`ftkit predict MODEL clip.mp4` is `--video clip.mp4`: a video path used to fail as an
    image that could not be decoded."""
    src = _moving_video(tmp_path / "Moving.MP4")
    as_path = CliRunner().invoke(main, ["predict", str(run), str(src), "--every", "4", "--format", "jsonl"])
    as_video = CliRunner().invoke(main, ["predict", str(run), "--video", str(src), "--every", "4", "--format", "jsonl"])
    assert as_path.exit_code == as_video.exit_code == 0, as_path.output
    assert "12 frames read, 3 analysed (every 4)" in " ".join(as_path.output.split())
    assert [line for line in as_path.output.splitlines() if line.startswith("{")] == \
        [line for line in as_video.output.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_predictions_replace_an_earlier_predictions_file_but_no_other_file(run, tmp_path, suffix):
    """`--output fer2013.csv` used to overwrite the data set with predictions."""
    photo = tmp_path / "photo.png"
    Image.fromarray(class_image(0, np.random.default_rng(0), 32)).save(photo)
    out = tmp_path / f"preds{suffix}"
    assert invoke("predict", run, photo, "--output", out).exit_code == 0
    assert invoke("predict", run, photo, photo, "--output", out).exit_code == 0  # an earlier predictions file: replaced
    assert out.read_text().count(str(photo)) == 2
    theirs = tmp_path / f"data{suffix}"
    theirs.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    r = CliRunner().invoke(main, ["predict", str(run), str(photo), "--output", str(theirs)])
    assert r.exit_code == 1 and "exists and is not an earlier ftkit predictions file: nothing was written" in r.output
    assert theirs.read_text() == "emotion,pixels,Usage\n0,1 2 3,Training\n"


def test_an_annotated_video_replaces_its_own_earlier_self_but_no_other_file(run, tmp_path):
    """--out holiday.mp4 (another video of the user's) and a track over someone's .jsonl were
    overwritten; an earlier annotated video, its track beside it, is replaced."""
    src = _moving_video(tmp_path / "clip.mp4", frames=4)
    args = ["predict", str(run), "--video", str(src), "--every", "2"]
    out = tmp_path / "annotated.mp4"
    for _ in range(2):  # the second time over its own earlier output
        r = CliRunner().invoke(main, [*args, "--out", str(out)])
        assert r.exit_code == 0, r.output
    theirs = _moving_video(tmp_path / "holiday.mp4", frames=2)
    before = theirs.read_bytes()
    r = CliRunner().invoke(main, [*args, "--out", str(theirs)])
    assert r.exit_code == 1 and "is not an annotated video ftkit wrote" in " ".join(r.output.split())
    (tmp_path / "notes.jsonl").write_text("my notes\n")
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "notes.mp4")])
    assert r.exit_code == 1 and "which exists and is not an earlier ftkit track" in " ".join(r.output.split())
    assert theirs.read_bytes() == before and (tmp_path / "notes.jsonl").read_text() == "my notes\n"
    assert not (tmp_path / "notes.mp4").exists() and not (tmp_path / "holiday.jsonl").exists()


def test_annotated_images_replace_their_own_earlier_selves_but_no_other_file(run, tmp_path):
    """--annotate DIR wrote DIR/<stem>.png over whatever file of that name was there (a photo of
    the user's); its own earlier images are replaced, and are marked as ftkit's."""
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        Image.fromarray(class_image(0, rng)).save(tmp_path / f"{name}.jpg")
    out = tmp_path / "ann"
    args = ["predict", str(run), str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--annotate", str(out)]
    for _ in range(2):  # the second time over its own earlier images
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    (out / "a.png").unlink()
    theirs = Image.fromarray(class_image(1, rng))
    theirs.save(out / "a.png")  # a PNG of the user's, by the name a.jpg's annotation would take
    before = (out / "a.png").read_bytes(), (out / "b.png").read_bytes()
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and f"{out / 'a.png'} exists and is not an annotated image ftkit wrote: nothing was written" in (
        " ".join(r.output.split()))
    assert ((out / "a.png").read_bytes(), (out / "b.png").read_bytes()) == before  # b.png not rewritten either


def test_a_video_in_a_folder_of_images_is_named_not_passed_over(run, tmp_path):
    """A folder holding photos and a clip: the clip was left out without a word, and a folder
    of clips only was 'no image files found'."""
    (tmp_path / "clips").mkdir()
    src = _moving_video(tmp_path / "clips" / "clip.mp4")
    Image.fromarray(class_image(0, np.random.default_rng(0), 32)).save(tmp_path / "clips" / "photo.png")
    r = CliRunner().invoke(main, ["predict", str(run), str(tmp_path / "clips")])
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "1 of 1 image(s) read" in said, r.output
    assert f"1 video file(s) in the folder(s) given are not read with images (e.g. {src})" in said
    assert f"ftkit predict MODEL {src}" in said
    (tmp_path / "clips" / "photo.png").unlink()
    r = CliRunner().invoke(main, ["predict", str(run), str(tmp_path / "clips")])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "no image files found" in said and f"classify each one alone, ftkit predict MODEL {src}" in said


def test_ctrl_c_ends_a_video_and_keeps_what_was_read(run, tmp_path, monkeypatch):
    """Ctrl-C is how a camera stream is stopped: the annotated video and the track keep the
    frames read so far. Stopped before the first frame, an earlier --out file is untouched."""
    from ftkit import video as video_module

    src = _moving_video(tmp_path / "moving.mp4")
    real, calls = video_module.classify_images, []

    def interrupt_at(n):
        def classify(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return classify

    out = tmp_path / "annotated.mp4"
    monkeypatch.setattr(video_module, "classify_images", interrupt_at(3))
    r = CliRunner().invoke(main, ["predict", str(run), "--video", str(src), "--every", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "4 frames read (stopped by Ctrl-C), 2 analysed" in r.output
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    capture.release()
    assert [json.loads(line)["frame"] for line in out.with_suffix(".jsonl").read_text().splitlines()] == [0, 2]

    before = out.read_bytes()
    calls.clear()
    monkeypatch.setattr(video_module, "classify_images", interrupt_at(1))
    r = CliRunner().invoke(main, ["predict", str(run), "--video", str(src), "--out", str(out)])
    assert r.exit_code == 1 and "no frames could be read" in r.output and "stopped by Ctrl-C" in r.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.jsonl", "annotated.mp4", "moving.mp4"]


def test_a_video_format_this_opencv_cannot_write_leaves_no_file(run, tmp_path, monkeypatch):
    src = _moving_video(tmp_path / "v.mp4", frames=2)

    class Unopened:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(cv2, "VideoWriter", Unopened)
    r = CliRunner().invoke(main, ["predict", str(run), "--video", str(src), "--out", str(tmp_path / "a.avi")])
    assert r.exit_code == 1 and "OpenCV cannot write the video" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no temporary file left beside


@pytest.mark.parametrize("args, message", [
    (["--video", "V", "--camera", "0"], "give --video or --camera, not both"),
    (["--video", "V", "x.png"], "give image paths or --video, not both"),
    (["--video", "V", "--annotate", "ann"], "for a video use --out FILE.mp4"),
    (["x.png", "--out", "a.mp4", "--every", "2"], "--out and --every: only with --video or --camera"),
    (["--video", "V", "--out", "a.mkv"], "must end in .mp4 or .avi"),
    (["--video", "V", "--out", "V"], "is the input video"),
    (["--video", "V", "--output", "t.txt"], "--output must end in .csv, .json, .jsonl"),
    (["--video", "V", "--every", "0"], "'--every': 0 is not in the range x>=1"),
    (["V", "x.png"], "v.mp4 is a video: give it alone (or with --video)"),
    (["x.png", "--topk", "0"], "'--topk' / '--top-k': 0 is not in the range x>=1"),
])
def test_predict_refuses_options_that_do_not_go_together(run, tmp_path, args, message):
    src = _moving_video(tmp_path / "v.mp4", frames=2)
    args = [str(src) if a == "V" else a for a in args]
    r = CliRunner().invoke(main, ["predict", str(run), *args])
    assert r.exit_code in (1, 2) and message in r.output and "bug" not in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # nothing written


def test_bad_inputs_for_predict_and_export(run, tmp_path):
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "missing-run"), "x.png"])
    assert r.exit_code == 1 and "neither a run directory nor a named model" in r.output
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    r = CliRunner().invoke(main, ["predict", str(run), "--video", str(tmp_path / "broken.mp4")])
    assert r.exit_code == 1 and "cannot open video" in r.output and "convert it to .mp4" in r.output
    r = CliRunner().invoke(main, ["predict", str(run), "--video", str(tmp_path / "gone.mp4")])
    assert r.exit_code == 1 and f"video {tmp_path / 'gone.mp4'} not found" in r.output
    r = CliRunner().invoke(main, ["predict", str(run), str(tmp_path / "nothing-here.png")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "missing.onnx"), "x.png"])
    assert r.exit_code == 1 and "not found" in r.output
    torch.save({"w": torch.ones(1)}, tmp_path / "state.pt")  # a state dict, not a TorchScript export
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "state.pt"), "x.png"])
    assert r.exit_code == 1 and "is not a TorchScript file" in r.output
    invoke("export", run, "--out", tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "m.onnx has no data of its own (a named model or an exported file)" in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "m.onnx")])  # said: neither a run nor a named model
    assert r.exit_code == 1 and "is an exported model file: `ftkit predict`, `evaluate` and `ensemble` take it" in r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "missing-run")])
    assert r.exit_code == 1 and "neither a run directory nor a named model" in r.output


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_file_is_evaluated_and_ensembled_as_it_is_deployed(run, fmt, tmp_path):
    """`ftkit evaluate model.onnx --data DIR` scores the deployed file with the preprocessing and
    TTA it records, and matches its run; its evaluation goes beside it. An ensemble takes it too."""
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.ts")
    assert invoke("export", run, "--format", fmt, "--out", out).exit_code == 0
    data = run.parent.parent / "data"
    r = invoke("evaluate", out, "--data", data, "--split", "test")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "eval" / f"{out.name}-data-test"
    assert r.output.strip().splitlines()[-1] == str(folder)
    r = invoke("evaluate", run, "--data", data, "--split", "test", "--name", "pytorch")
    assert r.exit_code == 0, r.output
    exported, pytorch = (np.loadtxt(f / "predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4, 5))
                         for f in (folder, run / "eval" / "pytorch"))
    assert np.abs(exported - pytorch).max() < 1e-4  # the flip TTA the run recorded, applied to the file too
    record = json.loads((folder / "run.json").read_text())
    assert record["eval_tta"] == "flip" and record["model"]["kind"] == fmt and record["model"]["exported_from"] == str(run)
    assert json.loads((folder / "report.json").read_text())["n"] == 9

    r = invoke("evaluate", out, "--data", data, "--device", "cuda")  # not taken silently and run on the CPU
    assert r.exit_code == 1 and "is scored on the CPU" in r.output and not (tmp_path / "eval" / f"{out.name}-data-test-2").exists()

    r = invoke("ensemble", run, out, "--data", data, "--split", "test", "--out", tmp_path / "ens")
    assert r.exit_code == 0, r.output
    members = json.loads((tmp_path / "ens" / "run.json").read_text())["ensemble"]
    assert [m["run"] for m in members] == [str(run), str(out)]


def test_export_replaces_its_own_earlier_export_but_no_other_file(run, tmp_path):
    """--out over any file used to replace it silently."""
    out = tmp_path / "m.onnx"
    assert invoke("export", run, "--out", out).exit_code == 0
    first = out.stat().st_mtime_ns
    again = invoke("export", Path(os.path.relpath(run)), "--out", out)  # the same run, by another path
    assert again.exit_code == 0 and out.stat().st_mtime_ns != first
    (tmp_path / "mine.onnx").write_bytes(b"someone's model")
    r = invoke("export", run, "--out", tmp_path / "mine.onnx")
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and "is a file that is not an ftkit export of this model" in said and "--force" in said
    assert (tmp_path / "mine.onnx").read_bytes() == b"someone's model"
    assert invoke("export", run, "--out", tmp_path / "mine.onnx", "--force").exit_code == 0
    assert (tmp_path / "mine.onnx").read_bytes() != b"someone's model"
