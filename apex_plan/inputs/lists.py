"""Comma-separated option lists (search sweeps several values of one option)."""

from __future__ import annotations

from apex_plan.errors import InputError
from apex_plan.limits import check_count


def csv_list(text: str, option: str) -> list[str]:
    """'a,b' -> ['a', 'b']; an empty list or an empty item is an InputError."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(items):
        raise InputError(option, None, f"'{text}' has an empty item", "give one or more values separated by commas")
    return items



def int_list(text: str | None, option: str, high: int) -> list[int | None]:
    """'128,256' -> [128, 256]; None -> [None] (the default)."""
    if text is None:
        return [None]
    out: list[int | None] = []
    for t in csv_list(text, option):
        if not t.isdigit():
            raise InputError(option, None, f"'{t}' is not a positive whole number", "e.g. 128,256")
        out.append(check_count(option, None, int(t), 1, high, "e.g. 128,256"))
    return out
