"""Reports: report.json / report.md, confusion matrices and curves as PNG, rich tables,
and side-by-side comparison of several runs. Every number comes from predictions.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .config import suggest
from .evaluation import compute_report, read_predictions
from .html_report import render_comparison, write_run_html
from .io import atomic_write, read_json, write_json, write_text
from .plots import new_figure, png_bytes, warn_missing_glyphs
from .runs import RunError, read_args, read_metrics, read_record, run_status, runs_beside, runs_inside_hint
from .views import (CLASS_METRICS, class_rows, comparison, confusion_rows, cv_class_rows, cv_rows, headline, interval_text,
                    pooled_text, run_summary, scored_on, support_note, tta_used)
from .zoo import find_model


def write_report(folder: Path, predictions: Path | None = None, name: str | None = None) -> dict[str, Any]:
    """Compute the report from ``predictions.csv`` in ``folder`` and write every report file.

    ``name`` is what the report calls the run (default: the folder), for a folder that is
    written under a temporary name and moved into place when complete."""
    if not folder.is_dir():
        if folder.exists():
            raise RunError(f"{folder} is a file, not a run directory: give the folder that ftkit finetune, evaluate or "
                           "ensemble wrote")
        if find_model(str(folder)):
            raise RunError(f"{folder} is a named model, not a run directory: score it with ftkit evaluate {folder} --data "
                           f"DIR, which writes a report under runs/{folder}/eval/")
        raise RunError(f"run directory {folder} not found.{suggest(str(folder), runs_beside(folder))}")
    predictions = predictions or folder / "predictions.csv"
    if not predictions.is_file():
        status = run_status(folder, read_record(folder)) if (folder / "run.json").is_file() else None
        if status == "running":
            raise RunError(f"{folder} is still training in another ftkit process; its report is written when it ends")
        ended = {"killed": "was killed (run.json says running, and no process holds it)",
                 "interrupted": "was interrupted", "failed": "failed"}
        if status in ended:
            done = [f.name for f in sorted(folder.glob("fold-*")) if (f / "report.json").is_file()]
            folds = f"; its finished folds report on their own: ftkit report {folder}/{done[0]}" if done else ""
            raise RunError(f"{folder} {ended[status]} before it finished, so it has no report: continue it with "
                           f"ftkit finetune --resume {folder}{folds}")
        if status is None:
            hint = runs_inside_hint(folder, trained=False) or "; give the folder that ftkit finetune, evaluate or ensemble wrote"
            raise RunError(f"{folder} is not an ftkit run directory (no run.json){hint}")
        raise RunError(f"{predictions} not found: is {folder} a finished ftkit run directory?")
    report = compute_report(predictions)
    record = read_record(folder)
    report["split"] = record.get("eval_split")
    report["run"] = name or str(folder)
    write_json(folder / "report.json", report)
    write_text(folder / "report.md", report_markdown(report, record, read_args(folder)))
    warn_missing_glyphs(report["classes"])
    plot_confusion(report, folder)
    history = read_metrics(folder)
    if history:
        plot_curves(history, folder / "curves.png")
    write_run_html(folder, report)
    return report


def report_markdown(report: dict[str, Any], record: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    """report.md: the run summary, the headline metrics, per-class metrics and the confusion matrix."""
    lines = [f"# ftkit report: {report['run']}", "",
             f"- split reported: {report.get('split')} ({report['n']} images)"
             + (f", test-time augmentation {tta_used(record, config)}" if tta_used(record, config) else "")
             + (f", the last epoch's weights (epoch {record.get('epochs_run')})" if record.get("eval_checkpoint") == "last" else "")]
    lines += [f"- {label}: {text}" for label, text in run_summary(record, config or {})]
    lines += ["", ", ".join(f"{label} **{value:.4f}**" for label, value in headline(report))
              + (f" ({interval_text(report)})" if interval_text(report) else ""), ""]
    note = support_note(report)
    if note:
        lines += [note, ""]
    lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in CLASS_METRICS) + f" | {m['support']} |"
              for name, m in class_rows(report)]
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", ""] + _markdown_confusion(report)
    return "\n".join(lines) + "\n"


def cv_markdown(cv: dict[str, Any], root: Path) -> str:
    """cv_report.md: per-fold rows, per-class F1 over folds and the pooled confusion matrix."""
    rows = cv_rows(cv)
    lines = [f"# ftkit cross-validation: {root}", "",
             f"{cv['folds']} folds. accuracy **{rows[-1][2]}**, macro-F1 **{rows[-1][3]}** "
             "(mean +- sample std over folds)" + (f"; {pooled_text(cv)}" if pooled_text(cv) else ""), "",
             "| fold | images | accuracy | macro-F1 |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| class | F1 mean +- std |", "|---|---|"] + [f"| {c} | {s} |" for c, s in cv_class_rows(cv)]
    lines += ["", "Confusion matrix pooled over folds (rows: true, columns: predicted):", ""] + _markdown_confusion(cv)
    return "\n".join(lines) + "\n"


def _markdown_confusion(report: dict[str, Any]) -> list[str]:
    return (["| | " + " | ".join(report["classes"]) + " |", "|---" * (len(report["classes"]) + 1) + "|"]
            + [f"| **{name}** | " + " | ".join(str(v) for v in row) + " |" for name, row in confusion_rows(report)])


# --- plots -------------------------------------------------------------------------------


def _save_figure(fig, path: Path) -> None:
    png = png_bytes(fig)
    atomic_write(path, lambda f: f.write(png), mode="wb")


MANY_CLASSES = 30


def plot_confusion(report: dict[str, Any], folder: Path) -> None:
    """confusion_matrix.png (counts) and confusion_matrix_normalized.png (rows sum to 1)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.array(report["confusion_matrix"], dtype=float)
    normalized = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(report["classes"])
    # Past MANY_CLASSES a number in every cell is unreadable and slow to draw (60 classes: 22 s
    # and a 4,400-pixel image for the two figures): colour only, smaller labels, a bounded size.
    many = k > MANY_CLASSES
    size = min(1.2 + 0.3 * k, 40) if many else 1.2 + 0.75 * k
    for matrix, name, fmt in ((cm, "confusion_matrix.png", "d"), (normalized, "confusion_matrix_normalized.png", ".2f")):
        fig = new_figure((size, size))
        ax = fig.subplots()
        values = matrix.astype(int) if fmt == "d" else matrix
        ConfusionMatrixDisplay(values, display_labels=report["classes"]).plot(
            ax=ax, cmap="Blues", values_format=fmt, colorbar=many, xticks_rotation=90 if many else 45, include_values=not many)
        if many:
            ax.tick_params(labelsize=6)
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
    for i, (name, m) in enumerate(class_rows(report)):
        if i == len(report["per_class"]):
            table.add_section()  # the averages
        table.add_row(name, *(f"{m[k]:.3f}" for k in CLASS_METRICS), str(m["support"]))
    console.print(table)
    line = Text("  ").join(Text.assemble(f"{label} ", (f"{value:.4f}", "bold")) for label, value in headline(report))
    console.print(line + f"  (n={report['n']}" + (f"; {interval_text(report)})" if interval_text(report) else ")"))
    note = support_note(report)
    if note:
        console.print(note)


def compare_table(reports: dict[str, dict[str, Any]]) -> Table:
    """One column per run; overall metrics, then per-class metrics, in rows; best value in bold."""
    table = Table(title="run comparison")
    table.add_column("metric")
    for name, report in reports.items():
        table.add_column(Text.assemble(f"{name}\n", (scored_on(report), "dim")), justify="right")
    for row in comparison(reports):
        table.add_row(row.label, *["-" if v is None else Text(f"{v:.4f}", style="bold green" if row.is_best(v) else "")
                                   for v in row.values])
    return table


def print_cv_report(root: Path, console: Console) -> None:
    """The cross-validated summary of a --folds run: per-fold rows, per-class F1 mean +- std."""
    cv = read_json(root / "cv_report.json")
    table = Table(title=f"{root}: {cv['folds']}-fold cross-validation")
    for col in ("fold", "images", "accuracy", "macro-F1"):
        table.add_column(col, justify="right")
    rows = cv_rows(cv)
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1])
    console.print(table)
    per_class = Table(title="per-class F1 over folds")
    per_class.add_column("class")
    per_class.add_column("F1 mean +- std", justify="right")
    for row in cv_class_rows(cv):
        per_class.add_row(*row)
    console.print(per_class)
    if pooled_text(cv):
        console.print(pooled_text(cv))


def comparison_note(runs: list[str | Path]) -> str | None:
    """None when the runs were scored on the same images (their predictions.csv name the same
    files); else what differs, since their numbers are then not directly comparable."""
    keys = {str(run): set(read_predictions(Path(run) / "predictions.csv")[0]) for run in runs}
    if len({frozenset(k) for k in keys.values()}) == 1:
        return None
    common = set.intersection(*keys.values())
    counts = ", ".join(f"{run}: {len(k)}" for run, k in keys.items())
    return (f"these runs were scored on different images ({counts}; {len(common)} in common), so their numbers are not "
            "directly comparable: score them on one data set with `ftkit evaluate RUN --data DIR`")


def write_comparison_html(reports: dict[str, dict[str, Any]], path: Path, note: str | None = None) -> Path:
    """The side-by-side page: metrics per run (best marked), ``note`` (see comparison_note) and
    the differing config keys."""
    configs = {run: read_args(Path(run)) for run in reports}
    return write_text(path, render_comparison(reports, configs, note=note))
