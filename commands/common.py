"""What every command shares: the work-directory and JSON options, the error-handling group."""
from __future__ import annotations

import errno
import json
import sys
from typing import Any

import click

from core.atomic import json_safe
from core.errors import MMERError

WORKDIR = click.option("--workdir", "-w", type=click.Path(file_okay=False), default="work",
                       show_default=True, help="Work directory: corpus, feature cache, runs.")


JSON_OUT = click.option("--json", "as_json", is_flag=True,
                        help="Also print the result as JSON on standard output (messages and "
                             "tables go to standard error), for scripts.")


#: The run each task's commands read when the user names none and it is trained: the paper's.
PAPER_RUNS = {"ser": "small", "ter": "cnn"}


def run_option(task: str, flag: str | None = None):
    """``--ser-run`` / ``--ter-run`` (or ``flag``): which trained run a command reads; unset, the
    paper's model when trained, else the task's only trained run (:func:`chosen_run`)."""
    return click.option(flag or f"--{task}-run", default=None, metavar="NAME",
                        help=f"{task.upper()} run (runs/{task}/<name>). Default: {PAPER_RUNS[task]} "
                             f"when trained, else the only trained {task.upper()} run.")


def chosen_run(workdir: str, task: str, run: str | None, flag: str | None = None) -> str:
    """The run ``run_option`` stands for (models.trained.choose_run), saying on standard error
    which one was taken when the user named none and it is not the paper's."""
    from models.trained import choose_run
    name, note = choose_run(workdir, task, run, PAPER_RUNS[task], flag or f"--{task}-run")
    if note:
        click.echo(note, err=True)
    return name


def emit_json(obj: Any) -> None:
    """``obj`` as strict JSON on stdout (NaN/inf as null)."""
    click.echo(json.dumps(json_safe(obj), indent=2, default=str, ensure_ascii=False))


def program(ctx: click.Context) -> str:
    """How the user invoked us, for the commands we suggest: ``mmer`` or ``python cli.py``."""
    name = ctx.find_root().info_name or "mmer"
    return f"python {name}" if name.endswith(".py") else name


class ProjectGroup(click.Group):
    """Turns project errors into a one-line message and exit status 1 (no traceback)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``-v``/``--verbose`` anywhere on the line (``cli.py extract -v``), not only first."""
        if ctx.parent is None and any(a in ("-v", "--verbose") for a in args[1:]):
            args = ["-v"] + [a for a in args if a not in ("-v", "--verbose")]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MMERError as e:
            click.secho(f"error: {e.render(program(ctx))}", fg="red", err=True)
            sys.exit(1)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            click.secho(f"error: disk full writing {e.filename or 'the work directory'}: free "
                        "space and re-run; completed work is kept", fg="red", err=True)
            sys.exit(1)
