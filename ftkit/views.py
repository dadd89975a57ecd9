"""What a report says, computed once for every way of showing it.

The terminal (rich tables), report.md and report.html render these rows; a label, a best value
or a summary line is decided here, in one place, and each renderer only chooses the markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .runs import phase_text

HEADLINE = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1"))
CLASS_METRICS = ("precision", "recall", "f1")


def headline(report: dict[str, Any]) -> list[tuple[str, float]]:
    """The overall metrics, labelled."""
    return [(label, report[key]) for label, key in HEADLINE]


def interval_text(report: dict[str, Any]) -> str | None:
    """The accuracy's 95 % interval as words, when the report has one (reports since it was added)."""
    ci = report.get("accuracy_ci95")
    return f"accuracy 95 % Wilson interval {ci[0]:.3f}-{ci[1]:.3f}" if ci else None


def pooled_text(cv: dict[str, Any]) -> str | None:
    """A cross-validation's test images pooled: their accuracy and its 95 % interval, which the
    spread over a few small folds does not give (cv_report.json files since it was added)."""
    pooled = cv.get("pooled")
    if not pooled or not pooled.get("accuracy_ci95"):
        return None
    low, high = pooled["accuracy_ci95"]
    return f"pooled over the {pooled['n']} test images: accuracy {pooled['accuracy']:.4f} (95 % Wilson interval {low:.3f}-{high:.3f})"


def class_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each class, then the macro and weighted averages: (name, precision/recall/f1/support)."""
    return list(report["per_class"].items()) + [("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])]


def confusion_rows(report: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """(true class, counts per predicted class), for a report or a cross-validated summary."""
    return list(zip(report["classes"], report["confusion_matrix"]))


def tta_used(record: dict[str, Any], config: dict[str, Any] | None = None) -> str | None:
    """The test-time augmentation a report's scores were computed with (an evaluation's, else
    the run's), None when there was none: the per-epoch validation scores never have it."""
    tta = record.get("eval_tta") or (config or {}).get("tta")
    return None if tta in (None, "none") else tta


def support_note(report: dict[str, Any]) -> str | None:
    """Why the macro averages leave classes out, when the split has no image of them."""
    if not report.get("no_support"):
        return None
    present = len(report["classes"]) - len(report["no_support"])
    return (f"No image of {', '.join(report['no_support'])} in this split: macro averages are over the "
            f"{present} classes that have images.")


@dataclass
class Compared:
    """One metric across runs; ``best`` is set only when more than one run has a value."""

    label: str
    values: list[float | None]
    best: float | None

    def is_best(self, value: float | None) -> bool:
        return value is not None and value == self.best


def tta_title(record: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    """', TTA shift' for a report's title when its scores used test-time augmentation, else ''."""
    tta = tta_used(record, config)
    return f", TTA {tta}" if tta else ""


def scored_on(report: dict[str, Any]) -> str:
    """What a run's numbers in a comparison come from: its split ("test"), or, for a
    cross-validation, the folds' predictions pooled (not the mean over folds its own table gives)."""
    split = report.get("split") or "?"
    return "folds pooled" if split == "pooled folds" else f"{split} split"


def comparison(reports: dict[str, dict[str, Any]]) -> list[Compared]:
    """The overall metrics, then F1, recall and precision per class (in the runs' class order)."""
    runs = list(reports.values())
    rows = [(label, [r[key] for r in runs]) for label, key in HEADLINE]
    classes = list(dict.fromkeys(c for r in runs for c in r["classes"]))
    for metric in ("f1", "recall", "precision"):
        rows += [(f"{metric} {c}", [r["per_class"].get(c, {}).get(metric) for r in runs]) for c in classes]
    out = []
    for label, values in rows:
        present = [v for v in values if v is not None]
        out.append(Compared(label, values, max(present) if len(present) > 1 else None))
    return out


def cv_rows(cv: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(fold, images, accuracy, macro-F1) per fold, then the mean +- sample std over folds."""
    rows = [(str(f["fold"]), str(f["n"]), f"{f['accuracy']:.4f}", f"{f['macro_f1']:.4f}") for f in cv["per_fold"]]
    return rows + [("mean +- std", "", _spread(cv["accuracy"]), _spread(cv["macro_f1"]))]


def cv_class_rows(cv: dict[str, Any]) -> list[tuple[str, str]]:
    """(class, F1 mean +- std over folds)."""
    return [(c, _spread(s)) for c, s in cv["per_class_f1"].items()]


def _spread(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} +- {stat['std']:.4f}"


def _faces_line(config: dict[str, Any], faces: dict[str, Any] | None) -> str:
    line = str(config.get("faces"))
    if config.get("faces") not in (None, "none"):
        line += f", margin {config.get('face_margin')}" + (", eyes levelled" if config.get("face_align") else "")
        detector = (faces or {}).get("detector", {}).get("name") or config.get("face_detector")
        line += f", {detector} detector" if detector else ""
    if faces:
        several = f", {faces['several']} with several faces (largest taken)" if faces.get("several") else ""
        whole = f", {faces['whole']} already face crops (used whole)" if faces.get("whole") else ""
        line += f" ({faces['found']} found, {faces['fallback']} centre-cropped, {faces['skipped']} left out{several}{whole})"
    return line


def run_summary(record: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, str]]:
    """The run at a glance, from run.json and args.yaml: (label, text) rows."""
    if record.get("ensemble"):
        return [("ensemble", record["eval_note"]), ("data", str(record.get("eval_data")))] + [
            (f"member {i}", f"{m['run']}: {m['backbone']} {m['input']}, TTA {m['tta']}, best epoch {m['best_epoch']}, "
                            f"{m['train_seconds']} s training; accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}")
            for i, m in enumerate(record["ensemble"], 1)] + [
            ("note", m["not_held_out"]) for m in record["ensemble"] if m.get("not_held_out")]
    if not record:
        return []
    data = record.get("data") or {}
    counts = data.get("counts", {})
    weights = record.get("weights") or {}
    faces = data.get("faces")
    rows = [
        ("data", f"{data.get('path')} ({data.get('source')})"),
        ("images per split and class", "; ".join(f"{s}: {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.items())})"
                                                 for s, c in counts.items())),
        ("backbone", f"{record.get('backbone')} ({record.get('parameters', 0):,} parameters)"),
        ("weights", _weights_text(weights)),
        ("input", ", ".join(f"{k} {v}" for k, v in record.get("data_config", {}).items())),
        ("schedule", ", ".join(phase_text(p) for p in record.get("phases", [])) or "-"),
        ("optimisation", f"{config.get('optimizer')} lr {config.get('lr')}, {config.get('scheduler')}, batch {config.get('batch_size')}"
                         + (f" x {config['accumulate']} accumulated" if config.get("accumulate", 1) > 1 else "")
                         + f", label smoothing {config.get('label_smoothing')}, head {config.get('head')}"
                         + (f", weight average (ema) {config['ema']}" if config.get("ema") else "")),
        ("augmentation", str(config.get("augment_pipeline") or config.get("augment"))),
        ("faces", _faces_line(config, faces)),
        ("time and device", f"{record.get('train_seconds')} s on {record.get('device')}, "
                            f"{record.get('train_images_per_s')} train images/s, best epoch {record.get('best_epoch')}"),
        ("skipped files", str(record.get("skipped", {}).get("count", 0))),
    ]
    return rows + [("note", note) for note in record_notes(record)]


def record_notes(record: dict[str, Any]) -> list[str]:
    """What a reader of the scores should know: for a run, what the data layer noted of its
    splits (val or test images that are copies of training images, a class missing from val...);
    then the scores' own note (not held out)."""
    notes = list((record.get("data") or {}).get("notes", [])) if "eval_data" not in record else []
    return notes + ([record["eval_note"]] if record.get("eval_note") else [])


def _weights_text(weights: dict[str, Any]) -> str:
    text = " ".join(str(part) for part in (weights.get("source"), weights.get("file")) if part)
    if weights.get("sha256"):
        text += f" sha256 {weights['sha256'][:16]}"
    init = weights.get("init")
    if init:
        carried = ", ".join(init["classes_carried"]) or "no class"
        text += f" (started from {init['kind']} {init['name']}; classifier rows carried for {carried})"
    return text
