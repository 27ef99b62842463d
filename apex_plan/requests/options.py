"""Request options declared once: each field of a request dataclass carries its CLI spellings, its
help and its limits, and `build` makes the request from a plain mapping (typer's keyword arguments,
or a sweep scenario read from YAML) with the same checks either way.

    gpus: Optional[int] = option(None, "--gpus", help="...", count=(1, L.MAX_GPUS, "e.g. --gpus 8"))

A bad value is an `InputError` naming the option's first spelling, the problem and the fix (one
line on stderr and exit status 2 in the CLI). The CLI builds its typer options from these fields
(`apex_plan.cli._options_of`), and the sweep reads which keys a scenario may set from them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any, Mapping

from apex_plan.errors import InputError, did_you_mean

REQUIRED: Any = ...          # the default of an option that must be given


def option(default: Any, *flags: str, help: str, count: tuple | None = None, real: tuple | None = None,
           low_open: bool = True) -> Any:
    """A request field with its CLI spellings (`flags`, the first is the canonical one), help text and
    limits: `count=(low, high, example)` a whole number in [low, high]; `real=(low, high, example)` a
    finite number in (low, high] ([low, high] unless low_open)."""
    return field(default=default, metadata={"flags": flags, "help": help, "count": count, "real": real,
                                            "low_open": low_open})


def argument(*, help: str) -> Any:
    """A required positional field taking one or more values (the CLI's `FILES...`), kept as a tuple
    of strings."""
    return field(default=REQUIRED, metadata={"flags": (), "help": help, "count": None, "real": None,
                                             "low_open": True, "argument": True})


def is_argument(f: dataclasses.Field) -> bool:
    """Whether field `f` is a positional argument (`argument`) rather than an option."""
    return bool(f.metadata.get("argument"))


def _kind(hint: Any) -> type:
    """int, float, str or bool: the type of a field, Optional[...] unwrapped."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def field_kinds(cls: type) -> dict[str, tuple[Any, type]]:
    """Field name -> (its type hint, its base kind) of a request class."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], _kind(hints[f.name])) for f in dataclasses.fields(cls)}


def option_keys(cls: type) -> dict[str, str]:
    """Scenario key (the first long flag without dashes, '-' as '_') -> field name."""
    out = {}
    for f in dataclasses.fields(cls):
        if is_argument(f):
            continue
        long = next(o for o in f.metadata["flags"] if o.startswith("--"))
        out[long[2:].replace("-", "_")] = f.name
    return out


def _whole(where: str, value: Any, example: str) -> int:
    """An int from an int, an integral float or a decimal string, else one line."""
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
        raise InputError(where, None, f"must be a whole number, got {value!r}", example)
    return value


def _number(where: str, value: Any, example: str) -> float:
    """A float from a number or a decimal string, else one line."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise InputError(where, None, f"must be a number, got {value!r}", example) from None
    return value


def _coerce(f: dataclasses.Field, kind: type, value: Any) -> Any:
    """One option's value, converted to its kind and checked against its limits."""
    from apex_plan.limits import check_count, check_real
    md = f.metadata
    if is_argument(f):
        return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)
    where = md["flags"][0]
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(where, None, f"{value!r} is not true or false", "write true or false")
        return value
    if kind is int:
        low, high, example = md["count"] or (None, None, f"e.g. {where} 1")
        v = _whole(where, value, example)
        return v if low is None else check_count(where, None, v, low, high, example)
    if kind is float:
        low, high, example = md["real"] or (None, None, f"e.g. {where} 1")
        v = _number(where, value, example)
        return v if low is None else check_real(where, None, v, low, high, example, md["low_open"])
    if isinstance(value, (dict, list, tuple)):
        raise InputError(where, None, f"value {value!r} is not a scalar", "give a number or a string")
    return str(value)


def build(cls: type, mapping: Mapping[str, Any]):
    """`cls` (a frozen request dataclass) from field name -> value; a missing field or None (not given)
    takes its default, every other value is converted and checked."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in mapping:
        if k not in fields:
            raise InputError(f"--{str(k).replace('_', '-')}", None, "is not an option of this command",
                             did_you_mean(str(k), fields))
    kinds = field_kinds(cls)
    values = {}
    for name, f in fields.items():
        v = mapping.get(name)
        v = f.default if v is None else v
        if v is REQUIRED:
            where = name.upper() if is_argument(f) else f.metadata["flags"][0]
            raise InputError(where, None, "is required", f"give {where}")
        values[name] = None if v is None else _coerce(f, kinds[name][1], v)
    return cls(**values)
