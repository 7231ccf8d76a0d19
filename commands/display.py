"""Terminal progress and summaries (rich), kept out of the library functions."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

#: Columns of a log or pipe (no terminal, no COLUMNS): rich's default, 80, broke every summary
#: table's 16-character stage keys over three lines in `extract`/`status` logs.
PIPE_WIDTH = 120

console = Console(stderr=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = PIPE_WIDTH


@contextmanager
def stage_progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields ``start(name, total) -> advance(n)``: one bar per stage, over utterances."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("utterances"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as prog:
        def start(name: str, total: int) -> Callable[[int], None]:
            task = prog.add_task(name, total=total)
            return lambda n: prog.advance(task, n)
        yield start


def table(title: str, columns: list[str], rows: list[list], width: int | None = None) -> Table:
    """A summary table for ``console`` (or ``width`` columns) that keeps every cell on one line —
    the 16-character stage keys someone copies into a bug report — wrapping headers at their
    spaces, and dropping the vertical rules when that is what makes it fit (a narrow terminal;
    logs and pipes get :data:`PIPE_WIDTH`); else rich's own layout, whose long values (paths)
    wrap instead of being cut."""
    cells = [[str(x) for x in r] for r in rows]
    width = width or console.width
    kind, widths = "boxed", None
    for layout, overhead in (("boxed", 3 * len(columns) + 1), ("plain", 2 * len(columns) - 1)):
        widths = fitted_widths(columns, cells, width - overhead)
        if widths is not None:
            kind = layout
            break
    t = (Table(title=title) if kind == "boxed" else
         Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False))
    for c, w in zip(columns, widths or [None] * len(columns)):
        t.add_column(c, overflow="fold", width=w or None)
    for r in cells:
        t.add_row(*r)
    return t


def fitted_widths(columns: list[str], cells: list[list[str]], room: int) -> list[int] | None:
    """Widths within ``room`` characters of content that keep every cell on one line, headers
    wrapped at spaces where needed ([] when nothing needs wrapping: rich's layout as it is);
    None when the cells alone need more."""
    def cell_len(text: str) -> int:
        return max((Text.from_markup(line).cell_len for line in text.splitlines()), default=0)

    cell_w = [max((cell_len(r[i]) for r in cells), default=0) for i in range(len(columns))]
    want = [max(w, cell_len(c)) for w, c in zip(cell_w, columns)]
    least = [max([w] + [cell_len(word) for word in c.split()]) for w, c in zip(cell_w, columns)]
    if sum(want) <= room:
        return []
    if sum(least) > room:
        return None
    spare, out = room - sum(least), []
    for lo, hi in zip(least, want):  # the room left goes to the first headers that would wrap
        out.append(lo + min(spare, hi - lo))
        spare -= out[-1] - lo
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
