"""Reports: report.json / report.md, confusion matrices and curves as PNG, rich tables,
and side-by-side comparison of several runs. Every number comes from predictions.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .evaluation import compute_report
from .html_report import render_comparison, write_run_html
from .io import FileFormatError, atomic_write, read_json, read_yaml, write_json, write_text
from .plots import new_figure, png_bytes
from .runs import RunError, phase_text

METRIC_COLUMNS = ["epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_balanced_accuracy", "val_macro_f1", "lr", "images_per_s", "seconds"]


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    def write(f):
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)

    atomic_write(path, write)


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        # a column an older version did not write is empty in the rows it wrote: left out of those rows
        return [{k: (v if k == "phase" else float(v)) for k, v in r.items() if v != "" and k is not None} for r in rows]
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{path} has a row that is not numbers ({exc}): the file was cut short or edited") from exc


def write_report(folder: Path, predictions: Path | None = None, name: str | None = None) -> dict[str, Any]:
    """Compute the report from ``predictions.csv`` in ``folder`` and write every report file.

    ``name`` is what the report calls the run (default: the folder), for a folder that is
    written under a temporary name and moved into place when complete."""
    predictions = predictions or folder / "predictions.csv"
    if not predictions.is_file():
        raise RunError(f"{predictions} not found: is {folder} a finished ftkit run directory?")
    report = compute_report(predictions)
    record_path = folder / "run.json"
    record = read_json(record_path) if record_path.is_file() else {}
    report["split"] = record.get("eval_split")
    report["run"] = name or str(folder)
    write_json(folder / "report.json", report)
    write_text(folder / "report.md", report_markdown(report, record))
    plot_confusion(report, folder)
    history = read_metrics_csv(folder / "metrics.csv")
    if history:
        plot_curves(history, folder / "curves.png")
    write_run_html(folder, report)
    return report


def report_markdown(report: dict[str, Any], record: dict[str, Any]) -> str:
    lines = [f"# ftkit report: {report['run']}", ""]
    if record.get("ensemble"):
        lines += [f"- ensemble: {record['eval_note']}; split reported: {report.get('split')} ({report['n']} images)",
                  f"- data: {record.get('eval_data')}", "",
                  "| member | backbone | input | TTA | best epoch | train time | accuracy | macro-F1 |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m['run']} | {m['backbone']} | {m['input']} | {m['tta']} | {m['best_epoch']} "
                  f"| {m['train_seconds']} s | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" for m in record["ensemble"]]
        lines += [""]
    elif record:
        lines += [
            f"- backbone: {record.get('backbone')} ({record.get('parameters', 0):,} parameters)",
            f"- weights: {record.get('weights', {}).get('source')} {record.get('weights', {}).get('file') or ''}"
            + (f" (started from {record['weights']['init']['kind']} {record['weights']['init']['name']}; classifier rows "
               f"carried for {', '.join(record['weights']['init']['classes_carried']) or 'no class'})"
               if (record.get("weights") or {}).get("init") else ""),
            f"- split reported: {report.get('split')} ({report['n']} images)"
            + (f" - {record['eval_note']}" if record.get("eval_note") else ""),
            f"- phases: {', '.join(phase_text(p) for p in record.get('phases', []))}",
            f"- best epoch: {record.get('best_epoch')}, device: {record.get('device')}, "
            f"train time: {record.get('train_seconds')} s",
            f"- skipped files: {record.get('skipped', {}).get('count', 0)}",
            "",
        ]
    lines += [
        f"accuracy **{report['accuracy']:.4f}**, balanced accuracy **{report['balanced_accuracy']:.4f}**, "
        f"macro-F1 **{report['macro_f1']:.4f}**",
        "",
        *([f"No image of {', '.join(report['no_support'])} in this split: macro averages are over the "
           f"{len(report['classes']) - len(report['no_support'])} classes that have images.", ""]
          if report.get("no_support") else []),
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    rows = list(report["per_class"].items()) + [("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])]
    for name, m in rows:
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(report["classes"]) + " |", "|---" * (len(report["classes"]) + 1) + "|"]
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


# --- plots -------------------------------------------------------------------------------


def _save_figure(fig, path: Path) -> None:
    png = png_bytes(fig)
    atomic_write(path, lambda f: f.write(png), mode="wb")


def plot_confusion(report: dict[str, Any], folder: Path) -> None:
    """confusion_matrix.png (counts) and confusion_matrix_normalized.png (rows sum to 1)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.array(report["confusion_matrix"], dtype=float)
    normalized = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for matrix, name, fmt in ((cm, "confusion_matrix.png", "d"), (normalized, "confusion_matrix_normalized.png", ".2f")):
        size = 1.2 + 0.75 * len(report["classes"])
        fig = new_figure((size, size))
        ax = fig.subplots()
        values = matrix.astype(int) if fmt == "d" else matrix
        ConfusionMatrixDisplay(values, display_labels=report["classes"]).plot(
            ax=ax, cmap="Blues", values_format=fmt, colorbar=False, xticks_rotation=45)
        ax.set_title(("Confusion matrix" if fmt == "d" else "Confusion matrix, row-normalised") + f" ({report.get('split') or 'eval'})")
        _save_figure(fig, folder / name)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy/macro-F1 per epoch, with phase changes marked."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure((11, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    right.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train accuracy")
    right.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="val accuracy")
    right.plot(epochs, [h["val_macro_f1"] for h in history], "o-", label="val macro-F1")
    for prev, cur in zip(history, history[1:]):
        if prev["phase"] != cur["phase"]:
            for ax in (left, right):
                ax.axvline(prev["epoch"] + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.text(prev["epoch"] + 0.55, ax.get_ylim()[1], cur["phase"], va="top", fontsize=8, color="grey")
    for ax, title in ((left, "loss"), (right, "metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    _save_figure(fig, path)


# --- rich tables -------------------------------------------------------------------------


def print_report(report: dict[str, Any], console: Console, title: str = "report") -> None:
    table = Table(title=title)
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, m in report["per_class"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    table.add_section()
    for name in ("macro_avg", "weighted_avg"):
        m = report[name]
        table.add_row(name.replace("_", " "), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    console.print(
        f"accuracy [bold]{report['accuracy']:.4f}[/]  balanced accuracy [bold]{report['balanced_accuracy']:.4f}[/]  "
        f"macro-F1 [bold]{report['macro_f1']:.4f}[/]  (n={report['n']})"
    )


def compare_table(reports: dict[str, dict[str, Any]]) -> Table:
    """One column per run; overall metrics, then per-class F1, in rows; best value in bold."""
    table = Table(title="run comparison")
    table.add_column("metric")
    for name in reports:
        table.add_column(name, justify="right")
    rows: list[tuple[str, list[float | None]]] = [
        (key, [r[key] for r in reports.values()]) for key in ("accuracy", "balanced_accuracy", "macro_f1")
    ]
    classes = sorted({c for r in reports.values() for c in r["per_class"]}, key=lambda c: next(
        (r["classes"].index(c) for r in reports.values() if c in r["classes"]), 0))
    rows += [(f"F1 {c}", [r["per_class"].get(c, {}).get("f1") for r in reports.values()]) for c in classes]
    for label, values in rows:
        present = [v for v in values if v is not None]
        best = max(present) if present else None
        table.add_row(label, *["-" if v is None else (f"[bold green]{v:.4f}[/]" if v == best and len(present) > 1 else f"{v:.4f}") for v in values])
    return table


def print_cv_report(root: Path, console: Console) -> None:
    """The cross-validated summary of a --folds run: per-fold rows, per-class F1 mean +- std."""
    cv = read_json(root / "cv_report.json")
    table = Table(title=f"{root}: {cv['folds']}-fold cross-validation")
    for col in ("fold", "images", "accuracy", "macro-F1"):
        table.add_column(col, justify="right")
    for f in cv["per_fold"]:
        table.add_row(str(f["fold"]), str(f["n"]), f"{f['accuracy']:.4f}", f"{f['macro_f1']:.4f}")
    table.add_section()
    table.add_row("mean +- std", "", f"{cv['accuracy']['mean']:.4f} +- {cv['accuracy']['std']:.4f}",
                  f"{cv['macro_f1']['mean']:.4f} +- {cv['macro_f1']['std']:.4f}")
    console.print(table)
    per_class = Table(title="per-class F1 over folds")
    per_class.add_column("class")
    per_class.add_column("F1 mean +- std", justify="right")
    for c, s in cv["per_class_f1"].items():
        per_class.add_row(c, f"{s['mean']:.4f} +- {s['std']:.4f}")
    console.print(per_class)


def write_comparison_html(reports: dict[str, dict[str, Any]], path: Path) -> Path:
    """The side-by-side page: metrics per run (best marked) and the differing config keys."""
    configs = {}
    for run in reports:
        args = Path(run) / "args.yaml"
        configs[run] = read_yaml(args) if args.is_file() else {}
    return write_text(path, render_comparison(reports, configs))
