"""Predicting on a video file or a camera: each analysed frame's faces, an annotated copy, a track."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError
from .errors import UsageError
from .io import temp_beside, write_text
from .predict import FRAME_COLUMNS, Predictor, _earlier_predictions, classify_images, draw_detections


VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def check_video_out(out: str | Path, source: str | None) -> None:
    """Refuse, before any frame is read, a video output OpenCV cannot write or one that would
    overwrite the input."""
    out = Path(out)
    if out.suffix.lower() not in VIDEO_CODECS:
        raise UsageError(f"--out {out.name}: the annotated video must end in " + " or ".join(VIDEO_CODECS))
    if source is not None and Path(source).exists() and out.exists() and out.samefile(source):
        raise UsageError(f"--out {out} is the input video; choose another file name")
    # an earlier annotated video (with its track beside it) is replaced; another video, or a
    # file of someone's where the track would go, is not
    track = out.with_suffix(".jsonl")
    if track.exists() and not _earlier_predictions(track):
        raise UsageError(f"--out {out}: its track would go to {track}, which exists and is not an earlier ftkit track: "
                         "nothing was written; choose another file name")
    if out.exists() and not track.is_file():
        raise UsageError(f"--out {out} exists and is not an annotated video ftkit wrote (it writes {track.name} beside "
                         "one): nothing was written; choose another file name, or delete it first")


def predict_video(pred: Predictor, source: str | int, out: str | Path | None, every: int = 1, topk: int = 3,
                  tta: str = "none", faces: str = "all", max_frames: int | None = None, progress=None,
                  on_frame=None, on_total=None) -> dict[str, Any]:
    """Classify the faces of every ``every``-th frame of a file or a camera (``source``).

    ``on_frame(row)`` gets each analysed frame's {frame, time_s, detections} as it comes;
    ``progress(n, row)`` is called once per frame (row: the latest analysed frame), and
    ``on_total(n)`` once with the number of frames to expect (None for a camera). With ``out``
    the annotated video is written beside as a temporary file and renamed when it is complete,
    and its JSONL track goes beside it. Ctrl-C ends the stream early (how a camera is stopped):
    what was read so far is kept and ``stopped`` is True."""
    import cv2

    capture = _open_capture(source)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if isinstance(source, str) else 0
    total = min(count, max_frames) if count > 0 and max_frames else (count if count > 0 else max_frames)
    if on_total:
        on_total(total)
    writer, tmp, track, frames, detections, stopped = None, None, [], 0, [], False
    try:
        while max_frames is None or frames < max_frames:
            try:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if frames % every == 0:
                    detections = classify_images(pred, [rgb], faces, topk, tta)[0]
                    track.append({"frame": frames, "time_s": round(frames / fps, 3), "detections": detections})
                    if on_frame:
                        on_frame(track[-1])
                if out:
                    if writer is None:
                        writer, tmp = _video_writer(Path(out), fps, rgb.shape[1], rgb.shape[0])
                    writer.write(cv2.cvtColor(draw_detections(rgb, detections), cv2.COLOR_RGB2BGR))
                frames += 1
                if progress:
                    progress(1, track[-1] if track else None)
            except KeyboardInterrupt:
                stopped = True
                break
        if writer is not None:
            writer.release()
            writer = None
            if frames:
                os.replace(tmp, out)
                tmp = None
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    if frames == 0:
        raise DataError(f"no frames could be read from {source}" + (" (stopped by Ctrl-C)" if stopped else ""))
    track_path = Path(out).with_suffix(".jsonl") if out else None
    if track_path:
        write_text(track_path, "".join(json.dumps(t) + "\n" for t in track))
    return {"frames": frames, "analysed": len(track), "fps": fps, "stopped": stopped,
            "video": str(out) if out else None, "track": str(track_path) if track_path else None, "track_rows": track}


def _open_capture(source: str | int):
    """An OpenCV capture of a video file or a camera index, or a DataError saying why there is none."""
    import cv2

    if isinstance(source, str) and not Path(source).is_file():
        raise DataError(f"video {source} not found" if not Path(source).exists() else f"video {source} is not a file")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its warnings for an absent camera: ours says it
    try:
        capture = cv2.VideoCapture(source)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        raise DataError(f"cannot open camera {source}: no camera at that index" if isinstance(source, int)
                        else f"cannot open video {source}: a format OpenCV cannot decode (convert it to .mp4, e.g. with ffmpeg)")
    return capture


def _video_writer(out: Path, fps: float, width: int, height: int):
    """An OpenCV writer into a new temporary file beside ``out`` (same suffix, so that OpenCV
    picks the same container), and that file's name."""
    import cv2

    tmp = str(temp_beside(out, ".tmp" + out.suffix))
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*VIDEO_CODECS[out.suffix.lower()]), fps, (width, height))
    if not writer.isOpened():
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"OpenCV cannot write the video {out}: no {out.suffix} encoder in this build")
    return writer, tmp


def video_summary(track: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Per class, over every face classified in the analysed frames: how often it came out on
    top and its mean probability; and how many analysed frames had a face."""
    found = [d for t in track for d in t["detections"]]
    top = [d["top"][0]["class"] for d in found]
    per_class = {c: {"top": top.count(c), "share": top.count(c) / len(found) if found else 0.0,
                     "mean_probability": float(np.mean([d["probabilities"][c] for d in found])) if found else 0.0}
                 for c in classes}
    return {"analysed": len(track), "with_face": sum(bool(t["detections"]) for t in track), "faces": len(found),
            "per_class": per_class}


def video_rows(track: list[dict[str, Any]], classes: list[str]):
    """Header, then one row per face of each analysed frame (a row with no class where none was found)."""
    yield [*FRAME_COLUMNS, *[f"p_{c}" for c in classes]]
    for t in track:
        if not t["detections"]:
            yield [t["frame"], t["time_s"], "", "", "", "", "", *[""] * len(classes)]
        for i, d in enumerate(t["detections"]):
            top = d["top"][0]
            yield [t["frame"], t["time_s"], i, d["region"], " ".join(map(str, d["box"])) if d["box"] else "", top["class"],
                   f"{top['probability']:.6f}", *[f"{d['probabilities'][c]:.6f}" for c in classes]]
