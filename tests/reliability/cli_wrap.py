"""Run a Python snippet the way the command line runs its work: a project error (or a full
disk) becomes one line on stderr and exit status 1 (``commands.common.ProjectGroup``)."""
from __future__ import annotations

import sys

import click

from commands.common import ProjectGroup


@click.group(cls=ProjectGroup)
def group() -> None:
    pass


@group.command()
@click.argument("code")
@click.argument("args", nargs=-1)
def run(code: str, args: tuple[str, ...]) -> None:
    sys.argv = ["snippet", *args]
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})  # noqa: S102 - test code


if __name__ == "__main__":
    group(["run", *sys.argv[1:]])
