"""What every command of cli.py shares: the work-directory option and the error-handling group."""
from __future__ import annotations

import errno
import sys

import click

from pipeline.errors import MMERError

WORKDIR = click.option("--workdir", "-w", type=click.Path(file_okay=False), default="work",
                       show_default=True, help="Work directory: corpus, feature cache, runs.")


class ProjectGroup(click.Group):
    """Turns project errors into a one-line message and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MMERError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            click.secho(f"error: disk full writing {e.filename or 'the work directory'}: free "
                        "space and re-run; completed work is kept", fg="red", err=True)
            sys.exit(1)
