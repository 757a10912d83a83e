"""Answers from an event log, in plain words with the numbers.

``explain_order``: why an order was refused (IMR before and after, available equity, the
largest size that would have passed, which bound set the IMF), or what became of it.
``explain_account``: how and why a sub-account was liquidated, step by step (MMR at each step,
what was sold at what price, what remained), and the orders it had refused.
``overview``: every refusal and every liquidation in the log, one line each.

It reads the canonical JSON lines a run writes (``marginsim run --log``); numbers come back as
strings and are read as exact decimals. How an account stood when the run ended ("liquidation
pending", bankrupt, mid-liquidation) is ``runner.account_status``, the rule ``run`` prints: on
the run's end state when explain has the run (``RunEnd``), else on the account's closing health
sample, which a run logs once its last instant has settled (a sample carries the same fields as
the summary's row). A log without one (stopped early, or written before closing samples) is
judged on its last periodic sample, and the answer says the marks may have moved since.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from exchange.decimals import ZERO, fmt, fmt_pct
from exchange.liquidation import LiquidationStep, describe_estimate, describe_step
from exchange.margin import LiquidationPriceEstimate
from exchange.validation import InputError
from scenarios.runner import MID_LIQUIDATION, account_status

Event = dict[str, Any]

IMF_SOURCES = {
    "base": "the market's base IMF (its maximum leverage)",
    "size": "the position's size (the square-root term is above the base)",
    "leverage_limit": "the sub-account's leverage limit",
}


# The fields each kind of event must carry for the answers below to read it.
REQUIRED = {
    "order_rejected": ("order_id", "code"),
    "order_placed": ("order_id",),
    "fill": ("order_id", "market", "quantity", "price", "fee"),
    "order_closed": ("order_id", "status", "executed"),
    "liquidation_step": ("account", "stage", "reason"),
}
ALLOWED = "canonical JSON lines written by `marginsim run --log`: one object per line with `event`, `actor` and `t`"


def read_events(path: Path) -> list[Event]:
    """An event log read back and checked line by line: a line that is not one of the run's
    events is refused with its line number and what is missing."""
    source = str(path)
    if not path.is_file():
        found = "a directory" if path.is_dir() else "no such file"
        raise InputError(source, "LOG", found, "an events .jsonl file written by `marginsim run --log`")
    events: list[Event] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number_, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(source, "<line>", line.strip()[:80], f"{ALLOWED} ({exc.msg})", line=number_) from None
                if not isinstance(event, dict):
                    raise InputError(source, "<line>", line.strip()[:80], ALLOWED, line=number_)
                for key, kind in (("event", str), ("actor", str), ("t", int)):
                    if not isinstance(event.get(key), kind) or isinstance(event.get(key), bool):
                        raise InputError(source, key, event.get(key, "nothing"), ALLOWED, line=number_)
                missing = [k for k in REQUIRED.get(event["event"], ()) if k not in event]
                if missing:
                    raise InputError(source, missing[0], "nothing", f"a `{event['event']}` event with "
                                     + ", ".join(f"`{k}`" for k in REQUIRED[event["event"]]), line=number_)
                events.append(event)
    except UnicodeDecodeError as exc:
        raise InputError(source, "<file>", f"a byte that is not UTF-8 at offset {exc.start}", ALLOWED) from None
    except OSError as exc:
        raise InputError(source, "<file>", exc.strerror, "a readable events file") from None
    return events


def interrupted(events: Sequence[Event]) -> list[str]:
    """A warning when the run that wrote the log was stopped (Ctrl-C, SIGTERM) before its end."""
    if events and events[-1]["event"] == "interrupted":
        last = events[-1]
        until = f" of {int(last['until']) / 1000:g}s" if isinstance(last.get("until"), int) else ""
        return [f"This run was interrupted at {_t(last)}{until}: the log stops there, and so do these answers."]
    return []


def number(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _t(event: Event) -> str:
    return f"t={int(event['t']) / 1000:.3f}s"


def _pct(value: object) -> str:
    n = number(value)
    return "-" if n is None else fmt_pct(n)


def _num(value: object, places: int | None = None) -> str:
    n = number(value)
    return "-" if n is None else fmt(n, places)


def explain_order(events: Sequence[Event], order_id: str, account: str | None = None) -> list[str]:
    """What became of order ``order_id``: an id is its sub-account's own, so where several
    accounts used it each gets its own answer, in the order they first used it (``account``:
    that one's only)."""
    by_account: dict[str, list[Event]] = {}
    for e in events:
        if e.get("order_id") == order_id and e["actor"].startswith("account:"):
            owner = e["actor"].split(":", 1)[1]
            if account is None or owner == account:
                by_account.setdefault(owner, []).append(e)
    if not by_account:
        return [f"No order {order_id}{f' of sub-account {account}' if account else ''} in this log."]
    lines = []
    for owner, mine in by_account.items():
        lines += _order_story(mine, order_id, owner)
    return lines


def _order_story(mine: list[Event], order_id: str, account: str) -> list[str]:
    lines = []
    for event in mine:
        kind = event["event"]
        what = f"{event.get('side')} {_num(event.get('quantity'))} {event.get('market')}" + (
            f" at {_num(event.get('price'))}" if event.get("price") not in (None, "None") else " at market")
        if kind == "order_rejected":
            lines.append(f"Order {order_id} ({what}) from sub-account {account} was refused at {_t(event)}: "
                         f"{event['code']}.")
            lines.extend(_why_refused(event))
        elif kind == "order_placed":
            lines.append(f"Order {order_id} ({what}) from sub-account {account} was accepted at {_t(event)}"
                         + (f"; IMR after it rests: {_pct(event['imr_after'])}." if event.get("imr_after") is not None
                            else " (it could only reduce risk: no margin check)."))
        elif kind == "fill":
            role = "maker" if str(event.get("maker")).lower() == "true" else "taker"
            lines.append(f"  {_t(event)} filled {_num(event['quantity'])} at {_num(event['price'])} as {role}, "
                         f"fee {_num(event['fee'])} {event.get('fee_asset', '')}; position now {_num(event.get('position'))}.")
        elif kind == "order_closed":
            reason = f" ({event['reason']})" if event.get("reason") not in (None, "None") else ""
            lines.append(f"  {_t(event)} it ended {event['status']}{reason} with {_num(event['executed'])} executed.")
    return lines


def _why_refused(event: Event) -> list[str]:
    code = event.get("code")
    if code == "INSUFFICIENT_MARGIN":
        lines = [
            f"  Checked on the marks the sub-account had heard, it would have taken IMR from "
            f"{_pct(event.get('imr_before'))} to {_pct(event.get('imr_after'))}: available equity "
            f"{_num(event.get('available_before'), 2)} -> {_num(event.get('available_after'), 2)} USDC, and orders "
            "that add risk must keep it at or above zero (IMR at most 100%)."
        ]
        if event.get("max_quantity") is not None:
            lines.append(f"  The largest {event.get('side')} that would have passed: {_num(event['max_quantity'])}.")
        if event.get("imf_source") is not None:
            lines.append(f"  Its initial margin fraction would have been {_num(event.get('imf_after'), 8)}, set by "
                         f"{IMF_SOURCES.get(str(event['imf_source']), event['imf_source'])}.")
        return lines
    if code == "INSUFFICIENT_FUNDS":
        return [f"  It needed {_num(event.get('needed'))} {event.get('asset')} and {_num(event.get('available'))} was "
                "available (autoBorrow would borrow the rest, autoLendRedeem would redeem a lend)."]
    return [f"  {event.get('message', '')}"]


END_STAGES = ("healthy", "closed", "bankruptcy")


@attrs.frozen
class RunEnd:
    """A finished run's end state, for the answers that judge it: when it ended, each
    sub-account's summary row (``Venue.summary``) and the settlement asset."""

    until_ms: int
    accounts: dict[str, dict[str, Any]]
    settle: str = "USDC"


def sample_row(sample: Event, liquidations: int) -> dict[str, Any]:
    """A logged health sample read back as the summary row ``account_status`` judges."""
    def amounts(key: str) -> dict[str, Decimal]:
        return {k: number(v) or ZERO for k, v in (sample.get(key) or {}).items()}

    return {"net_equity": number(sample.get("net_equity")) or ZERO, "mmr": number(sample.get("mmr")) or ZERO,
            "unsettled_equity": number(sample.get("unsettled_equity")) or ZERO, "positions": amounts("positions"),
            "borrows": amounts("borrows"), "liquidating": str(sample.get("liquidating")).lower() == "true",
            "liquidations": liquidations}


def step_from_event(event: Event) -> LiquidationStep:
    """A ``liquidation_step`` event read back as the history row it was written from, so the
    log's answers use the same words and rounding as ``run`` (``describe_step``)."""
    def num(key: str) -> Decimal | None:
        return number(event.get(key))

    return LiquidationStep(
        time_ms=int(event.get("at", event["t"])), stage=event["stage"], reason=event["reason"],
        mmr_before=num("mmr_before") or ZERO, mmr_after=num("mmr_after") or ZERO, market=event.get("market"),
        side=event.get("side"), quantity=num("quantity") or ZERO, price=num("price"), fee=num("fee") or ZERO,
        taker_fee=num("taker_fee") or ZERO, liquidation_fee=num("liquidation_fee") or ZERO, mark=num("mark"),
        planned_mark=num("planned_mark"), mmr_after_at_planned_mark=num("mmr_after_at_planned_mark"),
        position_after=num("position_after"))


def explain_account(events: Sequence[Event], account: str, end: RunEnd | None = None) -> list[str]:
    """A sub-account's refusals and liquidation steps in time order, with the estimate it was
    liquidated against, who absorbed its losses, and how it stood when the run ended (``end``)
    or, from a log alone, at its last health sample."""
    address = f"account:{account}"
    if not any(e["actor"] == address or e.get("account") == account for e in events):
        return [f"No sub-account {account} in this log."]
    timed: list[tuple[int, str]] = []  # (when it happened, line): steps are logged after their loop ends
    steps: list[LiquidationStep] = []
    last_health: Event | None = None
    for event in events:
        kind = event["event"]
        if event["actor"] == address and kind == "order_rejected":
            timed.append((event["t"], f"{_t(event)} order {event['order_id']} refused ({event['code']}): "
                                      f"{event.get('message', '')}"))
        elif event["actor"] == address and kind == "health":
            last_health = event
        elif event["actor"] == address and kind == "liquidating":
            timed.extend((event["t"], line) for line in _estimates(event))
        elif kind == "fund_flow" and event.get("account") == account and event.get("reason") == "covered a shortfall":
            timed.append((event["t"], f"{_t(event)} the liquidity fund absorbed its debt: it paid "
                          f"{_num(-(number(event['quantity']) or ZERO))} {event.get('asset')} to cover the shortfall "
                          f"(fund now {_num(event.get('fund'))} {event.get('asset')})."))
        elif kind == "lenders_compensated" and event.get("account") == account:
            timed.append((event["t"], f"{_t(event)} its {_num(event.get('debt'))} {event.get('asset')} borrow was "
                          f"written off; the liquidity fund paid the lenders ({event.get('detail', '')}) at "
                          f"{_num(event.get('price'))}."))
        elif kind == "liquidation_step" and event.get("account") == account:
            step = step_from_event(event)
            steps.append(step)
            timed.append((step.time_ms, describe_step(step)))
    lines = [line for _, line in sorted(timed, key=lambda pair: pair[0])]
    if not steps:
        lines.append(f"Sub-account {account} was never liquidated.")
    elif steps[-1].stage not in END_STAGES:
        lines.append(f"The run ended mid-liquidation: the last step was {steps[-1].stage} at "
                     f"t={steps[-1].time_ms / 1000:.3f}s and the liquidation had not finished.")
    mid = bool(steps) and steps[-1].stage not in END_STAGES  # said above, with the last step
    starts = sum(1 for s in steps if s.stage == "start")
    if end is not None and account in end.accounts:
        status = account_status(end.accounts[account], end.settle)
        if status and not (mid and status == MID_LIQUIDATION):
            lines.append(f"At the end of the run (t={end.until_ms / 1000:.3f}s): {status}.")
    elif last_health is not None:
        status = account_status(sample_row(last_health, starts), "USDC")
        if last_health.get("closing"):
            if status and not (mid and status == MID_LIQUIDATION):
                lines.append(f"At the end of the run ({_t(last_health)}): {status}.")
            elif not status and (last_health.get("positions") or last_health.get("borrows")):
                lines.append(f"At the end of the run ({_t(last_health)}) MMR was {_pct(last_health.get('mmr'))}: "
                             "nothing pending.")
        elif status and not (mid and status == MID_LIQUIDATION):
            lines.append(f"At its last health sample ({_t(last_health)}): {status}.")
        elif not status and (last_health.get("positions") or last_health.get("borrows")):
            lines.append(f"At its last health sample ({_t(last_health)}) MMR was {_pct(last_health.get('mmr'))}: "
                         "nothing pending then. The log does not record the run's end, and the marks may have moved "
                         f"since: `marginsim explain SCENARIO --account {account}` runs it and judges its end as "
                         "`run` does.")
    return lines


def _estimates(event: Event) -> list[str]:
    """The single-position estimate each position had when the liquidation started."""
    lines = []
    for symbol, e in sorted((event.get("estimates") or {}).items()):
        quantity = number(e.get("quantity")) or ZERO
        estimate = LiquidationPriceEstimate(number(e.get("price")), str(e.get("method")), str(e.get("reason")))
        lines.append(f"{_t(event)} {fmt(quantity)} {symbol} at mark {_num(e.get('mark'))}: its estimated liquidation "
                     f"price was {describe_estimate(estimate, quantity)}.")
    return lines


def overview(events: Iterable[Event]) -> list[str]:
    refusals, liquidated = [], {}
    for event in events:
        if event["event"] == "order_rejected":
            refusals.append(f"  {_t(event)} {event['actor'].split(':', 1)[1]}: order {event['order_id']} refused "
                            f"({event['code']})")
        elif event["event"] == "liquidation_step":
            liquidated.setdefault(event["account"], []).append(event["stage"])
    lines = ["Refused orders:" if refusals else "No order was refused."] + refusals
    if liquidated:
        lines.append("Liquidated sub-accounts:")
        for account, stages in liquidated.items():
            lines.append(f"  {account}: " + ", ".join(f"{stages.count(s)} {s}" for s in dict.fromkeys(stages)))
    else:
        lines.append("No sub-account was liquidated.")
    lines.append("Ask about one with --account ID or --order ID.")
    return lines
