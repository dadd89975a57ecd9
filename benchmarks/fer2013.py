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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, command_line, emit_row, extract_fer, heldout_layout, machine, parse_settings

from ftkit.config import resolve
from ftkit.train import finetune, resume

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
    parser.add_argument("--no-write", action="store_true", help="do not append to BENCHMARKS.md")
    parser.add_argument("--resume", action="store_true",
                        help="continue this recipe's unfinished run under WORK/runs instead of starting a new one")
    args = parser.parse_args()

    work = Path(args.work)
    layout = heldout_layout(extract_fer(work), work)
    settings = parse_settings(args.settings, "--set")
    name = Path(args.recipe).stem + ("-no-" + "-".join(args.drop_class) if args.drop_class else "")
    name += "".join(f"-{key}-{value}" for key, value in settings.items())
    cfg = resolve(args.recipe, **settings, data=str(layout), val_split=0.1, drop_classes=args.drop_class,
                  epochs=args.epochs, project=str(work / "runs"), name=name)
    recipe = Path(args.recipe).name + "".join(f" + {key}={value}" for key, value in settings.items())
    unfinished = work / "runs" / name
    started = time.perf_counter()
    if args.resume and (unfinished / "checkpoints" / "last.state.pt").is_file() and not _finished(unfinished):
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
    emit_row("FER2013 (7 classes unless noted; PublicTest held out)", HEADER, row, write=not args.no_write)


def _finished(run: Path) -> bool:
    record = run / "run.json"
    return record.is_file() and json.loads(record.read_text()).get("status") == "finished"


if __name__ == "__main__":
    main()
