"""Terminal layout shared by every table and summary line: columns that never cut a value, summary
lines broken only between phrases, and a compact layout for narrow terminals (80 columns)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_phrases(console: Console, head: str, phrases: list[str], sep: str = "; ") -> None:
    """`head` then the phrases, packed into lines of the console's width and broken only between
    phrases (a phrase longer than a line wraps at its spaces); continuation lines indented."""
    width = max(console.width, 40)
    lines, cur = [], head
    for i, ph in enumerate(phrases):
        piece = ph + (sep if i < len(phrases) - 1 else "")
        if cur.strip() and len(cur) + len(piece.rstrip()) > width:
            lines.append(cur.rstrip())
            cur = "  "
        cur += piece
    lines.append(cur.rstrip())
    for line in lines:
        console.print(escape(line), soft_wrap=len(line) <= width, highlight=False)


def table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table whose cells wrap only at spaces: every column is at least as wide as its longest word."""
    t = Table(title=title, title_justify="left")
    for name, justify in columns:
        t.add_column(name, justify=justify, overflow="fold")
    return t


def fit_columns(t: Table, console: Console, optional: tuple[str, ...] = ()) -> None:
    """Minimum width of each column: its longest word (header or cell), so no value is ever cut; when
    they cannot all fit `width`, the `optional` columns (in that order) are left out (the JSON and CSV
    carry them)."""
    cap = max(8, console.width // 4)       # a word longer than this (a run id) folds rather than widen the table
    for col in t.columns:
        words = [w for cell in [str(col.header), *map(str, col._cells)] for w in cell.split()]
        col.min_width = min(max((len(w) for w in words), default=1), cap)

    def fits() -> bool:                    # rendered at the console's width, no line longer than it
        probe = Console(width=console.width, file=io.StringIO(), color_system=None, legacy_windows=False)
        probe.print(t, crop=False)
        return max(len(line) for line in probe.file.getvalue().splitlines()) <= console.width
    for name in optional:
        if fits():
            break
        t.columns[:] = [c for c in t.columns if c.header != name]
