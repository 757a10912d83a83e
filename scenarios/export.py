"""Results as data: a run's event log as one table per kind, for a spreadsheet or a notebook.

``tables`` sorts the events into ``TABLES`` (every event in ``events``; orders, fills,
liquidation steps, account samples, funding, interest and transfers in their own tables), one
flat row per event: ``t`` (virtual ms), ``seq``, ``actor``, ``event``, then the event's own
fields, with nested maps flattened (``positions.BTC_USDC_PERP``) and lists kept as JSON text.

``write_csv`` keeps the log's exact decimal strings. ``frames`` gives pandas DataFrames (and
``write_parquet`` writes them) with each numeric column as float64: a notebook's plots and
group-bys want floats, and the exact figures stay in the log and the CSV. pandas rather than
polars: it is what the notebooks and plotting libraries our users reach for take without a
conversion, and Parquet goes through pyarrow either way. Both come with ``pip install
'marginsim[data]'``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from exchange.decimals import fmt

# Which event kinds each table holds ("events" holds them all).
TABLES: dict[str, tuple[str, ...]] = {
    "events": (),
    "orders": ("order_placed", "order_rejected", "order_closed", "cancel_refused"),
    "fills": ("fill",),
    "liquidation_steps": ("liquidation_step",),
    "account_samples": ("health",),
    "funding": ("funding_rate", "funding_payment"),
    "interest": ("interest", "interest_accrued"),
    "transfers": ("deposit", "withdrawal", "transfer_in", "transfer_out", "borrow", "repay", "lend", "redeem",
                  "fund_flow", "fund_cover", "lenders_compensated"),
}
BASE = ("t", "seq", "actor", "event")
# Columns that hold names, never numbers, even when a name looks like one (an account "7").
TEXT = {"actor", "event", "account", "order_id", "market", "asset", "side", "stage", "reason", "code", "message",
        "status", "origin", "order_type", "counterparty", "provider", "buyer", "seller", "fee_asset", "kind",
        "method", "detail", "outcome", "to", "from", "owner", "purpose", "fields"}

INTEGER = {"t", "seq", "at"}  # virtual milliseconds and the log's sequence number

Row = dict[str, Any]


def _text(value: Any) -> Any:
    """A field as the log writes it: Decimals as plain strings, lists as JSON."""
    if isinstance(value, Decimal):
        return fmt(value)
    if isinstance(value, (list, tuple)):
        return json.dumps([_text(v) for v in value], separators=(",", ":"))
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):  # an enum
        return value.value
    return value


def _flatten(prefix: str, value: Any, row: Row) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _flatten(f"{prefix}.{key}", value[key], row)
    else:
        row[prefix] = _text(value)


def flat_row(event: Mapping[str, Any], *, with_fields: bool = False) -> Row:
    """One event as a flat row; ``with_fields`` keeps its own fields as one JSON column instead
    (the ``events`` table, whose kinds have nothing in common past the first four columns)."""
    row: Row = {key: event.get(key) for key in BASE}
    rest = {k: v for k, v in event.items() if k not in BASE}
    if with_fields:
        row["fields"] = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=_text)
        return row
    for key in sorted(rest):
        _flatten(key, rest[key], row)
    return row


def tables(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Row]]:
    """Every table of ``TABLES``, rows in log order (a table no event fell into is empty)."""
    kind_to_table = {kind: name for name, kinds in TABLES.items() for kind in kinds}
    out: dict[str, list[Row]] = {name: [] for name in TABLES}
    for event in events:
        out["events"].append(flat_row(event, with_fields=True))
        name = kind_to_table.get(str(event.get("event")))
        if name is not None:
            out[name].append(flat_row(event))
    return out


def columns(rows: Sequence[Row]) -> list[str]:
    """The four base columns, then every other column in the order first seen."""
    seen = dict.fromkeys(BASE)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def write_csv(events: Iterable[Mapping[str, Any]], directory: Path) -> dict[str, int]:
    """One ``<table>.csv`` per table in ``directory`` (exact decimal strings, an empty cell for
    null); returns the row count of each."""
    directory.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in tables(events).items():
        header = columns(rows)
        with (directory / f"{name}.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, restval="", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        counts[name] = len(rows)
    return counts


def _numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None and v != ""]
    if not present:
        return False
    for value in present:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
            return False
        try:
            Decimal(str(value))
        except InvalidOperation:
            return False
    return True


def frames(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The same tables as pandas DataFrames: times and sequence numbers as int64, other numeric
    columns as float64 (``inf`` stays inf), names and reasons as text."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("DataFrames need pandas: pip install 'marginsim[data]'") from None
    out = {}
    for name, rows in tables(events).items():
        header = columns(rows)
        frame = pd.DataFrame.from_records([[row.get(c) for c in header] for row in rows], columns=header)
        for column in header:
            if column in INTEGER and frame[column].notna().all():
                frame[column] = frame[column].astype("int64")
            elif column not in TEXT and _numeric(frame[column].tolist()):
                frame[column] = pd.to_numeric(frame[column].map(lambda v: None if v in (None, "") else float(v)))
        out[name] = frame
    return out


def write_parquet(events: Iterable[Mapping[str, Any]], directory: Path) -> dict[str, int]:
    """One ``<table>.parquet`` per table in ``directory``; returns the row count of each."""
    try:
        import pyarrow  # noqa: F401  (pandas writes Parquet through it)
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'marginsim[data]'") from None
    directory.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, frame in frames(events).items():
        frame.to_parquet(directory / f"{name}.parquet", index=False)
        counts[name] = len(frame)
    return counts
