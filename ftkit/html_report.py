"""report.html: one self-contained page per run (images embedded, no network needed), and
a comparison page for several runs. Every number comes from report.json / predictions.csv.
"""

from __future__ import annotations

import base64
import html
import os
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .evaluation import read_predictions
from .fer2013 import SIDE
from .images import read_image
from .io import read_json, write_text
from .plots import new_figure, png_bytes
from .runs import read_args, read_record
from .views import (CLASS_METRICS, class_rows, comparison, cv_rows, headline, interval_text, run_summary, scored_on,
                    support_note)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left} .muted{color:#777;font-size:.9rem} .warn{color:#8a5300}
.metrics{display:flex;gap:1.5rem;flex-wrap:wrap}.metric{background:#f5f7fa;border-radius:8px;padding:.6rem 1rem}
.metric b{display:block;font-size:1.5rem}.bar{display:inline-block;height:.7rem;background:#4a7bd0;border-radius:2px;vertical-align:middle}
.bartrack{display:inline-block;width:80px;background:#e8ecf2;border-radius:2px;margin-left:.4rem}
.gallery{display:flex;flex-wrap:wrap;gap:.8rem}.card{width:150px;font-size:.8rem;background:#fafafa;border-radius:6px;padding:.4rem}
.card img{width:142px;height:142px;object-fit:contain;image-rendering:pixelated;background:#000}
.best{font-weight:bold;color:#1a7f37} figure{margin:0} img.plot{max-width:100%}
.pair{display:flex;gap:1rem;align-items:flex-start}.pair img.plot{max-width:49%}
.wrong{color:#b42318}.right{color:#1a7f37}
"""


def _img_tag(png: bytes, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _file_img(path: Path, alt: str) -> str:
    return _img_tag(path.read_bytes(), alt) if path.is_file() else f'<p class="muted">({path.name} missing)</p>'


def _bar(value: float) -> str:
    return f'<span class="bartrack"><span class="bar" style="width:{max(0.0, min(1.0, value)) * 100:.0f}%"></span></span>'


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10):
    """ECE over equal-width confidence bins, with the per-bin (confidence, accuracy, count)."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += mask.mean() * abs(acc - conf)
            rows.append((conf, acc, int(mask.sum())))
    return float(ece), rows


def _calibration_png(rows, ece: float) -> bytes:
    fig = new_figure((4.2, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if rows:
        conf, acc, n = zip(*rows)
        ax.plot(conf, acc, "o-", label="model")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"calibration, ECE = {ece:.3f}")
    ax.legend(loc="upper left")
    return png_bytes(fig, dpi=110)


def _thumbnail(key: str, csv_images: dict[str, np.ndarray], size: int = 142) -> str:
    """An embedded thumbnail of a file path or a CSV row id (``name.csv:LINE``, read beforehand
    by ``_csv_images``)."""
    import cv2

    try:
        if key in csv_images:
            image = csv_images[key]
        else:
            image = read_image(key)
        scale = size / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return _img_tag(png.tobytes(), key, cls="thumb")
    except Exception:  # a moved or deleted file: the card still shows the labels
        return '<div class="muted" style="height:142px">(image not found)</div>'


def _csv_images(keys: list[str], data_path: str | None) -> dict[str, np.ndarray]:
    """The images of the CSV row ids among ``keys`` (``name.csv:LINE``), in one pass over each
    CSV (a 290 MB FER2013 file is read once for the whole gallery, not once per thumbnail)."""
    wanted: dict[Path, dict[int, str]] = {}
    for key in keys:
        name, _, line = key.rpartition(":")
        if name.lower().endswith(".csv") and line.isdigit() and not Path(key).is_file():
            path = Path(data_path) if data_path and Path(data_path).name == Path(name).name else Path(name)
            wanted.setdefault(path, {})[int(line)] = key
    images = {}
    for path, lines in wanted.items():
        try:
            with open(path) as f:
                for number, row in enumerate(islice(f, max(lines)), 1):
                    if number in lines:
                        pixels = np.array(row.split(",")[1].split(), dtype=np.uint8).reshape(SIDE, SIDE)
                        images[lines[number]] = np.repeat(pixels[:, :, None], 3, axis=2)
        except (OSError, ValueError, IndexError):  # a moved CSV or a changed row: those cards say so
            continue
    return images


def moved_path(path: str, moves: list[dict[str, str]]) -> str:
    """Where an image of the run's data is now: each recorded move of the data folder (run.json's
    ``data_moves``, oldest first) applied to the path."""
    for move in moves:
        old = os.path.join(move["from"], "")
        if path.startswith(old):
            path = os.path.join(move["to"], path[len(old):])
    return path


def _card(path: str, true: str, probs: dict[str, float], csv_images: dict[str, np.ndarray],
          moves: list[dict[str, str]] = ()) -> str:
    top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
    pred = top[0][0]
    bars = "".join(f"<div>{html.escape(c)} {p:.2f}{_bar(p)}</div>" for c, p in top)
    verdict = "right" if pred == true else "wrong"
    return (f'<div class="card">{_thumbnail(moved_path(path, moves), csv_images)}<div>true <b>{html.escape(true)}</b>, '
            f'predicted <b class="{verdict}">{html.escape(pred)}</b></div>{bars}'
            f'<div class="muted" title="{html.escape(path)}">{html.escape(Path(path).name)}</div></div>')


def confused_pairs(report: dict[str, Any], n: int = 5) -> list[tuple[str, str, int, float]]:
    """The most frequent (true, predicted) mistakes: count and share of the true class."""
    cm = np.array(report["confusion_matrix"])
    pairs = [(report["classes"][i], report["classes"][j], int(cm[i, j]), cm[i, j] / max(cm[i].sum(), 1))
             for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    return sorted(pairs, key=lambda p: -p[2])[:n]


def render_run(folder: Path, report: dict[str, Any], record: dict[str, Any], config: dict[str, Any],
               cv: dict[str, Any] | None = None, gallery: int = 12) -> str:
    paths, true, pred, probs, classes = read_predictions(folder / "predictions.csv")
    confidence = probs.max(1) if len(probs) else np.zeros(0)
    correct = np.array([t == p for t, p in zip(true, pred)])
    ece, rows = expected_calibration_error(confidence, correct)
    title = f"ftkit report: {report.get('run') or folder}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">{report["split"] or "eval"} split, {report["n"]} images'
             + (f"; {html.escape(interval_text(report))}" if interval_text(report) else "") + "</p>",
             '<div class="metrics">' + "".join(f'<div class="metric">{label}<b>{value:.4f}</b></div>' for label, value in headline(report))
             + f'<div class="metric">ECE<b>{ece:.4f}</b></div></div>']
    note = support_note(report)
    if note:
        parts.append(f'<p class="muted">{html.escape(note)}</p>')
    parts += ["<h2>Run</h2><table>"] + [f"<tr><td>{html.escape(k)}</td><td style='text-align:left'>{html.escape(v)}</td></tr>"
                                       for k, v in run_summary(record, config)] + ["</table>"]
    if cv:
        parts += [f"<h2>Cross-validation ({cv['folds']} folds)</h2><table><tr><th>fold</th><th>images</th><th>accuracy</th><th>macro-F1</th></tr>"]
        parts += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in cv_rows(cv)]
        parts += ["</table>"]
    parts += ["<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    for c, m in class_rows(report):
        parts.append(f"<tr><td>{html.escape(c)}</td>" + "".join(f"<td>{m[k]:.3f}{_bar(m[k])}</td>" for k in CLASS_METRICS)
                     + f"<td>{m['support']}</td></tr>")
    parts.append("</table>")
    parts += ["<h2>Confusion matrix</h2><div class='pair'>", _file_img(folder / "confusion_matrix.png", "confusion matrix"),
              _file_img(folder / "confusion_matrix_normalized.png", "row-normalised confusion matrix"), "</div>"]
    pairs = confused_pairs(report)
    if pairs:
        parts += ["<h2>Most confused pairs</h2><table><tr><th>true</th><th>predicted as</th><th>images</th><th>share of true class</th></tr>"]
        parts += [f"<tr><td>{html.escape(t)}</td><td>{html.escape(p)}</td><td>{n}</td><td>{s:.1%}</td></tr>" for t, p, n, s in pairs]
        parts.append("</table>")
    parts += ["<h2>Training curves</h2>", _file_img(folder / "curves.png", "training curves") if (folder / "curves.png").is_file()
              else '<p class="muted">(no per-epoch history for this report)</p>']
    parts += ["<h2>Calibration</h2>", _img_tag(_calibration_png(rows, ece), "calibration plot"),
              '<p class="muted">Expected calibration error over 10 equal-width confidence bins.</p>']
    data_path = (record.get("data") or {}).get("path")
    order = np.argsort(-confidence)
    wrong = [i for i in order if not correct[i]][:gallery]
    right = [i for i in order if correct[i]][: max(4, gallery // 3)]
    csv_images = _csv_images([paths[i] for i in wrong + right], data_path)
    for heading, chosen in (("Misclassified, most confident first", wrong), ("Confident and correct", right)):
        parts += [f"<h2>{heading}</h2><div class='gallery'>"]
        parts += [_card(paths[i], true[i], dict(zip(classes, probs[i])), csv_images, record.get("data_moves", []))
                  for i in chosen]
        parts += ["</div>"] if chosen else ["<p class='muted'>none</p></div>"]
    return _page(title, "\n".join(parts))


PAGE_START = "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>"


def _page(title: str, body: str) -> str:
    return f"{PAGE_START}{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"


def check_page_path(path: str | Path) -> None:
    """Refuse, before any work, an HTML path that is not .html, or that would replace a file
    that is not a page ftkit wrote (every one's title begins "ftkit ")."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {path}: the page is HTML; give a path ending in .html")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(len(PAGE_START) + 6).decode("utf-8", errors="replace")
        if head != PAGE_START + "ftkit ":
            raise UsageError(f"--html {path} exists and is not a page ftkit wrote: nothing was written; give another "
                             "name, or delete it first")


def write_run_html(folder: Path, report: dict[str, Any], run_dir: Path | None = None) -> Path:
    """Write ``folder/report.html``; ``run_dir`` holds run.json/args.yaml when they live elsewhere."""
    source = run_dir or folder
    record, config = read_record(source), read_args(source)
    cv = read_json(folder / "cv_report.json") if (folder / "cv_report.json").is_file() else None
    path = folder / "report.html"
    write_text(path, render_run(folder, report, record, config, cv))
    return path


# --- several runs side by side -----------------------------------------------------------


def config_differences(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Only the config keys whose values differ between runs: key -> {run: value}."""
    keys = sorted({k for c in configs.values() for k in c})
    out = {}
    for key in keys:
        values = {run: c.get(key) for run, c in configs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[key] = values
    return out


def render_comparison(reports: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]], note: str | None = None) -> str:
    runs = list(reports)
    head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(r)}<br><span class='muted'>{html.escape(scored_on(reports[r]))}"
                                           "</span></th>" for r in runs) + "</tr>"
    body = [f"<h1>ftkit comparison of {len(runs)} runs</h1>"]
    if note:
        body.append(f"<p class='warn'>Note: {html.escape(note)}</p>")
    body += ["<h2>Metrics</h2><table>", head]
    for row in comparison(reports):
        cells = "".join("<td>-</td>" if v is None else f"<td class='{'best' if row.is_best(v) else ''}'>{v:.4f}</td>"
                        for v in row.values)
        body.append(f"<tr><td>{html.escape(row.label)}</td>{cells}</tr>")
    body.append("</table><p class='muted'>Best value per row in green.</p>")
    diff = config_differences(configs)
    body += ["<h2>Configuration differences</h2>"]
    if diff:
        body += ["<table>", head.replace("metric", "key")]
        body += [f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{html.escape(str(v[r]))}</td>" for r in runs) + "</tr>"
                 for k, v in diff.items()]
        body.append("</table>")
    else:
        body.append("<p>The runs share one configuration.</p>")
    return _page("ftkit comparison", "\n".join(body))
