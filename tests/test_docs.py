"""The README and the documentation site: every `ftkit ...` line they show parses with today's
CLI (options, choices, value types, subcommands), every recipe block builds, the site builds with
`mkdocs build --strict`, and BENCHMARKS.md is what benchmarks/results/*.json render.
Nothing is run; a fragment like `ftkit ensemble` (no arguments) is fine."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ftkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402  (benchmarks/results.py)


def readme_commands() -> list[str]:
    """Every `ftkit ...` command shown in the README and the docs (the benchmark tables aside)."""
    return sorted({c for page in PAGES if page.name != "benchmarks.md" for c in page_commands(page.read_text())})


def page_commands(text: str) -> set[str]:
    found = re.findall(r"`(ftkit [^`]+)`", text)
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in re.split(r"&&|\|", line.split(" #")[0]):
                if part.strip().startswith("ftkit "):
                    found.append(part.strip())
    return set(found)


def parse(command: str) -> None:
    """Parse ``command`` as the CLI would, down to its subcommand, without invoking it."""
    args, group, path = shlex.split(command)[1:], main, ["ftkit"]
    ctx = main.make_context("ftkit", [], resilient_parsing=True)
    while isinstance(group, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = group.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no command {name!r} in {' '.join(path)}")
        group, path = sub, path + [name]
    if isinstance(group, click.Group):
        return
    try:
        group.make_context(" ".join(path), args)
    except click.exceptions.Exit:  # --help
        pass
    except click.MissingParameter:  # a fragment that names the command without its arguments
        pass
    except click.BadParameter as exc:
        if "does not exist" not in exc.format_message():  # example paths are not on this machine
            raise


def test_the_readme_and_the_docs_show_commands():
    assert len(readme_commands()) > 60
    assert len(page_commands(README.read_text())) >= 5


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    parse(command)


def test_the_readmes_recipe_blocks_build():
    """Every YAML block in the README and the docs is a recipe that resolves, and its pipeline builds."""
    import yaml

    from ftkit.config import Config, merge, validate
    from ftkit.transforms import augmentations

    blocks = [b for page in PAGES for b in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)]
    assert blocks
    for block in blocks:
        cfg = validate(merge(Config(), yaml.safe_load(block), source="README"))
        assert augmentations(cfg.augment, cfg.augment_pipeline)


def test_the_readme_stays_short_and_its_quick_start_is_what_ci_runs():
    text = README.read_text()
    assert len(text.encode()) <= 10_500
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" && python -m pytest' in text and 'pip install -e ".[dev]" && python -m pytest' in ci
    assert "pip install -e . && ftkit demo" in text
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text):  # links into the docs resolve
        assert (ROOT / link).is_file(), link


def test_the_site_builds_strict(tmp_path):
    """mkdocs build --strict: no broken link, no page left out of the nav, the command reference
    generated from the Click commands."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    reference = (tmp_path / "site" / "cli" / "index.html").read_text()
    for path, command in _commands(main):
        assert f'id="{path[-1]}"' in reference, path
        first = (command.help or "").strip().split("\n")[0][:40]
        assert first.split()[0] in reference, path
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(page.name in nav for page in PAGES if page is not README)


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


def test_benchmarks_md_is_rendered_from_the_results():
    assert results.stale_pages() == [], "run python benchmarks/results.py"
    for table in results.load():
        assert table["rows"] and table["columns"].count("command") <= 1, table["title"]
        for row in table["rows"]:
            assert len(row["cells"]) == len(table["columns"]) and re.fullmatch(r"\d{4}-\d\d-\d\d", row["date"])
            if "command" in table["columns"]:
                command = row["cells"][table["columns"].index("command")]
                assert command.startswith(("`python benchmarks/", "`ftkit ")), (table["title"], command)
    headline = (ROOT / "BENCHMARKS.md").read_text()
    assert len(headline.encode()) < 20_000 and "| M1 |" in headline


def test_a_new_row_replaces_the_one_it_measures_again(tmp_path):
    header = "| model | accuracy | macro-F1 | accuracy | machine | command |\n|---|---|---|---|---|---|"
    row = "| fast | 0.60 | 0.50 | 0.40 | box A | `python benchmarks/x.py` |"
    path = results.record("A table (of things)", header, row, date="2026-01-01", folder=tmp_path)
    results.record("A table (of things)", header, row.replace("fast", "best"), date="2026-01-02", folder=tmp_path)
    results.record("A table (of things)", header, row.replace("0.60", "0.70"), date="2026-01-03", folder=tmp_path)
    table = json.loads(path.read_text())
    assert path.name == "a-table.json"
    assert [(r["cells"][0], r["cells"][1], r["date"]) for r in table["rows"]] == [("best", "0.60", "2026-01-02"),
                                                                                 ("fast", "0.70", "2026-01-03")]
    page = results.render(results.load(tmp_path), headline=False)
    # columns of the same name keep their own cells; the machine becomes a short name with a legend
    assert "| fast | 0.70 | 0.50 | 0.40 | M1 | 2026-01-03 | `python benchmarks/x.py` |" in page and "| M1 | box A |" in page
    assert results.render(results.load(tmp_path), headline=True).count("## ") == 0  # a new table is a detail table
    table["headline"], table["rows"][0]["superseded"] = True, "the recipe changed"
    path.write_text(json.dumps(table))
    assert "| best (superseded: the recipe changed) | 0.60 |" in results.render(results.load(tmp_path), headline=False)
    shown = results.render(results.load(tmp_path), headline=True)
    assert "| fast | 0.70 |" in shown and "best" not in shown  # the headline page leaves it out
    with pytest.raises(ValueError, match="3 cells"):
        results.record("A table (of things)", header, "| a | b | c |", folder=tmp_path)


CHEAP = {"ftkit backbones": "mobilenetv2", "ftkit weights list": "fer2013-fast", "ftkit finetune --help": "--recipe"}
# ^ what each prints, in part


@pytest.mark.parametrize("command", sorted(c for c in readme_commands() if c in CHEAP))
def test_the_docs_commands_that_need_no_data_run(command, tmp_path, monkeypatch):
    """The documented commands that need no data or model of one's own run as shown (in an empty folder)."""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, shlex.split(command)[1:])
    assert r.exit_code == 0, r.output
    assert CHEAP[command] in r.output
