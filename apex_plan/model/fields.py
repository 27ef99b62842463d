"""Readers of Hugging Face config fields: each bad value becomes an `InputError` naming the file,
the field and the fix."""

from __future__ import annotations

from typing import Any, Callable

from apex_plan.limits import check_model_field
from apex_plan.errors import InputError

_MISSING = object()


def _get(cfg: dict, where: str, field: str, default: Any = _MISSING) -> Any:
    value = cfg.get(field, None)
    if value is None:
        if default is _MISSING:
            raise InputError(where, field, "required field is missing",
                             f"add '{field}' with the value from the model's Hugging Face config.json")
        return default
    return value


def _int(cfg: dict, where: str, field: str, default: Any = _MISSING, minimum: int = 1) -> int:
    """A whole number >= `minimum` (floats with an integer value are accepted, bools are not)."""
    value = _get(cfg, where, field, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(where, field, f"must be a whole number, got {value!r}", f"write '{field}' as an integer")
    if value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise InputError(where, field, f"must be {what}, got {value}", f"give '{field}' a value of {minimum} or more")
    return check_model_field(where, field, value)


def _bool(cfg: dict, where: str, field: str, default: bool) -> bool:
    value = _get(cfg, where, field, default)
    if not isinstance(value, bool):
        raise InputError(where, field, f"must be true or false, got {value!r}", f"write '{field}: true' or 'false'")
    return value


def _int_list(cfg: dict, where: str, field: str) -> list[int]:
    value = _get(cfg, where, field, [])
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise InputError(where, field, f"must be a list of layer indices, got {value!r}", f"write '{field}: [0, 1]' or '[]'")
    return value


def _count_dense(num_layers: int, is_moe_layer: Callable[[int], bool]) -> int:
    return sum(1 for i in range(num_layers) if not is_moe_layer(i))




def _str_list(cfg: dict, where: str, field: str) -> list[str]:
    value = _get(cfg, where, field)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputError(where, field, f"must be a list of layer type names, got {value!r}",
                         f"write '{field}' as in the model's config.json")
    return value
