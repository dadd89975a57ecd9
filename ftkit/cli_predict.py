"""ftkit predict: label images, folders, videos and cameras, and print or write the predictions."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click
from rich.table import Table

from .cli_options import device_option, friendly
from .config import CHOICES, MIN_FACE_MARGIN
from .progress import console, progress_bar


@click.command()
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1)
@click.option("--topk", "--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes shown per image or face.")
@click.option("--tta", type=click.Choice(CHOICES["tta"]),
              help="Test-time augmentation [default: the model's for images, as its scores were measured; none for "
                   "a video or camera, where it would multiply each frame's cost].")
@click.option("--faces", type=click.Choice(["none", "crop", "all"]),
              help="Classify the whole image, the largest face, or every face [default: as the model was "
                   "trained; every face in a video].")
@click.option("--face-margin", type=click.FloatRange(min=MIN_FACE_MARGIN, min_open=True),
              help="Margin around a detected face, as a fraction of its side; negative crops inside the "
                   "detector's box [default: the model's].")
@click.option("--face-align/--no-face-align", default=None,
              help="Level each face's eyes before cropping [default: as the model was trained].")
@click.option("--face-detector", type=click.Choice(CHOICES["face_detector"]),
              help="auto (RetinaFace, or OpenCV's Haar cascades without onnxruntime), retinaface or haar [default: the "
                   "model's].")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False), help="Write copies of the images with boxes and labels here.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table", show_default=True,
              help="How results are printed (csv and jsonl: to standard output, a video's frames as they come).")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Also write results to a .csv, .json or .jsonl file (a video's: one row per face per analysed frame).")
@click.option("--video", type=click.Path(dir_okay=False), help="Classify the faces in a video file instead of images.")
@click.option("--camera", type=click.IntRange(min=0), help="Classify the faces seen by this camera index (live; Ctrl-C stops).")
@click.option("--out", "video_out", type=click.Path(dir_okay=False),
              help="With --video/--camera: the annotated video (.mp4 or .avi); a .jsonl track goes beside it.")
@click.option("--every", type=click.IntRange(min=1), help="With --video/--camera: analyse every N-th frame  [default: 1].")
@click.option("--max-frames", type=click.IntRange(min=1), help="With --video/--camera: stop after this many frames.")
@device_option
@friendly
def predict(model, paths, topk, tta, faces, face_margin, face_align, face_detector, annotate_dir, fmt, output, video, camera,
            video_out, every, max_frames, device):
    """Top-k classes for images, folders, a video or a camera; MODEL is a run, a named model
    (`ftkit weights list`) or an exported .onnx or TorchScript (.ts, .pt) file.

    Examples:

    \b
        ftkit predict fer2013-wild photo.jpg --faces all
        ftkit predict runs/faces photo.jpg more_photos/ --topk 3 --output preds.csv
        ftkit predict runs/faces group.jpg --faces all --annotate annotated/
        ftkit predict runs/faces/export/model.onnx photo.jpg
        ftkit predict runs/faces clip.mp4 --out clip_annotated.mp4 --every 5
        ftkit predict fer2013-wild --camera 0 --format jsonl
    """
    from .predict import check_prediction_file, open_predictor
    from .video import check_video_out

    video, paths = _check_sources(paths, video, camera, annotate_dir, video_out, every, max_frames)
    if output:
        check_prediction_file(output)
    if video_out:
        check_video_out(video_out, video)
    pred = open_predictor(model, device)
    if face_margin is not None:
        pred.face_margin = face_margin
    if face_align is not None:
        pred.face_align = face_align
    if face_detector is not None:
        pred.face_detector = face_detector
    if video is not None or camera is not None:
        _predict_stream(pred, model, video if video is not None else camera, video_out, every or 1, topk, tta or "none",
                        faces or "all", max_frames, fmt, output)
    else:
        _predict_images(pred, model, paths, topk, tta or pred.tta, faces, annotate_dir, fmt, output)


def _check_sources(paths, video, camera, annotate_dir, video_out, every, max_frames) -> tuple[str | None, tuple]:
    """Refuse a mix of images, videos and a camera, and options of the other kind; a single video
    file given as a path is read as --video. Returns (video, image paths)."""
    from .predict import VIDEO_EXTENSIONS

    videos = [p for p in paths if Path(p).suffix.lower() in VIDEO_EXTENSIONS and not Path(p).is_dir()]
    if videos and video is None and camera is None:
        if len(paths) > 1:
            raise click.UsageError(f"{videos[0]} is a video: give it alone (or with --video), images in another command")
        video, paths = videos[0], ()  # one video file given as a path: read as --video
    streaming = video is not None or camera is not None
    if video is not None and camera is not None:
        raise click.UsageError("give --video or --camera, not both")
    if streaming and paths:
        raise click.UsageError(f"give image paths or --{'video' if video else 'camera'}, not both "
                               f"(got {paths[0]!r} as well)")
    if streaming and annotate_dir:
        raise click.UsageError("--annotate writes annotated images; for a video use --out FILE.mp4")
    if not streaming:
        given = [name for name, value in (("--out", video_out), ("--every", every), ("--max-frames", max_frames))
                 if value is not None]
        if given:
            raise click.UsageError(f"{' and '.join(given)}: only with --video or --camera")
        if not paths:
            raise click.UsageError("give image files or folders, or --video / --camera")
    return video, paths


def _predict_images(pred, model, paths, topk, tta, faces, annotate_dir, fmt, output) -> None:
    """``ftkit predict MODEL PATH...``: a bar over the images, the predictions as a table, CSV or
    JSONL (and in --output), then one line counting what was found. Images are scored with the
    model's own TTA unless --tta says otherwise, as its numbers were measured."""
    from .faces import detector
    from .predict import prediction_rows, predict_paths, whole_image_hint, write_prediction_file

    with progress_bar(console) as bar:
        task = bar.add_task("images", total=None)
        results = predict_paths(pred, list(paths), topk=topk, tta=tta, faces=faces, annotate_dir=annotate_dir,
                                progress=lambda n: bar.advance(task, n), on_total=lambda n: bar.update(task, total=n))
    if fmt == "table":
        _print_predictions(results, model)
    elif fmt == "csv":
        import csv

        csv.writer(sys.stdout).writerows(prediction_rows(results, pred.classes))
    else:
        for r in results:
            click.echo(json.dumps(r))
    if output:
        write_prediction_file(Path(output), results, prediction_rows(results, pred.classes))
    read = [r for r in results if "error" not in r]
    faces_found = sum(d["region"] == "face" for r in read for d in r["detections"])
    tops = Counter(d["top"][0]["class"] for r in read for d in r["detections"])
    console.print(f"{len(read)} of {len(results)} image(s) read"
                  + (f", {faces_found} face(s) found by {detector(pred.face_detector).name}"
                     if faces_found or faces not in (None, "none") else "")
                  + (f"; top class: {', '.join(f'{c} {n}' for c, n in tops.most_common())}" if sum(tops.values()) > 1 else "")
                  + (f"; predictions {output}" if output else "")
                  + (f" (TTA {tta})" if tta != "none" else ""))
    hint = whole_image_hint(pred, results, faces)
    if hint:
        console.print(hint, style="yellow")
    if all("error" in r for r in results):
        raise click.ClickException(f"none of the {len(results)} input image(s) could be read (reasons above)")


def _predict_stream(pred, model, source, video_out, every, topk, tta, faces, max_frames, fmt, output) -> None:
    """``ftkit predict --video/--camera``: a bar showing the latest faces, rows printed as
    frames are analysed (csv, jsonl), then a summary of the expressions seen."""
    import csv

    from .predict import write_prediction_file
    from .video import predict_video, video_rows, video_summary

    out = csv.writer(sys.stdout)
    if fmt == "csv":
        out.writerow(next(video_rows([], pred.classes)))

    def emit(row):
        if fmt == "jsonl":
            click.echo(json.dumps(row))
        elif fmt == "csv":
            out.writerows(list(video_rows([row], pred.classes))[1:])
        sys.stdout.flush()

    def latest(row):
        if row is None or not row["detections"]:
            return "no face" if row is not None else ""
        return "  ".join(f"{d['top'][0]['class']} {d['top'][0]['probability']:.2f}" for d in row["detections"][:3])

    what = f"camera {source}" if isinstance(source, int) else Path(source).name
    with progress_bar(console) as bar:
        task = bar.add_task(what, total=max_frames)

        def advance(n, row):
            bar.update(task, advance=n, info=latest(row))

        info = predict_video(pred, source, video_out, every=every, topk=topk, tta=tta, faces=faces,
                             max_frames=max_frames, progress=advance, on_frame=emit,
                             on_total=lambda total: bar.update(task, total=total))
    if output:
        write_prediction_file(Path(output), info["track_rows"], video_rows(info["track_rows"], pred.classes))
    summary = video_summary(info["track_rows"], pred.classes)
    table = Table(title=f"{what}: {summary['faces']} face(s) in {summary['with_face']} of "
                        f"{summary['analysed']} analysed frames", caption=f"model {model}")
    for col in ("class", "top in faces", "share", "mean probability"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, v in summary["per_class"].items():
        table.add_row(c, str(v["top"]), f"{100 * v['share']:.1f} %", f"{v['mean_probability']:.3f}")
    console.print(table)
    stopped = " (stopped by Ctrl-C)" if info["stopped"] else ""
    console.print(f"{info['frames']} frames read{stopped}, {info['analysed']} analysed (every {every})"
                  + "".join(f"; {k} {info[k]}" for k in ("video", "track") if info[k])
                  + (f"; predictions {output}" if output else ""))


TABLE_IMAGES = 50  # a folder's table shows this many images; --output or --format csv gives every one


def _print_predictions(results: list[dict], model: str) -> None:
    shown = results[:TABLE_IMAGES]
    rest = len(results) - len(shown)
    table = Table(title=f"predictions ({model})",
                  caption=f"the first {len(shown)} of {len(results)} images: --output FILE or --format csv gives every one"
                  if rest else None)
    for col in ("image", "face", "top classes"):
        table.add_column(col)
    for r in shown:
        if "error" in r or not r["detections"]:
            table.add_row(r["path"], "", r.get("error", "no face found"))
        for i, d in enumerate(r.get("detections", [])):
            where = ("box " + " ".join(map(str, d["box"])) if d["region"] == "face"
                     else {"centre": "centre crop (no face found)", "image": "whole image"}[d["region"]])
            table.add_row(r["path"], where, "  ".join(f"{t['class']} {t['probability']:.2f}" for t in d["top"]))
    console.print(table)
