"""Reading untrusted tables (profile files, scenario files) into typed values.

One mechanism for every file the user can hand us: a ``Reader`` walks a parsed TOML table,
returns typed values, and raises ``InputError`` naming the file, the field path (for example
``markets.BTC_USDC_PERP.tick_size`` or ``accounts[2].deposits.USDC``), what was found and what
is allowed. Unknown keys are errors with a did-you-mean, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import datetime
import difflib
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from exchange.decimals import is_multiple, to_decimal

MILLISECOND = Decimal("0.001")  # virtual time is whole milliseconds: finer times are refused
MAX_SECONDS = Decimal(30 * 24 * 3600)  # no time in a user file (a run's length included) is past 30 days


class InputError(ValueError):
    """A value in a user file is missing or not allowed; says where and what would be."""

    def __init__(
        self,
        source: str,
        field: str,
        found: object,
        allowed: str,
        *,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.field = field
        self.found = found
        self.allowed = allowed
        self.line = line
        self.hint = hint
        where = f"{source}:{line}" if line is not None else source
        found_text = "nothing (the field is missing)" if found is _MISSING else toml_words(found)
        subject = "" if field == source else f"field `{field}`: "  # a flag names itself once
        message = f"{where}: {subject}found {found_text}; allowed: {allowed}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


def read_user_file(path: Path, kind: str) -> str:
    """The text of a user's file (``kind``: what it should be, e.g. "TOML scenario file"), or an
    InputError naming the file: unreadable, or a byte that is not UTF-8 and where."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), "<file>", f"a byte that is not UTF-8 at offset {exc.start}",
                         f"a {kind} in UTF-8") from None
    except OSError as exc:
        raise InputError(str(path), "<file>", exc.strerror, f"a readable {kind}") from None


def toml_words(value: object) -> str:
    """A value as the file would spell it (TOML ``true``, ``"text"``, ``[1, 2]``), so a message
    quotes what the user wrote rather than Python's rendering of it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        return str(value).replace("E+", "e").replace("E", "e")  # 1e400, as written, not 1E+400
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_words(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_words(v) for v in value) + "]"
    if value is None:
        return "nothing"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


class Reader:
    """Typed access to one table of a user file, remembering which keys were read."""

    def __init__(self, data: Mapping[str, Any], source: str, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise InputError(source, path or "<top>", data, "a table")
        self.data = data
        self.source = source
        self.path = path
        self._seen: set[str] = set()

    # -- errors ---------------------------------------------------------------------------
    def error(self, key: str | int, found: object, allowed: str, hint: str | None = None) -> InputError:
        return InputError(self.source, join_path(self.path, key), found, allowed, hint=hint)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, required: bool, default: Any) -> Any:
        self._seen.add(key)
        if key in self.data:
            return self.data[key]
        if required:
            typo = difflib.get_close_matches(key, [k for k in self.data if isinstance(k, str)], n=1, cutoff=0.6)
            hint = f"found `{typo[0]}` instead: did you mean `{key}`?" if typo else None
            raise self.error(key, _MISSING, "a value (this field is required)", hint)
        return default

    # -- scalars --------------------------------------------------------------------------
    def decimal(
        self,
        key: str,
        *,
        required: bool = True,
        default: Decimal | None = None,
        minimum: Decimal | None = None,
        maximum: Decimal | None = None,
        positive: bool = False,
        step: Decimal | None = None,
        unit: str = "",
    ) -> Decimal:
        """A finite decimal within the bounds and, with ``step``, a whole multiple of it
        (``unit`` names what the step is, for the message: ``times are whole milliseconds``)."""
        raw = self._get(key, required, default)
        if raw is default and key not in self.data:
            return raw
        allowed = _describe_range("a decimal number", minimum, maximum, positive)
        if step is not None:
            allowed += f", a multiple of {step}" + (f" ({unit})" if unit else "")
        if isinstance(raw, bool):
            raise self.error(key, raw, allowed)
        try:
            value = to_decimal(raw)
        except (TypeError, InvalidOperation, ValueError):
            raise self.error(key, raw, allowed) from None
        if not value.is_finite():
            raise self.error(key, raw, allowed)
        if positive and value <= 0:
            raise self.error(key, raw, allowed)
        if minimum is not None and value < minimum:
            raise self.error(key, raw, allowed)
        if maximum is not None and value > maximum:
            raise self.error(key, raw, allowed)
        if step is not None and not is_multiple(value, step):
            raise self.error(key, raw, allowed)
        return value

    def millis(
        self,
        key: str,
        *,
        required: bool = True,
        default: Decimal | None = None,
        minimum: Decimal | None = Decimal(0),
        positive: bool = False,
    ) -> int:
        """Seconds, read as whole milliseconds of virtual time, at most ``MAX_SECONDS``."""
        seconds = self.decimal(key, required=required, default=default, minimum=None if positive else minimum,
                               maximum=MAX_SECONDS, positive=positive, step=MILLISECOND,
                               unit="seconds, at most 30 days, in whole milliseconds")
        return int(seconds * 1000)

    def optional_decimal(self, key: str, **limits: Any) -> Decimal | None:
        if key not in self.data:
            self._seen.add(key)
            return None
        return self.decimal(key, **limits)

    def integer(
        self,
        key: str,
        *,
        required: bool = True,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        raw = self._get(key, required, default)
        if raw is default and key not in self.data:
            return raw
        allowed = _describe_range("a whole number", minimum, maximum, False)
        if isinstance(raw, bool):
            raise self.error(key, raw, allowed)
        if isinstance(raw, Decimal) and raw == raw.to_integral_value():
            raw = int(raw)
        if not isinstance(raw, int):
            raise self.error(key, raw, allowed)
        if (minimum is not None and raw < minimum) or (maximum is not None and raw > maximum):
            raise self.error(key, raw, allowed)
        return raw

    def boolean(self, key: str, *, required: bool = True, default: bool | None = None) -> bool:
        raw = self._get(key, required, default)
        if raw is default and key not in self.data:
            return raw
        if not isinstance(raw, bool):
            raise self.error(key, raw, "true or false")
        return raw

    def string(
        self,
        key: str,
        *,
        required: bool = True,
        default: str | None = None,
        choices: list[str] | tuple[str, ...] | None = None,
    ) -> str:
        raw = self._get(key, required, default)
        if raw is default and key not in self.data:
            return raw
        if choices is not None:
            allowed = "one of " + ", ".join(f"`{c}`" for c in choices)
            if raw not in choices:
                hint = did_you_mean(str(raw), list(choices)) if isinstance(raw, str) else None
                raise self.error(key, raw, allowed, hint)
            return raw
        if not isinstance(raw, str) or not raw:
            raise self.error(key, raw, "a non-empty string")
        return raw

    def string_list(self, key: str, *, required: bool = True, default: list[str] | None = None) -> list[str]:
        raw = self._get(key, required, default)
        if raw is default and key not in self.data:
            return raw
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.error(key, raw, "a list of strings")
        return list(raw)

    # -- nesting --------------------------------------------------------------------------
    def table(self, key: str, *, required: bool = True) -> Reader | None:
        raw = self._get(key, required, None)
        if raw is None and key not in self.data:
            return None
        if not isinstance(raw, Mapping):
            raise self.error(key, raw, "a table")
        return Reader(raw, self.source, join_path(self.path, key))

    def tables(self, key: str, *, required: bool = True) -> Iterator[tuple[str, Reader]]:
        """The sub-tables of ``key`` in file order (``[assets.BTC]``, ``[assets.ETH]``...)."""
        outer = self.table(key, required=required)
        if outer is None:
            return
        for name in list(outer.data):
            yield name, outer.table(name)  # type: ignore[misc]

    def array(self, key: str, *, required: bool = True) -> list[Reader]:
        raw = self._get(key, required, [])
        if not isinstance(raw, list):
            raise self.error(key, raw, "an array of tables ([[...]])")
        readers = []
        for index, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise InputError(self.source, join_path(join_path(self.path, key), index), item, "a table")
            readers.append(Reader(item, self.source, join_path(join_path(self.path, key), index)))
        return readers

    def raw(self, key: str, *, required: bool = True, default: Any = None) -> Any:
        return self._get(key, required, default)

    def done(self, allowed_extra: tuple[str, ...] = ()) -> None:
        """Refuse any key that was never read: a typo must not fall back to a default."""
        known = sorted(self._seen | set(allowed_extra))
        for key in self.data:
            if key not in self._seen and key not in allowed_extra:
                raise self.error(
                    key,
                    self.data[key],
                    "no such field here; known fields: " + ", ".join(f"`{k}`" for k in known),
                    did_you_mean(key, known),
                )


def _describe_range(kind: str, minimum: object, maximum: object, positive: bool) -> str:
    bounds = []
    if positive:
        bounds.append("> 0")
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    return " ".join([kind, " and ".join(bounds)]) if bounds else kind


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value in ``override`` replaces the one in ``base``."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
