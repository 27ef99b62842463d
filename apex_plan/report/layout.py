"""Terminal layout shared by every table and summary line: columns that never cut a value, summary
lines broken only between phrases, and a compact layout for narrow terminals (80 columns)."""

from __future__ import annotations

import io
import re
import textwrap

from rich.console import Console
from rich.markup import escape
from rich.table import Table


# a figure and the unit after it stay on one line: the space between them is held while wrapping
_UNIT = re.compile(r"(?<=\d) (?=(?:ms|s|req/s|tok/s|W|J|GPUs?|tokens?|%|GiB|GB|MiB|B)(?=[\s,;.)]|$))")
_HELD = "\x00"


def wrap_text(text: str, width: int, indent: str = "") -> list[str]:
    """`text` in lines of at most `width`, broken at spaces only (never inside a word, nor between a figure
    and its unit), continuation lines indented by `indent`; a word longer than the width stays whole."""
    held = _UNIT.sub(_HELD, text)
    lead = held[:len(held) - len(held.lstrip())]
    parts = textwrap.wrap(held, width, initial_indent="", subsequent_indent=lead + indent,
                          break_long_words=False, break_on_hyphens=False) or [""]
    return [p.replace(_HELD, " ") for p in parts]


def print_wrapped(console: Console, text: str, style: str = "") -> None:
    """`text` wrapped by `wrap_text` at the console's width, in `style`."""
    for line in wrap_text(text, max(console.width, 20)):
        console.print(f"[{style}]{escape(line)}[/{style}]" if style else escape(line), soft_wrap=True, highlight=False)


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
        # a line longer than the width (one long phrase) wraps at its spaces, continuation indented
        for part in wrap_text(line, width, "  "):
            console.print(escape(part), soft_wrap=True, highlight=False)


def table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table whose cells wrap only at spaces: every column is at least as wide as its longest word."""
    t = Table(title=title, title_justify="left")
    for name, justify in columns:
        t.add_column(name, justify=justify, overflow="fold")
    return t


def fit_columns(t: Table, console: Console, optional: tuple[str, ...] = ()) -> bool:
    """Minimum width of each column: its longest word (header or cell), so no value is ever cut; when
    they cannot all fit `width`, the `optional` columns (in that order) are left out (the JSON and CSV
    carry them). True when the table then fits the console's width."""
    for col in t.columns:
        words = [w for cell in [str(col.header), *map(str, col._cells)] for w in cell.split()]
        col.min_width = max((len(w) for w in words), default=1)

    def fits() -> bool:                    # rendered at the console's width, no line longer than it
        probe = Console(width=console.width, file=io.StringIO(), color_system=None, legacy_windows=False)
        probe.print(t, crop=False)
        return max(len(line) for line in probe.file.getvalue().splitlines()) <= console.width
    for name in optional:
        if fits():
            break
        t.columns[:] = [c for c in t.columns if c.header != name]
    return fits()


def print_table(console: Console, t: Table, optional: tuple[str, ...] = ()) -> None:
    """`t` fitted to the console (`fit_columns`); when even its required columns cannot fit (a terminal
    narrower than about 70 columns), each row as one record instead: its first cell, then 'header value'
    phrases broken only between phrases, so no value is ever cut."""
    if fit_columns(t, console, optional):
        console.print(t)
        return
    if t.title:
        console.print(escape(str(t.title)), highlight=False)
    cols = t.columns
    for r in range(t.row_count):
        cells = [" ".join(str(c._cells[r]).split()) for c in cols]
        phrases = [f"{' '.join(str(c.header).split())} {v}" for c, v in zip(cols[1:], cells[1:]) if v]
        print_phrases(console, f"  {cells[0]}: " if cells[0] else "  ", phrases)
