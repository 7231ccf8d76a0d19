"""Every command the README shows parses with the command line as it is (options, choices,
subcommands), so the README and `--help` cannot drift apart."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """``python cli.py …`` / ``mmer …`` lines of the README's code blocks (continuations joined,
    comments and shell redirections dropped)."""
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|\|", line):
                part = part.split(">", 1)[0].strip()
                m = re.search(r"(?:python cli\.py|\bmmer)\s+(.*)", part)
                if m and not part.startswith("bash "):
                    out.append(m.group(1))
    return out


def parse(args: list[str]) -> None:
    """Parse like click does, down to the leaf command, without running anything."""
    group: click.Command = cli
    ctx = group.make_context("cli", list(args), resilient_parsing=False)
    while isinstance(group, click.Group):
        rest = ctx.protected_args + ctx.args if hasattr(ctx, "protected_args") else ctx.args
        if not rest:
            return
        name, group, rest = ctx.command.resolve_command(ctx, rest)
        ctx = group.make_context(name, rest, parent=ctx)


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 25, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    args = [a.replace("*", "example") for a in shlex.split(command)]  # a glob: one file
    try:
        parse(args)
    except click.BadParameter as e:  # paths the README names as examples need not exist here
        assert "does not exist" in str(e), (command, str(e))
