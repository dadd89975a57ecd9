"""Train a recipe on FER2013 Training, select the epoch on a slice of Training, and report
on PublicTest (the shared "val" split), which no choice was made on. Appends a row to
BENCHMARKS.md.

    python benchmarks/fer2013.py --recipe recipes/fer2013-fast.yaml
    python benchmarks/fer2013.py --recipe recipes/fer2013-fast.yaml --drop-class disgust
    python benchmarks/fer2013.py --recipe recipes/fer2013-fast.yaml --set "augment=light"

``--set`` overrides recipe settings (KEY=VALUE pairs, as in a recipe); the run is named after the
recipe and the settings, and the row's recipe column lists them.

A run longer than one sitting can be continued from its last finished epoch with --resume; the
wall-time column then sums the epochs' measured times (training and validation) over all sittings.

The shipped expression models are rebuilt with

    python benchmarks/fer2013.py --recipe recipes/fer2013-fast.yaml --select-on publictest --export-weights fer2013-fast

which trains on all of Training, picks the epoch on PublicTest, stores the best epoch as fp16
``weights/<NAME>.safetensors`` with its ``weights/shipped.json`` entry, and scores that file (not
the fp32 checkpoint) on PublicTest for the entry's numbers. With --resume on a finished run it
exports that run without training again. Without --export-weights, a run that PublicTest chose
for goes to a table of its own, with its last epoch (which nothing chose) scored beside the best.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from common import ROOT, command_line, emit_row, extract_fer, heldout_layout, machine, parse_settings
from fer2013_digests import name_digests

from ftkit.evaluation import quick_metrics
from ftkit.fer2013 import PHOTO_FACES
from ftkit.io import read_json
from ftkit.predict import load_run, score_run
from ftkit.runs import slug
from ftkit.train import RunResult, finetune, resume
from ftkit.zoo import annotate_model, resolve_config, save_model

FER_TERMS = ("FER2013 (Goodfellow et al., ICML 2013 challenge): for research use only; "
             "models trained on it inherit that restriction")

HEADER = ("| recipe | classes | backbone | weights | epochs | wall time | train img/s | PublicTest accuracy "
          "| PublicTest macro-F1 | per-class F1 | machine | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "fer2013-fast.yaml"))
    parser.add_argument("--work", default="/tmp/ftkit-bench", help="where FER2013 is extracted and runs go")
    parser.add_argument("--drop-class", action="append", default=[], help="e.g. disgust (the 6-class setting)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--set", dest="settings", default="", metavar='"KEY=VALUE ..."',
                        help='recipe settings to override, e.g. "augment=light mixup=0.2"')
    parser.add_argument("--no-write", action="store_true", help="print the rows only; record nothing in benchmarks/results/")
    parser.add_argument("--select-on", choices=("slice", "publictest"), default="slice",
                        help="slice: pick the epoch on 10 %% of Training and report on PublicTest (held out); "
                             "publictest: train on all of Training and pick the epoch on PublicTest, as the "
                             "shipped models are (their PublicTest numbers are then not held out)")
    parser.add_argument("--resume", action="store_true",
                        help="continue this recipe's unfinished run under WORK/runs instead of starting a new one "
                             "(a finished one is used as it is)")
    parser.add_argument("--export-weights", metavar="NAME",
                        help="store the best epoch as the shipped model NAME in weights/ (with --select-on publictest)")
    args = parser.parse_args()

    work = Path(args.work)
    fer = extract_fer(work)
    # publictest: train/ = all of Training, val/ = PublicTest, and the report is on val/.
    layout, val_split = (fer, None) if args.select_on == "publictest" else (heldout_layout(fer, work), 0.1)
    settings = parse_settings(args.settings, "--set")
    name = Path(args.recipe).stem + ("-no-" + "-".join(args.drop_class) if args.drop_class else "")
    name += "".join(f"-{key}-{value}" for key, value in settings.items())
    name += "-select-publictest" if args.select_on == "publictest" else ""
    name = slug(name)  # the folder finetune makes (a path in --set init=... holds slashes), so --resume finds it
    cfg = resolve_config(args.recipe, **settings, data=str(layout), val_split=val_split, drop_classes=args.drop_class,
                         epochs=args.epochs, project=str(work / "runs"), name=name)
    recipe = Path(args.recipe).name + "".join(f" + {key}={value}" for key, value in settings.items())
    unfinished = work / "runs" / name
    started = time.perf_counter()
    if args.export_weights and args.select_on != "publictest":
        raise SystemExit("--export-weights: shipped models are trained on all of Training; add --select-on publictest")
    if args.resume and _finished(unfinished):
        result = RunResult(unfinished, read_json(unfinished / "report.json"), [], read_json(unfinished / "run.json"))
        wall_note, wall = " (finished earlier; epochs summed over sittings)", result.record["train_seconds"]
    elif args.resume and (unfinished / "checkpoints" / "last.state.pt").is_file():
        result = resume(unfinished)
        wall_note = f" (epochs summed over sittings, {len(result.history)} epochs)"
        wall = result.record["train_seconds"]
    else:
        result = finetune(cfg)
        wall_note, wall = "", time.perf_counter() - started
    report, record = result.report, result.record
    per_class = ", ".join(f"{c} {m['f1']:.2f}" for c, m in report["per_class"].items())
    weights = record["weights"]
    row = (f"| {recipe} | {len(report['classes'])} | {record['backbone']} "
           f"| {weights['source']} {str(weights.get('sha256') or '')[:12]} | {record['epochs_run']} "
           f"| {wall / 60:.1f} min{wall_note} | {record['train_images_per_s']:.0f} | {report['accuracy']:.4f} "
           f"| {report['macro_f1']:.4f} | {per_class} | {machine()} | `{command_line()}` |")
    print(json.dumps({"run": str(result.run_dir), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                      "wall_s": round(wall, 1)}, indent=2))
    if args.export_weights:
        ship(result, args.export_weights, recipe, fer, wall, write=not args.no_write)
    elif args.select_on == "publictest":
        chosen_on_publictest(result, recipe, fer, wall, wall_note, write=not args.no_write)
    else:
        emit_row("FER2013 recipes from ImageNet weights", HEADER, row, write=not args.no_write)


CHOSEN_HEADER = ("| recipe | backbone | input | epochs | wall time | best epoch (chosen on PublicTest) | its PublicTest accuracy, "
                 "macro-F1 | last epoch (chosen by nothing): PublicTest accuracy, macro-F1 | machine | command |\n"
                 "|---|---|---|---|---|---|---|---|---|---|")


def chosen_on_publictest(result: RunResult, recipe: str, fer: Path, wall: float, wall_note: str, write: bool) -> None:
    """A run on all of Training whose epoch PublicTest chose: its best epoch's PublicTest numbers are
    not held out, so the last epoch, which nothing chose, is scored beside them."""
    record, report = result.record, result.report
    last = score_run(load_run(result.run_dir, device="cpu", checkpoint="last"), str(fer), split="val")
    m = quick_metrics(last.labels, last.probs.argmax(1))
    print(json.dumps({"last_epoch": record["epochs_run"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "tta": last.tta}))
    emit_row("FER2013 recipes on all of Training, epoch chosen on PublicTest", CHOSEN_HEADER,
             f"| {recipe} | {record['backbone']} | {record['data_config']['img_size']}px | {record['epochs_run']} "
             f"| {wall / 60:.1f} min{wall_note} | {record['best_epoch']} | {report['accuracy']:.4f}, {report['macro_f1']:.4f} "
             f"| {m['accuracy']:.4f}, {m['macro_f1']:.4f} | {machine()} | `{command_line()}` |", write=write)


SHIPPED_HEADER = ("| model | backbone | input | file | PublicTest accuracy (shipped file) | PublicTest macro-F1 "
                  "| fp32 checkpoint accuracy | best epoch | training time | machine | command |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|")


def ship(result: RunResult, name: str, recipe: str, fer: Path, wall: float, write: bool) -> None:
    """Store the run's best epoch as a shipped model and score the stored (fp16) file on PublicTest."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = result.record
    entry = save_model(result.run_dir, name, shipped=True, force=True, extra={
        "recipe": recipe, "commit": commit, "command": command_line(), "data": "FER2013 official Training split (28,709 images)",
        "epoch_chosen_on": "PublicTest", "fer2013_seen": {"train": "Training", "val": "PublicTest"}, "terms": FER_TERMS, "train_seconds": record.get("train_seconds"),
        "started_from": _started_from(record.get("weights") or {}),
    }, faces=PHOTO_FACES)
    name_digests([name])  # so that evaluate counts the FER2013 images it saw (weights/fer2013-digests.npz)
    loaded = load_run(name, device="cpu")
    scored = score_run(loaded, str(fer), split="val")
    measured = {"split": "PublicTest", "images": len(scored.keys), "tta": scored.tta,
                **{k: round(v, 4) for k, v in quick_metrics(scored.labels, scored.probs.argmax(1)).items()}}
    entry = annotate_model(name, shipped=True, measured=measured)
    print(json.dumps({"model": name, "file": entry["file"], "bytes": entry["bytes"], "measured": measured}, indent=2))
    row = (f"| {name} | {entry['backbone']} | {entry['preprocessing']['img_size']}px | {entry['bytes'] / 1e6:.1f} MB {entry['dtype']} "
           f"| {measured['accuracy']:.4f} | {measured['macro_f1']:.4f} | {result.report['accuracy']:.4f} "
           f"| {entry['best_epoch']} | {wall / 60:.1f} min | {machine()} | `{command_line()}` |")
    emit_row("Shipped expression models", SHIPPED_HEADER, row, write=write)


def _started_from(weights: dict) -> str | None:
    """What the run started from: the init model's name and file, or the weights' source."""
    init = weights.get("init")
    return f"{init['kind']} {init['name']} (sha256 {init['sha256'][:12]})" if init else weights.get("source")


def _finished(run: Path) -> bool:
    record = run / "run.json"
    return record.is_file() and json.loads(record.read_text()).get("status") == "finished"


if __name__ == "__main__":
    main()
