"""Reading images: one decoder for every file format ftkit accepts, and the error for data it
cannot use. The data, face and FER2013 modules all read through here."""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .errors import FtkitError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".avif",
                    ".heic", ".heif"}
HEIF_EXTENSIONS = {".heic", ".heif"}  # phones' photos (iPhones' default): read through pillow-heif


# Folders that archivers and file browsers leave beside the data: macOS zips add __MACOSX/
# (AppleDouble "._" copies of every file), image viewers add .thumbnails/ and the like.
NOT_DATA = {"__MACOSX"}


class DataError(FtkitError, ValueError):
    """Input data that ftkit cannot use; the message names the file or folder and what to do."""


# --- finding images ----------------------------------------------------------------------


def not_data(relative: Path) -> bool:
    """Whether a path under a data folder is not data: it or a folder above it is hidden (a
    leading dot: .thumbnails/, macOS's ._ files) or an archiver's folder such as __MACOSX."""
    return any(part.startswith(".") or part in NOT_DATA for part in relative.parts)


def walk_files(folder: Path) -> Iterator[Path]:
    """Every file under ``folder`` that :func:`not_data` keeps, following symbolic links to
    folders and to files as torchvision's ImageFolder does. Paths keep the links as found (a
    listing written from them stays valid where the links are). Each real folder is read once:
    a link back to a folder above it (a loop), or a second link to a folder already read, is
    named in a warning and not followed. A dangling link is yielded like a file
    (:func:`dangling_link` tells it), so that callers name it instead of losing it silently."""
    root = os.fspath(folder)
    seen = {_identity(root): root}
    for top, dirs, files in os.walk(root, followlinks=True):
        here, kept = Path(os.path.realpath(top)), []
        for name in sorted(dirs):
            path = os.path.join(top, name)
            if not_data(Path(name)):
                continue
            if here.is_relative_to(os.path.realpath(path)):
                warnings.warn(f"{path} is a symbolic link to a folder that holds it (a loop): not followed; "
                              "remove the link or point it elsewhere", stacklevel=2)
            elif (first := seen.setdefault(_identity(path), path)) != path:
                warnings.warn(f"{path} is the same folder as {first}, already read: its files are counted once",
                              stacklevel=2)
            else:
                kept.append(name)
        dirs[:] = kept
        yield from (Path(top, name) for name in files if not not_data(Path(name)))


def _identity(path: str) -> tuple[int, int]:
    """What a folder is, whatever the path it is reached by (for the loop check)."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def dangling_link(path: Any) -> str | None:
    """Why ``path`` cannot be read when it is a symbolic link whose target is missing; else None
    (also for what is no path, such as the bytes of a file in a shard)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)}, which does not exist: mend or remove the link"
    return None


def _images(folder: Path) -> Iterator[Path]:
    return (p for p in walk_files(folder) if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or dangling_link(p)))


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by extension), in a stable order,
    leaving out what :func:`not_data` says is not data."""
    return sorted(_images(folder))


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file that :func:`image_files` would list (stops at the first)."""
    return any(True for _ in _images(folder))


def refuse_archive(path: Path, instead: str) -> None:
    """Refuse an archive (.zip, .tar.gz, ...: shutil's unpack formats) given where images or a
    folder of them belong, with the command that extracts it and what to give ``instead``."""
    suffix = next((ext for _, exts, _ in shutil.get_unpack_formats() for ext in exts if path.name.lower().endswith(ext)), None)
    if suffix:
        how = f"unzip {path} -d DIR" if suffix == ".zip" else f"mkdir DIR && tar -xf {path} -C DIR"
        raise DataError(f"{path} is an archive ({suffix}): extract it first ({how}) and give {instead}")


# --- reading one image -------------------------------------------------------------------


# What PIL raises for a file it cannot or will not decode (a decompression bomb is refused
# like a corrupt file: skipped with its name, never fatal to the whole run).
UNREADABLE = (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError)


@functools.lru_cache(maxsize=None)
def _heif_opener() -> bool:
    """Whether PIL reads HEIC/HEIF files (pillow-heif installed; registered on first use)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def open_image(path: str | Path | BinaryIO) -> Image.Image:
    """``PIL.Image.open``, reading HEIC/HEIF photos through pillow-heif when it is installed; a
    photo in a format this installation cannot read says what to install."""
    suffix = Path(path).suffix.lower() if isinstance(path, (str, os.PathLike)) else ""
    if suffix in HEIF_EXTENSIONS and not _heif_opener():
        raise UnidentifiedImageError("a HEIC/HEIF photo, which needs pillow-heif: pip install pillow-heif "
                                     "(or convert the photos to JPEG)")
    if suffix == ".avif" and not features.check("avif"):
        raise UnidentifiedImageError("an AVIF image, which this Pillow cannot read: pip install -U pillow (11.3 or later)")
    return Image.open(path)


def read_image(path: str | Path | BinaryIO) -> np.ndarray:
    """Decode any common image file to an RGB ``uint8`` array of shape (H, W, 3).

    Handles EXIF orientation, palette and alpha modes, and 16-bit / float grayscale
    (rescaled to 0-255). Raises DataError naming the file when it cannot be decoded.
    """
    if broken := dangling_link(path):
        raise DataError(f"cannot read image {path}: it is {broken}")
    try:
        with open_image(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                top = 65535.0 if arr.max() > 255 else 255.0
                gray = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except UNREADABLE as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding it; None when unreadable."""
    try:
        with open_image(path) as im:
            return im.size
    except UNREADABLE:
        return None


def decode_all(paths: list[str], threads: int = 4, progress: Callable[[int], None] | None = None,
               keep: Callable[[np.ndarray], Any] | None = None):
    """Decode many files with a thread pool (PIL releases the GIL while decoding).

    Returns (images, failures) where images[i] is None for a file that failed and
    failures lists (path, reason). With ``keep``, images[i] is what it makes of the image (a
    digest: the pixels of a large folder need not all be held at once).
    """

    def one(path: str):
        try:
            image = read_image(path)
            return (keep(image) if keep else image), None
        except DataError as exc:
            return None, dangling_link(path) or str(exc.__cause__ or exc)

    images: list[np.ndarray | None] = []
    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, (img, err) in zip(paths, pool.map(one, paths, chunksize=64)):
            images.append(img)
            if err is not None:
                failures.append((path, err))
            if progress:
                progress(1)
    return images, failures


def verify_image(path: str) -> str | None:
    """Cheap header check for streamed data; returns the reason a file is unusable, or None."""
    if broken := dangling_link(path):
        return broken
    try:
        with open_image(path) as im:
            im.verify()
        return None
    except UNREADABLE as exc:
        return str(exc)
