"""FER2013's fast model, best model, their ensemble (the teachers) and distilled students in one
table: accuracy and macro-F1 on PublicTest, and on PrivateTest when a Kaggle CSV that holds its
rows is given (../shared/data has none: PrivateTest is kept back for judging).

    python benchmarks/distill.py /tmp/ftkit-bench/runs/STUDENT [/tmp/ftkit-bench/runs/UNTAUGHT]
    python benchmarks/distill.py /tmp/ftkit-bench/runs/STUDENT --csv fer2013.csv   # adds PrivateTest

Each model is scored with its own input size and test-time augmentation (ftkit.ensemble's
score_members); the ensemble is the mean of the shipped models' probabilities, as `ftkit ensemble`
takes it. The shipped models chose their epochs on PublicTest, and a student taught by them
inherits that: their PublicTest numbers are not held out. A student's own epoch is chosen on its
run's val split (a slice of Training with benchmarks/fer2013.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import command_line, emit_row, extract_fer, machine

from ftkit.ensemble import mean_probs, score_members
from ftkit.evaluation import quick_metrics

TEACHERS = ["fer2013-fast", "fer2013-best"]
SECTION = "Shipped models, their ensemble and distilled students"
HEADER = ("| model | chose its epoch on | PublicTest accuracy | PublicTest macro-F1 | PrivateTest accuracy "
          "| PrivateTest macro-F1 | machine | command |\n|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("students", nargs="*",
                        help="finished runs: distillation runs, and untaught runs of the same recipe to compare")
    parser.add_argument("--csv", help="a FER2013 Kaggle CSV with PrivateTest rows (the full fer2013.csv)")
    parser.add_argument("--work", default="/tmp/ftkit-bench")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    members = [*TEACHERS, *args.students]
    parts = {"PublicTest": (str(extract_fer(Path(args.work))), "val")}
    if args.csv:
        parts["PrivateTest"] = (args.csv, "test")  # a CSV's Usage: Training train, PublicTest val, PrivateTest test
    scores = {part: dict(zip(members, score_members(members, data=data, split=split, datasets={})[1]))
              for part, (data, split) in parts.items()}
    rows = {name: {part: quick_metrics(s[name].labels, s[name].probs.argmax(1)) for part, s in scores.items()}
            for name in members}
    rows["ensemble of " + " + ".join(TEACHERS)] = {
        part: quick_metrics(s[TEACHERS[0]].labels, mean_probs([s[t] for t in TEACHERS]).argmax(1)) for part, s in scores.items()}
    for name, measured in rows.items():
        chosen = "PublicTest" if name not in args.students else _chosen_on(name)
        cells = [f"{measured[p]['accuracy']:.4f} | {measured[p]['macro_f1']:.4f}" if p in measured else "not here | not here"
                 for p in ("PublicTest", "PrivateTest")]
        label = name if name not in args.students else f"{_kind(name)} {Path(name).name}"
        emit_row(SECTION, HEADER, f"| {label} | {chosen} | {' | '.join(cells)} | {machine()} | `{command_line()}` |",
                 write=not args.no_write)
    print(json.dumps({name: {p: {k: round(v, 4) for k, v in m.items()} for p, m in measured.items()}
                      for name, measured in rows.items()}, indent=2))


def _kind(run: str) -> str:
    """"student" for a run that was taught (run.json records its teachers), "untaught" for one that was not."""
    return "student" if json.loads((Path(run) / "run.json").read_text()).get("distill") else "untaught"


def _chosen_on(run: str) -> str:
    record = json.loads((Path(run) / "run.json").read_text())
    val = record["data"]["counts"].get("val")
    return f"its val split ({sum(val.values()) if isinstance(val, dict) else val} images)" if val else "its val split"


if __name__ == "__main__":
    main()
