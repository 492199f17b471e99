"""Text from the command line or params.yaml turned into typed values, or one line saying what was expected."""
from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

from pipeline.core.errors import UsageError

# Strings that mean "not set" for optional params (e.g. `-P lr=` or `-P lr=default`).
UNSET = {"", "none", "null", "default"}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
MAX_TEXT = 1000  # characters of any text param: paths, URIs, lists (MLflow stores params of up to 6000)


def parse_point(text: str) -> tuple[float, float]:
    """'x,y' -> (x, y) with both finite, else a UsageError."""
    parts = text.split(",")
    try:
        x, y = (float(part) for part in parts)
    except ValueError:
        raise UsageError(f"start: expected two numbers 'x,y' (or 'default', 'random'), got {short(text)}") \
            from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise UsageError(f"start: both coordinates must be finite, got {short(text)}")
    return x, y


def require(ok: bool, name: str, value: Any, expected: str) -> None:
    """A UsageError naming `name`, what was expected and what came, unless `ok`."""
    if not ok:
        raise UsageError(f"{name}: expected {expected}, got {short(value)}")


def short(value: Any) -> str:
    """repr(value), cut to 80 characters: error lines stay readable for a 400-digit number."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def coerce(name: str, raw: Any, kind: Any) -> Any:
    """Turn a YAML value or a command-line string into the field's type, or raise a UsageError."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in UNSET):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    text = str(raw).strip()
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise UsageError(f"{name}: expected true or false, got {short(raw)}")
    if kind is int:
        # ASCII digits only: str.isdigit() also passes '²' and '+-5', which int() then rejects
        if isinstance(raw, bool) or not re.fullmatch(r"[+-]?[0-9]{1,4000}", text):
            raise UsageError(f"{name}: expected an integer, got {short(raw)}")
        return int(text)
    if kind is float:
        try:
            number = float(text) if not isinstance(raw, bool) else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UsageError(f"{name}: expected a finite number, got {short(raw)}")
        return number
    if len(text) > MAX_TEXT:
        raise UsageError(f"{name}: expected at most {MAX_TEXT} characters, got {len(text)}")
    return text
