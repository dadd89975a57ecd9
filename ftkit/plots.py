"""Figures through matplotlib's object API (``matplotlib.figure.Figure``): no pyplot, so a
notebook's backend and open figures are never touched, and figures are freed with their object."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    return Figure(figsize=figsize)


def png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
