"""Write weights/fer2013-digests.npz: the pixel digests of FER2013's Training and PublicTest images
(16 bytes each), the parts the shipped models trained on and chose their epoch by, and name the
file in their manifest entries, with how many PublicTest images are copies of Training images. `ftkit evaluate fer2013-fast --data DIR` then counts the FER2013
images among the scored ones by their pixels too, whatever their names or file format (a CSV row,
a PNG from `ftkit data convert`, a renamed file), and so does a run started with `--init`.

    python benchmarks/fer2013_digests.py

Reads ../shared/data/fer2013/fer2013-trainval.tar.gz (train/ is Training, val/ is PublicTest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import ROOT, extract_fer

from ftkit.duplicates import pixel_digest, write_digests
from ftkit.images import decode_all, image_files
from ftkit.progress import console, progress_bar
from ftkit.weights import sha256sum
from ftkit.zoo import SHIPPED, annotate_model, read_models

FILE = "fer2013-digests.npz"
PARTS = {"Training": "train", "PublicTest": "val"}  # FER2013 part -> folder of the extracted tar


def main() -> None:
    fer = extract_fer(Path("/tmp/ftkit-bench"))
    parts = {}
    with progress_bar(console) as bar:
        for part, folder in PARTS.items():
            files = [str(f) for f in image_files(fer / folder)]
            task = bar.add_task(f"digests of {part}", total=len(files))
            digests, failures = decode_all(files, progress=lambda n, task=task: bar.advance(task, n), keep=pixel_digest)
            if failures:
                raise SystemExit(f"unreadable FER2013 image {failures[0][0]}: {failures[0][1]}")
            parts[part] = digests
    path = write_digests(ROOT / "weights" / FILE, parts)
    copies = name_digests([name for name, entry in read_models(ROOT / "weights" / SHIPPED).items() if entry.get("fer2013_seen")])
    print(json.dumps({"file": str(path), "bytes": path.stat().st_size, "sha256": sha256sum(path),
                      "images": {part: len(d) for part, d in parts.items()},
                      "distinct": {part: len(set(d)) for part, d in parts.items()},
                      "publictest_copies_of_training": copies}, indent=2))


def name_digests(models: list[str]) -> dict[str, int] | None:
    """Name weights/FILE in the shipped models' entries, with how many PublicTest images are pixel
    copies of Training images (what `ftkit weights list` notes); None when the file is not there."""
    path = ROOT / "weights" / FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as parts:  # rows, not read_digests' sets: PublicTest repeats some images
        training = {row.tobytes() for row in parts["Training"]}
        public = [row.tobytes() for row in parts["PublicTest"]]
    copies = {"images": sum(digest in training for digest in public), "of": len(public)}
    for name in models:
        annotate_model(name, shipped=True, fer2013_digests=FILE, publictest_copies_of_training=copies)
    return copies


if __name__ == "__main__":
    main()
