"""The benchmarks' measured rows, kept as JSON under benchmarks/results/, and the pages made from them.

A benchmark script appends a row with ``record``; BENCHMARKS.md (the headline tables) and
docs/benchmarks.md (every table) are then rendered from the JSON files, so a table is never
typed by hand. A row replaces an earlier one with the same key (its first cells, as the table's
``key`` says, and its command): a rerun supersedes what it measured before; git keeps the history.
A row whose command now measures something else (a recipe changed) keeps its numbers with a
``"superseded"`` note saying why: docs/benchmarks.md shows it with the note, BENCHMARKS.md leaves it out.

    python benchmarks/results.py           # render both pages from benchmarks/results/*.json
    python benchmarks/results.py --check   # exit 1 if a page is not what the JSON files render
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = {ROOT / "BENCHMARKS.md": True, ROOT / "docs" / "benchmarks.md": False}  # page -> headline tables only
MACHINE, COMMAND = "machine", "command"


def slug(title: str) -> str:
    """The file name of a table: its title's words, lower case, joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", title.split("(")[0].lower()).strip("-")


def load(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every table, in the order its ``order`` field gives."""
    tables = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return sorted(tables, key=lambda t: (t.get("order", 99), t["title"]))


def cells_of(line: str) -> list[str]:
    """The cells of a Markdown table row (``| a | b |``)."""
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def record(title: str, header: str, row: str, date: str | None = None, folder: Path = RESULTS, key: int = 1) -> Path:
    """Add one measured row (Markdown, as the scripts print it) to the table ``title``, replacing a
    row with the same key, then render the pages. A new table starts as a detail table whose
    key is its first ``key`` cells and its command."""
    columns, cells = cells_of(header.splitlines()[0]), cells_of(row)
    if len(cells) != len(columns):
        raise ValueError(f"row has {len(cells)} cells, the table {title!r} has {len(columns)} columns: {row}")
    path = folder / f"{slug(title)}.json"
    table = json.loads(path.read_text()) if path.is_file() else {
        "title": title, "about": "", "headline": False, "key": key, "columns": columns, "rows": []}
    if table["columns"] != columns:
        raise ValueError(f"{path}: the script's columns {columns} are not the table's {table['columns']}")
    new = {"cells": cells, "date": date or datetime.date.today().isoformat()}
    table["rows"] = [r for r in table["rows"] if _key(table, r) != _key(table, new)] + [new]
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    if folder == RESULTS:
        write_pages()
    return path


def _key(table: dict[str, Any], row: dict[str, Any]) -> tuple[str, ...]:
    columns = table["columns"]
    command = row["cells"][columns.index(COMMAND)] if COMMAND in columns else ""
    return (*row["cells"][:table["key"]], command)


def render(tables: list[dict[str, Any]], headline: bool) -> str:
    """One page: the machines, then each table with a date column and the machine as a short name."""
    shown = [{**t, "rows": [r for r in t["rows"] if not (headline and r.get("superseded"))]}
             for t in tables if t["headline"] or not headline]
    machines: dict[str, str] = {}
    for table in shown:
        if MACHINE in table["columns"]:
            at = table["columns"].index(MACHINE)
            for row in table["rows"]:
                machines.setdefault(row["cells"][at], f"M{len(machines) + 1}")
    out = ["# Benchmarks" if headline else "# All benchmark tables", ""]
    out += [_INTRO_HEADLINE if headline else _INTRO_ALL, ""]
    if machines:
        out += ["| machine | what it is |", "|---|---|"] + [f"| {short} | {full} |" for full, short in machines.items()] + [""]
    for table in shown:
        out += [f"## {table['title']}", ""]
        if table.get("about"):
            out += [table["about"], ""]
        names = table["columns"]
        order = [i for i, c in enumerate(names) if c != COMMAND]
        command = names.index(COMMAND) if COMMAND in names else None
        columns = [names[i] for i in order] + ["date"] + ([COMMAND] if command is not None else [])
        out += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in table["rows"]:
            cells = [machines[row["cells"][i]] if names[i] == MACHINE else row["cells"][i] for i in order]
            if row.get("superseded"):
                cells[0] += f" (superseded: {row['superseded']})"
            cells += [row["date"]] + ([row["cells"][command]] if command is not None else [])
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


_INTRO_HEADLINE = """Current headline numbers. Each row names its machine, the date it was measured and the command
that reproduces it. This page is generated from `benchmarks/results/*.json` by
`python benchmarks/results.py`; every table, with the settings that were tried, is in
[docs/benchmarks.md](docs/benchmarks.md). FER2013 runs choose their epoch on a slice of
Training and report on PublicTest, unless a table says otherwise."""

_INTRO_ALL = """Every measured table, headline or not: the settings that were tried and why the recipes are what
they are. Generated from `benchmarks/results/*.json` by `python benchmarks/results.py`
(the short page is BENCHMARKS.md at the top of the repository).
Times come from a shared 2-core machine: compare rows of one run, not across machines."""


def write_pages(folder: Path = RESULTS) -> list[Path]:
    """Render every page from the JSON files; returns the pages that changed."""
    tables, changed = load(folder), []
    for page, headline in PAGES.items():
        text = render(tables, headline)
        if not page.is_file() or page.read_text() != text:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text)
            changed.append(page)
    return changed


def stale_pages(folder: Path = RESULTS) -> list[Path]:
    """The pages that differ from what the JSON files render (none when all is in order)."""
    tables = load(folder)
    return [page for page, headline in PAGES.items() if not page.is_file() or page.read_text() != render(tables, headline)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the pages are up to date")
    args = parser.parse_args()
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page.relative_to(ROOT)} is not what benchmarks/results/*.json render: run python benchmarks/results.py")
        sys.exit(1 if stale else 0)
    for page in write_pages():
        print(f"wrote {page.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
