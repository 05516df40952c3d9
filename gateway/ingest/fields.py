"""The fields of the envelope: the refusal, the warning and the primitive parsers they share.

A field the client got wrong either refuses the event (:class:`FieldError`, answered 4xx with
``{"error": ..., "field": ...}``) or is dropped with a :class:`FieldWarning` said in the answer,
the event kept. The parsers here read one JSON value each (a text, an object, a number, a count,
an id) and name the field in what they raise; :func:`soft` and :func:`lenient` turn their
refusal into a warning where the envelope keeps the event.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

MAX_STRING_CHARS = 2048
MAX_COUNT = 2**53

_INDEX_RE = re.compile(r"\[\d+\]")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FieldWarning:
    """A field the event could not use: dropped, the event kept, and said in the answer.

    ``label`` is the field without list indexes or free-form names (``user.email``,
    ``properties.*``): what metrics and the dashboard count, a bounded set.
    """

    field: str
    warning: str
    label: str

    @classmethod
    def of(cls, field_name: str, warning: str, label: str | None = None) -> FieldWarning:
        """A warning for ``field_name``, labelled by the field without indexes."""
        return cls(field_name, warning, label or _INDEX_RE.sub("", field_name))


class FieldError(ValueError):
    """A client mistake in one field; answered 4xx with ``{"error": ..., "field": ...}``."""

    def __init__(self, field_name: str, error: str) -> None:
        super().__init__(f"{field_name}: {error}")
        self.field = field_name
        self.error = error


def parse_text(value: Any, name: str, *, limit: int = MAX_STRING_CHARS) -> str:
    """A non-empty string of at most ``limit`` characters, stripped."""
    if not isinstance(value, str):
        raise FieldError(name, "must be a string")
    text = value.strip()
    if not text:
        raise FieldError(name, "must not be empty")
    if len(text) > limit:
        raise FieldError(name, f"must be at most {limit} characters")
    return text


def parse_optional_text(
    obj: Mapping[str, Any], key: str, name: str, limit: int = MAX_STRING_CHARS
) -> str | None:
    """``obj[key]`` as :func:`parse_text`, or None when it is missing, null or empty."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    return parse_text(value, name, limit=limit)


def parse_object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object; a missing one (None) is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(name, "must be an object")
    return value


def soft(notes: list[FieldWarning], parse: Callable[[], T]) -> T | None:
    """``parse()``, or None with a warning when the field it reads cannot be used: a field
    that cannot be used is dropped and said, and the event is kept."""
    try:
        return parse()
    except FieldError as exc:
        notes.append(FieldWarning.of(exc.field, f"{exc.error}; dropped"))
        return None


def lenient(
    notes: list[FieldWarning] | None, parse: Callable[[Any, str], T], value: Any, where: str
) -> T | None:
    """``parse(value, where)``: strict without ``notes``, else dropped with a warning."""
    if notes is None:
        return parse(value, where)
    return soft(notes, lambda: parse(value, where))


def parse_number(value: Any, name: str) -> float:
    """A finite number >= 0, given as a JSON number or a numeric string."""
    if isinstance(value, bool):
        raise FieldError(name, "must be a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise FieldError(name, "must be a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise FieldError(name, "must be a finite number >= 0")
    return float(value)


def parse_count(value: Any, name: str) -> int:
    """A quantity: a number >= 0, at most 2**53 (an exact integer in JSON everywhere)."""
    number = parse_number(value, name)
    if number > MAX_COUNT:
        raise FieldError(name, f"must be at most {MAX_COUNT}")
    return int(number)


def parse_identifier(value: Any, name: str) -> str:
    """An id as a string: strings kept exactly, JSON integers as their decimal string."""
    if isinstance(value, bool):
        raise FieldError(name, "must be a string")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        value = str(int(value))
    if isinstance(value, str) and value and len(value) <= 256:
        return value
    raise FieldError(name, "must be a non-empty string (at most 256 characters) or an integer")
