"""Score each shipped FER2013 model on all of PublicTest and on the PublicTest images that are not
pixel copies of Training images (280 of the 3,589 are; the models trained on them), record the
second in the model's manifest entry (``measured_without_training_copies``, shown by `ftkit weights
list`) and record both in benchmarks/results/.

    python benchmarks/fer2013_heldout.py

Needs weights/fer2013-digests.npz (python benchmarks/fer2013_digests.py) and
../shared/data/fer2013/fer2013-trainval.tar.gz. The same numbers come from the CLI:

    ftkit data inspect FER/ --held-out-csv held.csv
    ftkit evaluate fer2013-best --data FER/ --splits held.csv --split val
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import ROOT, command_line, emit_row, extract_fer, machine

from ftkit.duplicates import pixel_digest
from ftkit.evaluation import quick_metrics
from ftkit.images import read_image
from ftkit.predict import load_run, score_run
from ftkit.zoo import SHIPPED, annotate_model, fer2013_digests, read_models

HEADER = ("| model | PublicTest accuracy (3,589) | macro-F1 | without copies of Training: images | accuracy | macro-F1 "
          "| machine | command |\n|---|---|---|---|---|---|---|---|")
SECTION = "Shipped models on PublicTest without its copies of Training images"


def main() -> None:
    fer = extract_fer(Path("/tmp/ftkit-bench"))
    for name, entry in read_models(ROOT / "weights" / SHIPPED).items():
        training = fer2013_digests(entry).get("Training")
        if not training:
            continue
        scored = score_run(load_run(name, device="cpu"), str(fer), split="val")
        held = np.array([pixel_digest(read_image(key)) not in training for key in scored.keys])
        preds = scored.probs.argmax(1)
        every, without = quick_metrics(scored.labels, preds), quick_metrics(scored.labels[held], preds[held])
        measured = {"split": "PublicTest less its pixel copies of Training", "images": int(held.sum()), "tta": scored.tta,
                    **{k: round(v, 4) for k, v in without.items()}}
        annotate_model(name, shipped=True, measured_without_training_copies=measured)
        print(json.dumps({"model": name, "all": {k: round(v, 4) for k, v in every.items()}, "without_copies": measured}, indent=2))
        emit_row(SECTION, HEADER, f"| {name} | {every['accuracy']:.4f} | {every['macro_f1']:.4f} | {measured['images']:,} "
                                  f"| {measured['accuracy']:.4f} | {measured['macro_f1']:.4f} | {machine()} | `{command_line()}` |")


if __name__ == "__main__":
    main()
