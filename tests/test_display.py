"""Summary tables in narrow terminals and 80-column logs (commands/display.py)."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from commands.display import table

STATUS = ["stage", "key", "complete", "stale", "missing", "failed items", "kept with remarks", "on disk"]
ROWS = [["mel", "20d2f4b38928792f", 2, 0, 0, 0, 0, "5.4 MB"], ["speaker", "0be0ac9b841cb146", 2, 0, 0, 0, 0, "561.8 KB"]]


def _render(t, width: int) -> list[str]:
    con = Console(width=width, record=True, file=io.StringIO())
    con.print(t)
    return con.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 90, 120])
def test_status_keys_stay_whole_within_the_width(width):
    """`status` in an 80-column log broke each 16-character key over three lines
    ('20d2f4b' / '3892879' / '2f') and 'complete' over two; now every cell is on one line (the
    headers wrap at spaces, the vertical rules go where that is what fits) and no line is wider
    than the terminal."""
    lines = _render(table("status", STATUS, ROWS, width=width), width)
    assert max(map(len, lines)) <= width
    for row in ROWS:
        line = next(ln for ln in lines if row[1] in ln)
        assert all(str(cell) in line for cell in row)
    assert any("┃" in ln for ln in lines) == (width >= 90)  # rules only where they fit


def test_cells_too_wide_for_any_layout_still_show_every_character():
    path = "/data/corpora/" + "a_very_long_folder_name/" * 5 + "utt.wav"
    lines = _render(table("failed", ["id", "audio", "reason"], [["u1", path, "audio file missing"]], width=80), 80)
    assert max(map(len, lines)) <= 80
    flat = "".join(ln.split("│")[2].strip() for ln in lines if ln.count("│") >= 3)
    assert flat == path


def test_logs_and_pipes_get_120_columns_unless_columns_says_otherwise():
    """A log or pipe has no width: rich's default 80 broke the summary tables of every `extract`
    and `status` log; 120 holds them whole, and COLUMNS still decides where it is set."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code = "from commands.display import console; print(console.width)"
    for extra, want in (({}, "120"), ({"COLUMNS": "90"}, "90")):
        out = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**env, **extra}, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.strip() == want, out.stderr
