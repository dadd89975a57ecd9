"""Figures through matplotlib's object API (``matplotlib.figure.Figure``): no pyplot, so a
notebook's backend and open figures are never touched, and figures are freed with their object."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    # matplotlib is imported when a figure is drawn, not with this module: `ftkit predict`
    # imports the reports but draws nothing, and matplotlib is half a second of its start-up
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # said once per report by warn_missing_glyphs, not once per glyph per text drawn
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def warn_missing_glyphs(texts: list[str]) -> None:
    """Warn once when the plotting font cannot draw some characters of ``texts`` (class names
    in Chinese, say): matplotlib would draw them as empty boxes."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties())
    font = font_manager.get_font(path)
    missing = dict.fromkeys(c for text in texts for c in text if not c.isspace() and font.get_char_index(ord(c)) == 0)
    if missing:
        warnings.warn(f"the plotting font ({font.family_name}) has no {' '.join(missing)}: those characters show as empty "
                      "boxes in the PNG figures (report.md, report.html's tables and the JSON files keep them)", stacklevel=2)
