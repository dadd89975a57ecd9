"""The README's commands: every `ftkit ...` line it shows must parse with today's CLI (options,
choices, value types, subcommands), so a renamed or missing option cannot hide in the docs.
Nothing is run; a fragment like `ftkit ensemble` (no arguments) is fine."""

import re
import shlex
from pathlib import Path

import click
import pytest

from ftkit.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    found = re.findall(r"`(ftkit [^`]+)`", text)
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            for part in re.split(r"&&|\|", line.split(" #")[0]):
                if part.strip().startswith("ftkit "):
                    found.append(part.strip())
    return sorted(set(found))


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


def test_the_readme_shows_commands():
    assert len(readme_commands()) > 40


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    parse(command)


def test_the_readmes_recipe_blocks_build():
    """Every YAML block in the README is a recipe that resolves, and its pipeline builds."""
    import yaml

    from ftkit.config import Config, merge, validate
    from ftkit.transforms import augmentations

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        cfg = validate(merge(Config(), yaml.safe_load(block), source="README"))
        assert augmentations(cfg.augment, cfg.augment_pipeline)
