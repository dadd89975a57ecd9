"""Named expression models (ftkit.zoo): a tiny model made here and shipped into a temporary
weights/ folder resolves by name for predict, evaluate, export and ensemble; `finetune --init`
carries the classifier rows of classes it knows by name, bit for bit, and records its source."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ftkit import zoo
from ftkit.cli import main
from ftkit.fer2013 import FACE_MARGIN
from ftkit.predict import load_run
from conftest import TINY, write_split_folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


TRAIN = ["--backbone", TINY, "--no-pretrained", "--img-size", 32, "--batch-size", 8, "--lr", 3e-3, "--workers", 0]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny 'expression model': classes angry, happy, sad, 32x32 input."""
    tmp = tmp_path_factory.mktemp("zoo")
    write_split_folder(tmp / "data", sizes=(("train", 10), ("val", 3), ("test", 3)), classes=("angry", "happy", "sad"))
    r = invoke("finetune", "--data", tmp / "data", *TRAIN, "--epochs", 2, "--freeze-epochs", 0,
               "--project", tmp / "runs", "--name", "source")
    assert r.exit_code == 0, r.output
    return tmp / "runs" / "source"


@pytest.fixture
def shipped(source_run, tmp_path, monkeypatch):
    """The source run shipped as `tiny-fer` into a temporary checkout weights/ folder, with an
    empty user store; the test runs in tmp_path."""
    ship_dir, store = tmp_path / "ship", tmp_path / "store"
    ship_dir.mkdir(), store.mkdir()
    monkeypatch.setattr(zoo, "SHIPPED_DIR", ship_dir)
    monkeypatch.setenv("FTKIT_WEIGHTS", str(store))
    monkeypatch.chdir(tmp_path)
    entry = zoo.save_model(source_run, "tiny-fer", shipped=True, extra={"terms": "test data"})
    return entry


def test_shipped_file_is_fp16_with_its_manifest_entry(shipped, source_run, tmp_path):
    manifest = json.loads((tmp_path / "ship" / "shipped.json").read_text())
    entry = manifest["tiny-fer"]
    assert entry["classes"] == ["angry", "happy", "sad"] and entry["dtype"] == "float16"
    assert entry["preprocessing"]["img_size"] == 32 and entry["terms"] == "test data"
    # the detector that crops faces for the model, with its version and settings: what the real
    # shipped entries record, so a re-export keeps them
    real = json.loads((Path(__file__).resolve().parents[1] / "weights" / "shipped.json").read_text())
    assert entry["preprocessing"]["face_detector_settings"] == real["fer2013-fast"]["preprocessing"]["face_detector_settings"]
    assert entry["preprocessing"]["face_detector_settings"]["name"] == "retinaface"
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "ship" / entry["file"]))
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    fp32 = load_file(str(source_run / "checkpoints" / "best.safetensors"))
    for key, t in tensors.items():
        if t.is_floating_point():
            assert torch.equal(t, fp32[key].half()), key


def test_named_model_predicts_like_its_run(shipped, source_run, tmp_path):
    images = source_run.parent.parent / "data" / "test"
    by_run = invoke("predict", source_run, images, "--format", "jsonl", "--topk", 3)
    by_name = invoke("predict", "tiny-fer", images, "--format", "jsonl", "--topk", 3)
    assert by_run.exit_code == 0 and by_name.exit_code == 0, by_name.output
    a = [json.loads(line) for line in by_run.output.splitlines() if line.startswith("{")]
    b = [json.loads(line) for line in by_name.output.splitlines() if line.startswith("{")]
    assert len(a) == len(b) == 9
    for ra, rb in zip(a, b):
        pa, pb = ra["detections"][0]["probabilities"], rb["detections"][0]["probabilities"]
        assert max(abs(pa[c] - pb[c]) for c in pa) < 2e-3  # fp16 weights


def test_named_model_evaluates_and_exports(shipped, source_run, tmp_path):
    data = source_run.parent.parent / "data"
    r = invoke("evaluate", "tiny-fer", "--data", data, "--split", "test")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "runs" / "tiny-fer" / "eval" / "data-test"
    report = json.loads((folder / "report.json").read_text())
    own = json.loads((source_run / "report.json").read_text())
    assert report["n"] == own["n"] == 9
    assert abs(report["accuracy"] - own["accuracy"]) <= 1 / 9  # fp16 may flip at most a tie-close image
    assert json.loads((folder / "run.json").read_text())["model"]["kind"] == "shipped"

    r = invoke("export", "tiny-fer", "--format", "onnx")
    assert r.exit_code == 0, r.output
    sidecar = json.loads((tmp_path / "exports" / "tiny-fer" / "model.onnx.json").read_text())
    assert sidecar["classes"] == ["angry", "happy", "sad"] and sidecar["run"] == "tiny-fer"


def test_evaluate_scores_aliased_class_folders_and_takes_data_settings(shipped, source_run, tmp_path):
    """Folders named by the field's aliases (Anger, HAPPINESS) are scored as the model's classes;
    a class it does not know is refused with the options that fix it; --faces and --drop-class
    replace the model's own data settings, and the evaluation records what it changed."""
    import shutil

    test = source_run.parent.parent / "data" / "test"
    renamed = tmp_path / "renamed"
    for old, new in (("angry", "Anger"), ("happy", "HAPPINESS"), ("sad", "sad"), ("sad", "contempt")):
        shutil.copytree(test / old, renamed / new)
    r = invoke("evaluate", "tiny-fer", "--data", renamed)
    assert r.exit_code == 1 and "contempt" in r.output and "--drop-class contempt" in r.output
    two = tmp_path / "two"  # two unknown classes: the hint leaves both out, and following it works
    shutil.copytree(renamed, two)
    shutil.copytree(test / "sad", two / "calm")
    r = invoke("evaluate", "tiny-fer", "--data", two)
    assert r.exit_code == 1 and "--drop-class calm,contempt," in r.output
    assert invoke("evaluate", "tiny-fer", "--data", two, "--drop-class", "calm,contempt").exit_code == 0

    r = invoke("evaluate", "tiny-fer", "--data", renamed, "--drop-class", "contempt", "--faces", "crop", "--name", "renamed")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "runs" / "tiny-fer" / "eval" / "renamed"
    settings = json.loads((folder / "run.json").read_text())["eval_settings"]
    assert settings["class_map"] == {"Anger": "angry", "HAPPINESS": "happy", "contempt": None}
    assert settings["overridden"] == {"drop_classes": ["contempt"], "faces": "crop"}
    assert settings["faces"]["fallback"] == 9  # synthetic images hold no face: all centre-cropped
    assert "faces: crop" in (folder / "args.yaml").read_text()
    rows = (folder / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 9 and {row.split(",")[1] for row in rows} == {"angry", "happy", "sad"}

    r = invoke("evaluate", "tiny-fer", "--data", renamed, "--drop-class", "contempt", "--face-align")
    assert r.exit_code == 1 and "faces crop or require" in r.output

    r = invoke("ensemble", "tiny-fer", source_run, "--data", renamed, "--drop-class", "contempt", "--out", tmp_path / "ens")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "ens" / "run.json").read_text())
    assert record["eval_settings"]["overridden"] == {"drop_classes": ["contempt"]}
    assert json.loads((tmp_path / "ens" / "report.json").read_text())["n"] == 9


def test_scores_on_the_fer2013_parts_a_named_model_saw_are_noted(shipped, source_run, tmp_path):
    """A shipped model's manifest says which FER2013 parts it trained on and chose its epoch by;
    images marked as those parts (a CSV's Usage, or Training_/PublicTest_ file names) are counted
    in a not-held-out note, PrivateTest and other images are not, and a model whose manifest says
    nothing gets no note."""
    import shutil

    from test_fer2013 import _pixels, _write_csv

    csv = _write_csv(tmp_path / "fer.csv", [(label, _pixels(label * 10 + i), usage) for label in (0, 3, 4)  # angry happy sad
                                            for usage in ("Training", "PublicTest", "PrivateTest") for i in range(2)])
    folder = tmp_path / "folder"
    for i, path in enumerate(sorted((source_run.parent.parent / "data" / "test").rglob("*.png"))):
        name = ("Training_7.png", "PublicTest_8.png", "PrivateTest_9.png", path.name)[i % 4]
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / f"{i}{name}" if i % 4 == 3 else folder / path.parent.name / name)

    def note(*args):
        r = invoke("evaluate", "tiny-fer", "--data", *args)
        assert r.exit_code == 0, r.output
        return " ".join(r.output.split())

    assert "not held out" not in note(csv, "--split", "train", "--name", "unsaid")  # the manifest says nothing
    zoo.annotate_model("tiny-fer", shipped=True, fer2013_seen={"train": "Training", "val": "PublicTest"})
    assert ("of the 6 images scored, tiny-fer had 6 marked FER2013 Training (CSV Usage), the part it trained on, "
            "so these scores are not held out") in note(csv, "--split", "train")
    assert "6 marked FER2013 PublicTest (CSV Usage), the part that chose its best epoch" in note(csv, "--split", "val")
    assert "not held out" not in note(csv, "--split", "test")
    said = note(folder)
    assert ("of the 9 images scored, tiny-fer had 3 marked FER2013 Training (file name), the part it trained on and "
            "2 marked FER2013 PublicTest (file name), the part that chose its best epoch") in said
    record = json.loads((tmp_path / "runs" / "tiny-fer" / "eval" / "folder-all" / "run.json").read_text())
    assert record["eval_note"].startswith("of the 9 images scored, tiny-fer had 3 marked FER2013 Training")


def test_fer2013_images_under_other_names_are_counted_by_their_pixels(shipped, tmp_path):
    """A shipped model's fer2013_digests (weights/fer2013-digests.npz for the real ones) tell the
    FER2013 images it trained on or chose its epoch by among the scored ones whatever their names:
    only Training_/PublicTest_ names and a CSV's Usage were counted, so renamed images and PNGs
    saved from the CSV were taken as held out."""
    import shutil

    from PIL import Image

    from ftkit.duplicates import pixel_digest, write_digests
    from ftkit.fer2013 import read_fer_csv
    from test_fer2013 import _pixels, _write_csv

    usages = ("Training", "PublicTest", "PrivateTest")
    csv = _write_csv(tmp_path / "fer.csv", [(label, _pixels(100 * u + label * 10 + i), usage) for label in (0, 3, 4)
                                            for u, usage in enumerate(usages) for i in range(2)])
    items, images, _ = read_fer_csv(csv)
    write_digests(tmp_path / "ship" / "fer-digests.npz", {usage: [pixel_digest(images[k]) for k, _ in items[split]]
                                                          for usage, split in (("Training", "train"), ("PublicTest", "val"))})
    zoo.annotate_model("tiny-fer", shipped=True, fer2013_seen={"train": "Training", "val": "PublicTest"},
                       fer2013_digests="fer-digests.npz")
    scored = tmp_path / "renamed"  # every CSV row as a PNG named after nothing FER2013
    for split, rows in items.items():
        for i, (key, cls) in enumerate(rows):
            (scored / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[key][:, :, 0]).save(scored / split / cls / f"face{i}.png")
    r = invoke("evaluate", "tiny-fer", "--data", scored / "train", "--name", "train")
    assert r.exit_code == 0, r.output
    assert ("of the 6 images scored, tiny-fer had 6 marked FER2013 Training (file name or pixels), the part it trained on"
            in " ".join(r.output.split()))
    r = invoke("evaluate", "tiny-fer", "--data", scored / "test", "--name", "test")  # PrivateTest: seen by neither
    assert r.exit_code == 0 and "not held out" not in r.output

    # a run started from the model says it at its start, for a test split of renamed PublicTest images
    (scored / "val").rename(scored / "held")
    shutil.copytree(scored / "held", scored / "val")
    (scored / "test").rename(scored / "private")
    (scored / "held").rename(scored / "test")
    r = invoke("finetune", "--init", "tiny-fer", "--data", scored, "--epochs", 1, "--freeze-epochs", 0, "--batch-size", 4,
               "--workers", 0, "--project", tmp_path / "runs", "--name", "renamed")
    assert r.exit_code == 0, r.output
    assert ("of the 6 images of the test split, tiny-fer (this run's start) had 6 marked FER2013 PublicTest (name, CSV "
            "Usage or pixels), the part that chose its best epoch") in " ".join(r.output.split())
    # and so does a run that a shipped model teaches
    r = invoke("distill", "tiny-fer", "--init", "tiny-fer", "--data", scored, "--epochs", 1, "--freeze-epochs", 0,
               "--batch-size", 4, "--workers", 0, "--project", tmp_path / "runs", "--name", "taught")
    assert r.exit_code == 0, r.output
    assert ("of the 6 images of the test split, tiny-fer (a teacher) had 6 marked FER2013 PublicTest (name, CSV "
            "Usage or pixels), the part that chose its best epoch") in " ".join(r.output.split())
    # scoring those runs again later says it too, naming the start and the teacher
    for run, who in (("renamed", ["its start"]), ("taught", ["its start", "a teacher"])):
        r = invoke("evaluate", tmp_path / "runs" / run, "--split", "test", "--name", "again")
        assert r.exit_code == 0, r.output
        said = " ".join(r.output.split())
        for role in who:
            assert (f"tiny-fer ({role}) had 6 marked FER2013 PublicTest (file name or pixels), the part that chose its "
                    "best epoch") in said, said
        assert "so these scores are not held out" in said


def test_evaluate_notes_photos_scored_whole_by_a_model_trained_without_face_cropping(shipped, source_run, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(7)
    for side, folder in ((100, "photos"), (40, "crops")):
        for c in ("angry", "happy", "sad"):
            (tmp_path / folder / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (side, side + 10, 3), dtype=np.uint8)).save(tmp_path / folder / c / f"{i}.png")
    said = ("the images scored (e.g. 110x100) are over twice tiny-fer's 32-pixel input and were scored whole, as it was "
            "trained (no face cropping); for photos of people, add --faces crop")
    r = invoke("evaluate", "tiny-fer", "--data", tmp_path / "photos")
    assert r.exit_code == 0 and f"note: {said}" in " ".join(r.output.split())
    assert json.loads((tmp_path / "runs" / "tiny-fer" / "eval" / "photos-all" / "run.json").read_text())[
        "eval_settings"]["whole_images"] == said
    for args in (["--data", tmp_path / "crops"], ["--data", tmp_path / "photos", "--faces", "none"]):
        r = invoke("evaluate", "tiny-fer", *args)
        assert r.exit_code == 0 and "scored whole" not in r.output, args
    r = invoke("ensemble", "tiny-fer", source_run, "--data", tmp_path / "photos", "--out", tmp_path / "pair")
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "note: the images scored (e.g. 110x100) are over twice tiny-fer's" in said
    assert f"over twice {source_run}'s 32-pixel input" in said  # each member says it


def test_named_model_needs_data_and_unknown_names_are_listed(shipped):
    r = invoke("evaluate", "tiny-fer")
    assert r.exit_code == 1 and "--data" in r.output
    r = invoke("predict", "tiny-ferr", "x.jpg")
    assert r.exit_code == 1 and "Did you mean 'tiny-fer'" in r.output and "weights list" in r.output


def test_a_changed_file_is_refused(shipped, tmp_path):
    path = tmp_path / "ship" / "tiny-fer.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_run("tiny-fer")


def test_weights_list_says_what_the_shipped_models_numbers_are_worth():
    """The real checkout's manifest: its accuracy is on PublicTest, which chose the epoch and
    holds copies of Training images; the list says both, with the count the manifest records."""
    manifest = json.loads((Path(__file__).resolve().parents[1] / "weights" / "shipped.json").read_text())
    entry = manifest["fer2013-fast"]
    copies = entry["publictest_copies_of_training"]
    assert entry["epoch_chosen_on"] == "PublicTest" and 0 < copies["images"] < copies["of"] == entry["measured"]["images"]
    without = {name: e["measured_without_training_copies"] for name, e in manifest.items()}
    # counted apart: the copies by benchmarks/fer2013_digests.py, the images scored by fer2013_heldout.py
    assert all(w["images"] == copies["of"] - copies["images"] for w in without.values())
    said = " ".join(invoke("weights", "list").output.split())
    assert ("note: PublicTest chose these models' epochs, so their numbers are not held out; and "
            f"{copies['images']:,} of PublicTest's {copies['of']:,} images are pixel copies of FER2013 Training images, which "
            "they trained on; accuracy without them: "
            + ", ".join(f"{name} {w['accuracy']:.4f}" for name, w in without.items())) in said


def test_weights_list_shows_shipped_and_saved_apart(shipped, source_run):
    r = invoke("weights", "save", source_run, "my-model")
    assert r.exit_code == 0, r.output
    r = invoke("weights", "save", source_run, "my-model")
    assert r.exit_code == 1 and "--force" in r.output
    r = invoke("weights", "save", source_run, "tiny-fer")
    assert r.exit_code == 1 and "ships" in r.output
    for bad in ("my model", "a:b", "x*", "../up", "_under", "v1.0"):
        r = invoke("weights", "save", source_run, bad)
        assert r.exit_code == 1 and "use letters, digits, '-' and '_'" in r.output, bad
    out = invoke("weights", "list").output
    assert "pixel copies" not in out  # tiny-fer's manifest says nothing of FER2013
    shipped_part, _, rest = out.partition("saved models")
    assert "tiny-fer" in shipped_part and "my-model" not in shipped_part
    saved_part, _, imported_part = rest.partition("imported backbone weights")
    assert "my-model" in saved_part and "tiny-fer" not in saved_part
    # a saved model shows what its run's report measured, and says on what
    report = json.loads((source_run / "report.json").read_text())
    row = next(line for line in saved_part.splitlines() if "my-model" in line)
    assert f"{report['accuracy']:.4f}" in row and f"{report['macro_f1']:.4f}" in row
    assert f"{report['split']} split of {source_run.name}"[:12] in row
    entry = json.loads((Path(os.environ["FTKIT_WEIGHTS"]) / "models.json").read_text())["my-model"]
    assert entry["measured"]["images"] == report["n"] and entry["measured"]["weights"] == "the run's float32 checkpoint"


def test_weights_remove_takes_a_saved_model_or_imported_weights_out_of_the_store(shipped, source_run, tmp_path):
    import timm

    from ftkit.weights import import_weights, read_manifest

    store = tmp_path / "store"
    assert invoke("weights", "save", source_run, "my-model").exit_code == 0
    torch.save(timm.create_model(TINY, num_classes=1000).state_dict(), tmp_path / "backbone.pth")
    import_weights(tmp_path / "backbone.pth", TINY)
    r = CliRunner().invoke(main, ["weights", "remove", "my-model"], input="n\n")
    assert r.exit_code == 1 and (store / "my-model.safetensors").is_file()  # asked, and told no
    r = invoke("weights", "remove", "tiny-fer", "--yes")
    assert r.exit_code == 1 and "ships with ftkit" in r.output and (tmp_path / "ship" / "tiny-fer.safetensors").is_file()
    r = invoke("weights", "remove", "nothing", "--yes")
    assert r.exit_code == 1 and "saved models: my-model; imported weights: " + TINY in " ".join(r.output.split())
    r = invoke("weights", "remove", "my-model", "--yes")
    assert r.exit_code == 0 and "removed saved model my-model" in r.output
    assert not (store / "my-model.safetensors").exists() and "my-model" not in json.loads((store / "models.json").read_text())
    assert "'my-model' is neither a run directory nor a named model" in invoke("predict", "my-model", tmp_path / "x.png").output
    r = invoke("weights", "remove", TINY, "--yes")
    assert r.exit_code == 0 and not (store / f"{TINY}.safetensors").exists() and read_manifest(store) == {}


def test_a_jaffe_style_folder_is_read_with_label_from(shipped, source_run, tmp_path):
    """JAFFE keeps every image in one folder and names the expression in the file name
    (KA.AN1.39.tiff): --label-from reads the class from there, the JAFFE codes are scored as
    the model's classes, and a run trained so repeats its own report with `ftkit evaluate`."""
    import shutil

    test = source_run.parent.parent / "data" / "test"
    flat = tmp_path / "jaffe"
    flat.mkdir()
    for folder, code in (("angry", "AN"), ("happy", "HA"), ("sad", "SA")):
        for i, image in enumerate(sorted((test / folder).iterdir())):
            shutil.copy(image, flat / f"K{i}.{code}{i + 1}.{i}.png")
    pattern = r"[.]([A-Z]{2})[0-9]"
    r = invoke("evaluate", "tiny-fer", "--data", flat)
    assert r.exit_code == 1 and "--label-from REGEX when the file names carry the class" in r.output
    r = invoke("evaluate", "tiny-fer", "--data", flat, "--label-from", pattern, "--name", "jaffe")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "runs" / "tiny-fer" / "eval" / "jaffe"
    assert json.loads((folder / "run.json").read_text())["eval_settings"]["class_map"] == {
        "AN": "angry", "HA": "happy", "SA": "sad"}
    rows = [row.split(",") for row in (folder / "predictions.csv").read_text().splitlines()[1:]]
    assert sorted((Path(row[0]).name.split(".")[1][:2], row[1]) for row in rows) == sorted(
        [("AN", "angry")] * 3 + [("HA", "happy")] * 3 + [("SA", "sad")] * 3)

    more = tmp_path / "more"
    more.mkdir()
    for i in range(4):  # train on the same images twice over: 6 per class
        for image in flat.iterdir():
            shutil.copy(image, more / f"{i}-{image.name}")
    r = invoke("finetune", "--data", more, "--label-from", pattern, *TRAIN, "--epochs", 1, "--val-split", 0.25,
               "--test-split", 0.25, "--project", tmp_path / "runs", "--name", "from-names")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "from-names"
    assert json.loads((run / "classes.json").read_text()) == ["AN", "HA", "SA"]
    again = invoke("evaluate", run)
    assert again.exit_code == 0 and "split listing" not in again.output
    own = json.loads((run / "report.json").read_text())
    assert json.loads(next((run / "eval").glob("*/report.json")).read_text())["accuracy"] == own["accuracy"]


def test_class_matching_folds_aliases_and_case():
    source = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    target = ["Anger", "contempt", "HAPPINESS", "sadness", "Surprised", "calm"]
    assert zoo.match_classes(source, target) == {0: 0, 2: 3, 3: 5, 4: 6}
    jaffe_kdef = ["AN", "DI", "AF", "HA", "NE", "SA", "SU", "FE"]
    assert zoo.match_classes(source, jaffe_kdef) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 2}


def test_init_carries_matched_rows_bit_identical_and_initialises_the_others(source_run, tmp_path):
    from ftkit.models import head_parameter_names
    from ftkit.progress import console
    from ftkit.train import build_from_init
    from ftkit.zoo import load_source, resolve_config

    cfg = resolve_config(None, data="x", init=str(source_run), pretrained=False)
    assert cfg.backbone == TINY and cfg.img_size == 32  # taken from the source, not the defaults
    target = ["Sad", "contempt", "anger"]
    model, info = build_from_init(cfg, target, console)
    src = load_source(str(source_run)).state_dict
    state = model.state_dict()
    head = head_parameter_names(model)
    for key, tensor in src.items():
        if key not in head:
            assert torch.equal(state[key], tensor), key
    weight_key = next(k for k in head if k.endswith("weight"))
    bias_key = next(k for k in head if k.endswith("bias"))
    # source classes: angry 0, happy 1, sad 2
    assert torch.equal(state[weight_key][0], src[weight_key][2]) and torch.equal(state[bias_key][0], src[bias_key][2])
    assert torch.equal(state[weight_key][2], src[weight_key][0]) and torch.equal(state[bias_key][2], src[bias_key][0])
    fresh = state[weight_key][1]
    assert not any(torch.equal(fresh, row) for row in src[weight_key])
    assert float(state[bias_key][1]) == 0.0 and 0.001 < float(fresh.std()) < 0.05  # init_head: N(0, 0.01)
    assert info.init["classes_carried"] == {"Sad": "sad", "anger": "angry"} and info.init["classes_new"] == ["contempt"]


def test_init_with_another_channel_count_adapts_the_first_convolution(source_run):
    """--init a 3-channel model with --channels 1 failed in load_state_dict with a size
    mismatch; the first convolution is now summed over its input channels (timm's
    adapt_input_conv, as for pretrained weights) and every other tensor is carried as it is."""
    from ftkit.models import head_parameter_names
    from ftkit.progress import console
    from ftkit.train import build_from_init
    from ftkit.zoo import load_source, resolve_config

    cfg = resolve_config(None, data="x", init=str(source_run), pretrained=False, channels=1)
    model, _ = build_from_init(cfg, ["angry", "happy", "sad"], console)
    src, state = load_source(str(source_run)).state_dict, model.state_dict()
    first = f"{model.pretrained_cfg['first_conv']}.weight"
    assert src[first].shape[1] == 3 and state[first].shape[1] == 1
    assert torch.allclose(state[first], src[first].sum(dim=1, keepdim=True))
    head = head_parameter_names(model)
    assert all(torch.equal(state[k], v) for k, v in src.items() if k != first and k not in head)


def test_finetune_from_a_run_records_its_source(source_run, tmp_path):
    data = write_split_folder(tmp_path / "new", sizes=(("train", 6), ("val", 2), ("test", 2)),
                              classes=("anger", "contempt", "happiness"), seed=3)
    r = invoke("finetune", "--init", source_run, "--data", data, "--epochs", 1, "--freeze-epochs", 0,
               "--batch-size", 8, "--workers", 0, "--project", tmp_path / "runs", "--name", "from-source")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "from-source"
    record = json.loads((run / "run.json").read_text())
    weights = record["weights"]
    assert weights["source"] == "init" and weights["file"] == str(source_run)
    assert weights["init"]["kind"] == "run" and weights["init"]["classes_carried"] == {"anger": "angry", "happiness": "happy"}
    assert weights["init"]["classes_new"] == ["contempt"]
    assert record["data_config"]["img_size"] == 32 and record["backbone"] == TINY
    assert "init:" in r.output and "new rows for contempt" in r.output


def test_a_run_from_a_shipped_model_notes_a_report_split_of_fer2013_images_it_saw(shipped, tmp_path):
    """Fine-tuning fer2013-fast-like models on FER2013 itself: a report split holding images the
    start trained on (Training_ names) is said at the start and in the run's note; a CSV whose
    report split is PrivateTest, which the start never saw, gets no note."""
    from test_fer2013 import _pixels, _write_csv

    zoo.annotate_model("tiny-fer", shipped=True, fer2013_seen={"train": "Training", "val": "PublicTest"})
    data = write_split_folder(tmp_path / "fer", sizes=(("train", 6), ("val", 2), ("test", 2)),
                              classes=("angry", "happy", "sad"), seed=4)
    for i, path in enumerate(sorted((data / "test").rglob("*.png"))):  # 6 test images: 3 marked Training
        if i % 2 == 0:
            path.rename(path.with_name(f"Training_{i}.png"))
    flags = ["--epochs", 1, "--freeze-epochs", 0, "--batch-size", 8, "--workers", 0, "--project", tmp_path / "runs"]
    r = invoke("finetune", "--init", "tiny-fer", "--data", data, *flags, "--name", "folder")
    assert r.exit_code == 0, r.output
    said = ("of the 6 images of the test split, tiny-fer (this run's start) had 3 marked FER2013 Training, the part "
            "it trained on")
    assert f"note: {said}, so this run's scores will not be held out" in " ".join(r.output.split())
    assert json.loads((tmp_path / "runs" / "folder" / "run.json").read_text())["eval_note"] == said
    assert f"- note: {said}" in (tmp_path / "runs" / "folder" / "report.md").read_text()

    csv = _write_csv(tmp_path / "fer.csv", [(label, _pixels(label * 10 + 3 * u + i), usage) for label in (0, 3, 4)  # no copies
                                            for u, usage in enumerate(("Training", "PublicTest", "PrivateTest")) for i in range(3)])
    r = invoke("finetune", "--init", "tiny-fer", "--data", csv, *flags, "--name", "csv")
    assert r.exit_code == 0, r.output
    assert "held out" not in r.output and json.loads((tmp_path / "runs" / "csv" / "run.json").read_text())["eval_note"] is None


def test_init_refuses_another_backbone_and_weights_together(source_run, tmp_path):
    data = write_split_folder(tmp_path / "d", sizes=(("train", 4), ("val", 2)), classes=("angry", "sad"))
    r = invoke("finetune", "--init", source_run, "--backbone", "resnet18", "--data", data, "--project", tmp_path / "runs")
    assert r.exit_code == 1 and "init" in r.output and "resnet18" in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    r = invoke("finetune", "--init", source_run, "--weights", "w.pth", "--data", data)
    assert r.exit_code == 1 and "give one of them" in r.output


@pytest.mark.parametrize("name, target", [("fer2013-fast", 0.66), ("fer2013-best", 0.70), ("fer2013-wild", 0.66)])
def test_the_shipped_model_labels_the_face_in_a_photo_offline(name, target, tmp_path, monkeypatch):
    """A fresh clone plus one command: the tracked weights/NAME.safetensors, no network."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    entry = json.loads((zoo.SHIPPED_DIR / zoo.SHIPPED).read_text())[name]
    assert entry["bytes"] <= 16e6 and "research use" in entry["terms"]
    assert entry["measured"]["split"] == "PublicTest" and entry["measured"]["accuracy"] >= target
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    monkeypatch.chdir(tmp_path)
    r = invoke("predict", name, tmp_path / "astronaut.png", "--faces", "all", "--format", "jsonl",
               "--annotate", tmp_path / "annotated")
    assert r.exit_code == 0, r.output
    (result,) = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    (face,) = result["detections"]
    assert face["box"] is not None and set(face["probabilities"]) == set(entry["classes"])
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert face["top"][0]["class"] == "happy"  # she smiles
    assert (tmp_path / "annotated" / "astronaut.png").is_file()


def test_the_manifest_face_margin_is_how_faces_are_cropped_for_the_model(source_run, tmp_path, monkeypatch):
    """A model trained on faces cropped elsewhere (FER2013) carries the margin that reproduces
    that framing in its manifest: predict crops with it, --face-margin overrides it, and a run
    started from the model inherits it."""
    ship_dir = tmp_path / "ship"
    ship_dir.mkdir()
    monkeypatch.setattr(zoo, "SHIPPED_DIR", ship_dir)
    monkeypatch.setenv("FTKIT_WEIGHTS", str(tmp_path / "store"))
    entry = zoo.save_model(source_run, "tiny-fer", shipped=True, faces={"face_margin": 0.0})
    assert entry["preprocessing"]["face_margin"] == 0.0
    assert load_run(source_run, device="cpu").config.face_margin == 0.25  # the run's own: the default
    assert load_run("tiny-fer", device="cpu").config.face_margin == 0.0
    assert zoo.resolve_config(None, init="tiny-fer", data="x").face_margin == 0.0
    assert zoo.resolve_config(None, init="tiny-fer", data="x", face_margin=0.3).face_margin == 0.3

    from ftkit import faces as faces_module

    margins = []
    real = faces_module.square_crop
    monkeypatch.setattr(faces_module, "square_crop", lambda image, box, margin: margins.append(margin) or real(image, box, margin))
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    for extra, expected in (([], 0.0), (["--face-margin", 0.4], 0.4)):
        margins.clear()
        r = invoke("predict", "tiny-fer", tmp_path / "astronaut.png", "--faces", "all", "--format", "jsonl", *extra)
        assert r.exit_code == 0, r.output
        assert margins == [expected]


def test_every_shipped_model_crops_photos_as_it_was_measured():
    """The shipped models were trained on FER2013's ready crops and measured on photos cropped by
    RetinaFace with the eyes levelled: their manifests say so, so predict and evaluate crop that way
    (fer2013-wild was first stored with its training run's settings: no levelling, detector auto)."""
    from ftkit.fer2013 import PHOTO_FACES

    for name, entry in zoo.read_models(zoo.SHIPPED_DIR / zoo.SHIPPED).items():
        pre = entry["preprocessing"]
        assert {k: pre[k] for k in PHOTO_FACES} == PHOTO_FACES, name
        assert pre["face_detector_settings"]["name"] == "retinaface", name
        assert load_run(name, device="cpu").config.face_align is True, name


def test_saving_a_model_records_how_to_crop_faces_for_it(source_run, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "SHIPPED_DIR", tmp_path)
    entry = zoo.save_model(source_run, "tiny-fer", shipped=True, faces={"face_align": True, "face_detector": "haar"})
    assert entry["preprocessing"]["face_align"] is True and entry["preprocessing"]["face_margin"] == 0.25  # the run's own
    assert entry["preprocessing"]["face_detector_settings"]["name"] == "haar"
    before = (tmp_path / "tiny-fer.safetensors").read_bytes()
    with pytest.raises(ValueError, match="face_margn"):
        zoo.save_model(source_run, "tiny-fer", shipped=True, force=True, faces={"face_margn": 0.1}, dtype=torch.float32)
    assert (tmp_path / "tiny-fer.safetensors").read_bytes() == before  # refused before anything was written


def test_the_fewshot_recipe_crops_faces_as_the_shipped_model_expects():
    """recipes/fewshot.yaml starts from fer2013-wild: its input size, and faces cropped to the
    detector's box with the eyes levelled (its own margin, chosen for fine-tuning, wins over the
    manifest's -0.1, chosen for labelling without training)."""
    entry = zoo.read_models(zoo.SHIPPED_DIR / zoo.SHIPPED)["fer2013-wild"]
    assert entry["preprocessing"]["face_margin"] == FACE_MARGIN == -0.1
    cfg = zoo.resolve_config(zoo.SHIPPED_DIR.parent / "recipes" / "fewshot.yaml", data="x")
    assert cfg.init == "fer2013-wild" and cfg.faces == "crop" and cfg.face_align is True
    assert cfg.face_margin == 0.0
    assert zoo.resolve_config(None, init="fer2013-wild", data="x").face_margin == FACE_MARGIN
    assert cfg.img_size == entry["preprocessing"]["img_size"]


def test_a_model_trained_on_levelled_faces_is_used_the_same_way(tmp_path, monkeypatch):
    """--face-align at training is remembered: predict levels the eyes as training did (unless
    --no-face-align), an ONNX export carries it, and a run started from the model inherits it."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from ftkit.export import export_metadata

    data = write_split_folder(tmp_path / "data", sizes=(("train", 6), ("val", 2)), classes=("angry", "happy"))
    r = invoke("finetune", "--data", data, *TRAIN, "--epochs", 1, "--freeze-epochs", 0, "--faces", "crop",
               "--face-margin", 0.1, "--face-align", "--project", tmp_path / "runs", "--name", "aligned")
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "aligned"
    assert "faces: crop, margin 0.1, eyes levelled" in (run / "report.md").read_text()  # how faces were cropped
    loaded = load_run(run, device="cpu")
    assert loaded.config.face_align is True and export_metadata(loaded)["face_align"] is True
    assert zoo.resolve_config(None, init=str(run), data="x").face_align is True

    from ftkit import faces as faces_module

    calls = []
    for name in ("aligned_crop", "square_crop"):
        real = getattr(faces_module, name)
        monkeypatch.setattr(faces_module, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    for extra, expected in (([], "aligned_crop"), (["--no-face-align"], "square_crop")):
        calls.clear()
        r = invoke("predict", run, tmp_path / "astronaut.png", "--faces", "all", "--format", "jsonl", *extra)
        assert r.exit_code == 0, r.output
        assert calls == [expected]


@pytest.mark.slow
def test_a_wheel_carries_the_recipes_and_shipped_models_and_finds_them(tmp_path):
    """`pip install .` or `pip install git+URL` (not only an editable clone) must label faces
    by name and find `--recipe fewshot`: the wheel holds recipes/ and weights/' tracked files as
    ftkit/recipes and ftkit/shipped, and the installed package reads them there."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("pyproject.toml's build backend needs setuptools >= 77 to build a wheel here")
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy of what the wheel is built from: the build leaves nothing in the clone
    for name in ("ftkit", "recipes"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = json.loads((root / "weights" / "shipped.json").read_text())
    tracked = {entry[key] for entry in shipped.values() for key in ("file", "fer2013_digests") if entry.get(key)}
    assert "fer2013-digests.npz" in tracked
    tracked |= {"retinaface-mnet025.onnx", "retinaface-LICENSE.txt"}  # the face detector ships beside the models
    for name in ("pyproject.toml", "README.md", "LICENSE", "weights/shipped.json", *(f"weights/{file}" for file in tracked)):
        (source / name).parent.mkdir(exist_ok=True)
        shutil.copy(root / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("ftkit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    for file in tracked:
        assert (tmp_path / "site" / "ftkit" / "shipped" / file).read_bytes() == (root / "weights" / file).read_bytes()
    assert sorted(p.name for p in (tmp_path / "site" / "ftkit" / "recipes").iterdir()) == \
        sorted(p.name for p in (root / "recipes").glob("*.yaml"))
    (tmp_path / "elsewhere").mkdir()
    probe = ("import ftkit, ftkit.config as c, ftkit.zoo as z, ftkit.faces as f; "
             "print(ftkit.__file__, c.find_recipe('fewshot'), z.find_model('fer2013-fast')[1], f.model_file(), sep='\\n')")
    env = {k: v for k, v in os.environ.items() if k != "FTKIT_WEIGHTS"} | {"PYTHONPATH": str(tmp_path / "site")}
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path / "elsewhere", env=env)
    assert ran.returncode == 0, ran.stderr
    package, recipe, model, face_model = ran.stdout.split()
    installed = tmp_path / "site" / "ftkit"
    assert Path(package).parent == installed
    assert Path(recipe) == installed / "recipes" / "fewshot.yaml"
    assert Path(model) == installed / "shipped" / shipped["fer2013-fast"]["file"]
    assert Path(face_model) == installed / "shipped" / "retinaface-mnet025.onnx"
