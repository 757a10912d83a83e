"""Rule conformance, checked live from the run's events: does the venue follow its own rules?

The invariant observer (``actors/observer.py``) checks what must always hold of the state:
money is conserved, positions sum to zero, pools balance. This checker follows the event log one
event at a time and checks that what the venue *did* is what its rules say it should do:

* ``rule:liquidation-trigger``: a liquidation starts only at MMR >= 100% at the account's marks.
* ``rule:liquidation-end-target``: a loop on the book trades only while MMR is at or over
  ``end_mmr``, and no book step is taken once the case has ended.
* ``rule:liquidation-fraction``: one loop never sells more of a perp position than
  ``liquidation.loop_cap`` allows (``max_fraction_per_loop`` of it, at least one step).
* ``rule:funding-sums-to-zero`` and ``rule:funding-direction``: an interval's payments sum to
  zero, payers pay at least what they owe, and longs pay when the rate is positive; a rate has
  the sign of the premium when the mark stayed on one side of the index all interval.
* ``rule:interest-period``, ``rule:interest-accrual``, ``rule:lender-share``: a pool accrues once
  per ``interest_interval``, on the interval grid; each borrow is charged once, at the curve's rate
  for the pool's utilization, rounded up; lenders share ``1 - fee`` of what was paid, pro rata,
  rounded down; each account is credited once per accrual, the amounts the pool charged.
* ``rule:fee-rounding``: every book fill's trading and liquidation fees are the rate times the
  notional, rounded against the account (up, by less than one step).
* ``rule:order-flags``: a limit order never fills beyond its limit price, a post-only order never
  takes, a reduce-only fill never grows or flips the position, a fill-or-kill order ends filled
  in full or not at all.
* ``rule:funding-rate``: a rate lies between the interval's lowest and highest premium scaled
  to the interval (``premium x interval / 24h``), within the market's bounds.
* ``rule:reservation``: after each order or loan event, what an account holds locked is exactly
  what its open orders and its pending loans reserve.
* ``rule:rejection-changed-nothing``: a request refused on the account leaves its balances,
  lends, borrows, positions and the user's open orders as they were; one the book refuses leaves
  no order behind. (The state is read after the refusal's whole message, which may also cover a
  USDC shortfall: the fund's cover and the conversion orders it places are not the refusal's.)

The checker keeps its own record of what it needs (the pools' books, positions, the premium's
sign over each funding interval), so each event costs O(1) apart from the account-state checks,
which look at one account. The rules themselves are the ``exchange/`` functions the venue calls
(``liquidation.loop_cap``, the pool's rate curve, the profile's values); the checks above only add
what must hold whatever those functions compute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs

from exchange.decimals import HOURS_PER_YEAR, ONE, ZERO, fmt
from exchange.funding import DAY_MS
from exchange.lending import LendingPool
from exchange.liquidation import loop_cap
from exchange.orders import Origin
from exchange.profile import Profile

if TYPE_CHECKING:
    from exchange.subaccount import SubAccountMachine

Event = dict[str, Any]


@attrs.frozen
class RuleViolation:
    """A rule the run broke: its name (``rule:...``), the numbers, and the event that showed it."""

    name: str
    detail: str
    event: Event


_BOOK_ORIGINS = frozenset({"USER", "LIQUIDATION_AUTOCLOSE", "COLLATERAL_CONVERSION"})
_REFUSALS = frozenset({"withdrawal_refused", "loan_refused", "cancel_refused", "deposit_refused"})
_LOCK_EVENTS = frozenset({"order_placed", "order_closed", "order_rejected", "fill", "loan_refused", "lend", "repay",
                          "withdrawal_refused"})


class Conformance:
    """Feed it every event of a run, in log order; ``on_event`` returns the first rule an event
    shows broken, or None. ``accounts`` (optional) gives the sub-account machines by id, for the
    checks on an account's locks and on refusals; without it those two are skipped."""

    def __init__(self, profile: Profile, accounts: Mapping[str, SubAccountMachine] | None = None) -> None:
        self.profile = profile
        self.accounts = accounts
        self.settle = profile.settlement_asset
        liq = profile.liquidation
        self.end_mmr = liq.end_mmr
        self.fraction = liq.max_fraction_per_loop
        self.interval_ms = profile.interest_interval_ms
        # liquidation: open cases, the time of each account's last book row, per-loop sales
        self._cases: set[str] = set()
        self._last_book_t: dict[str, int] = {}
        self._loop: dict[str, dict[str, tuple[Decimal, Decimal]]] = {}  # account -> market -> (start size, sold)
        # account -> market -> the largest position (absolute) since its last liquidation row: a
        # loop plans on the position it sees, and the account's own reducing orders may fill
        # before the loop's (so the cap is judged on at least what the plan saw). At a row it
        # starts again from the larger of the market's position and the account's own (a fill on
        # its way has not reached the account, whose next loop plans on what it has booked).
        self._peak: dict[str, dict[str, Decimal]] = {}
        self._held: dict[str, dict[str, Decimal]] = {}  # account -> market -> position, in the markets' order
        self._booked: dict[str, dict[str, Decimal]] = {}  # account -> market -> position, as the account booked it
        # funding: index and mark prices, the premium's range over the running interval, last rates
        self._prices: dict[str, Decimal] = {}
        self._premium_range: dict[str, tuple[Decimal, Decimal]] = {}
        self._rates: dict[str, Decimal] = {}
        # pools: each asset's books as the events tell them, and interest notices on their way
        self._pools = {asset: LendingPool(spec) for asset, spec in profile.assets.items()}
        self._last_accrual: dict[str, int] = {}
        self._notices: dict[tuple[str, str], deque[tuple[Decimal, Decimal]]] = {}
        # accounts: the state after each account's last event, for refusals
        self._snapshots: dict[str, tuple[Any, ...]] = {}
        self._placed: set[tuple[str, Any]] = set()  # (account, order id) accepted, not ended
        self._orders: dict[tuple[str, str], Event] = {}  # (account, order id) -> its order_placed event
        self._handlers: dict[str, Callable[[Event], str | tuple[str, str] | None]] = {
            "liquidation_step": self._liquidation_step,
            "order_placed": self._order_placed,
            "order_closed": self._order_closed,
            "fill": self._fill,
            "trade": self._trade,
            "price": self._price,
            "funding_rate": self._funding_rate,
            "funding": self._funding,
            "pool_lend": self._pool_flow,
            "pool_redeem": self._pool_flow,
            "pool_borrow": self._pool_flow,
            "pool_repay": self._pool_flow,
            "write_off": self._write_off,
            "interest_accrued": self._interest_accrued,
            "interest": self._interest,
            "entry_fee_waived": self._entry_fee_waived,
        }

    # -- dispatch ---------------------------------------------------------------------------
    def on_event(self, event: Event) -> RuleViolation | None:
        """Check one event; the first broken rule, with its numbers, or None."""
        kind = event["event"]
        handler = self._handlers.get(kind)
        found = handler(event) if handler is not None else None
        if found is None and self.accounts is not None and event["actor"].startswith("account:"):
            found = self._account_event(kind, event)
        if found is None:
            return None
        name, detail = found
        return RuleViolation(name, detail, event)

    # -- liquidation ------------------------------------------------------------------------
    def _liquidation_step(self, event: Event) -> tuple[str, str] | None:
        account, stage, t = event["account"], event["stage"], event["t"]
        self._loop.pop(account, None)  # the rows close the loop whose fills came before them
        booked = self._booked.get(account, {})
        self._peak[account] = {m: max(abs(p), abs(booked.get(m, ZERO))) for m, p in self._held.get(account, {}).items()}
        mmr = event["mmr_before"]
        if stage == "start":
            self._cases.add(account)
            self._last_book_t.pop(account, None)
            if mmr < ONE:
                return "rule:liquidation-trigger", f"{account} was put into liquidation at MMR {fmt(mmr, 6)} (< 100%)"
        elif stage in ("book", "conversion"):  # a loop's sales: perps, and spot bought back or sold
            if account not in self._cases:
                return ("rule:liquidation-end-target",
                        f"{account} was sold down on the book at t={t} ms with no liquidation under way")
            # The loop's rows are logged together when it ends; only its first says at what MMR it
            # acted (each later row starts where the one before left the account).
            first_of_loop = self._last_book_t.get(account) != t
            self._last_book_t[account] = t
            if first_of_loop and mmr < self.end_mmr:
                return ("rule:liquidation-end-target",
                        f"{account} was sold down on the book at MMR {fmt(mmr, 6)}, under the end target "
                        f"{fmt(self.end_mmr)}")
        elif stage in ("healthy", "closed", "bankruptcy"):
            self._cases.discard(account)
            if stage == "healthy" and mmr >= self.end_mmr:
                return ("rule:liquidation-end-target",
                        f"{account}'s liquidation ended as healthy at MMR {fmt(mmr, 6)}, not under {fmt(self.end_mmr)}")
        return None

    def _fill(self, event: Event) -> tuple[str, str] | None:
        account = event["actor"].split(":", 1)[1]
        market = self.profile.markets[event["market"]]
        origin = event["origin"]
        if event["position"] is not None:
            self._booked.setdefault(account, {})[market.symbol] = event["position"]
        found = self._fee_rounding(event, market, origin) if origin in _BOOK_ORIGINS else None
        order = self._orders.get((account, event["order_id"]))
        if found is None and order is not None:
            found = _flag_problem(order, event)
        return found

    def _trade(self, event: Event) -> tuple[str, str] | None:
        """Perp trades, in the market's order, with each side's position right after."""
        if event["taker_position"] is None:
            return None
        market = self.profile.markets[event["actor"].split(":", 1)[1]]
        quantity, price = event["quantity"], event["price"]
        taker_delta = quantity if event["taker_side"] == "Bid" else -quantity
        for account, order_id, after, delta in ((event["maker"], event["maker_order"], event["maker_position"],
                                                 -taker_delta),
                                                (event["taker"], event["taker_order"], event["taker_position"],
                                                 taker_delta)):
            before = after - delta
            self._held.setdefault(account, {})[market.symbol] = after
            peaks = self._peak.setdefault(account, {})
            peaks[market.symbol] = max(peaks.get(market.symbol, ZERO), abs(before), abs(after))
            order = self._orders.get((account, order_id))
            if order is not None and order["reduce_only"] and (abs(after) > abs(before) or after * before < 0):
                return ("rule:order-flags", f"reduce-only order {order_id} of {account} took its {market.symbol} "
                                            f"position from {fmt(before)} to {fmt(after)}")
        account = event["taker"]
        if event["taker_origin"] != "LIQUIDATION_AUTOCLOSE":
            return None
        loops = self._loop.setdefault(account, {})
        start, sold = loops.get(market.symbol, (self._peak[account][market.symbol], ZERO))
        sold += quantity
        loops[market.symbol] = (start, sold)
        cap = loop_cap(start, self.fraction, market.step_size)
        if sold > cap:
            return ("rule:liquidation-fraction",
                    f"{account} sold {fmt(sold)} of a {fmt(start)} {market.symbol} position in one loop at {fmt(price)}; "
                    f"max_fraction_per_loop {fmt(self.fraction)} allows {fmt(cap)}")
        return None

    def _order_placed(self, event: Event) -> None:
        self._orders[(event["actor"].split(":", 1)[1], event["order_id"])] = event
        return None

    def _order_closed(self, event: Event) -> tuple[str, str] | None:
        account = event["actor"].split(":", 1)[1]
        order = self._orders.pop((account, event["order_id"]), None)
        # a reduce-only FOK is cut to the position first, and is fill-or-kill for what is left
        if order is None or order["time_in_force"] != "FOK" or order["quantity"] is None or order["reduce_only"]:
            return None
        if event["executed"] not in (ZERO, order["quantity"]):
            return ("rule:order-flags", f"fill-or-kill order {event['order_id']} of {account} ended {event['status']} "
                                        f"with {fmt(event['executed'])} of {fmt(order['quantity'])} executed")
        return None

    def _fee_rounding(self, event: Event, market: Any, origin: str) -> tuple[str, str] | None:
        rate = market.maker_fee if event["maker"] else market.taker_fee
        quote_step = self.profile.assets[market.quote].step
        notional = event["price"] * event["quantity"]
        if market.is_perp or event["side"] == "Ask":
            base, step = (notional if market.is_perp else event["quote_quantity"]), quote_step
        else:
            base, step = event["quantity"], self.profile.assets[market.base].step
        problems = []
        for what, charged, exact in (("fee", event["fee"], base * rate),
                                     ("liquidation fee", event["liquidation_fee"],
                                      notional * self.profile.liquidation.fee_rate
                                      if origin == "LIQUIDATION_AUTOCLOSE" else ZERO)):
            if not exact <= charged < exact + step:
                problems.append(f"{what} {fmt(charged)} on an exact {fmt(exact)}")
        if problems:
            return ("rule:fee-rounding",
                    f"order {event['order_id']} ({event['side']} {fmt(event['quantity'])} {market.symbol} at "
                    f"{fmt(event['price'])}): " + "; ".join(problems) +
                    f" (must be rounded up, by less than one step of {fmt(step)})")
        return None

    # -- funding ----------------------------------------------------------------------------
    def _price(self, event: Event) -> None:
        symbol = event["symbol"]
        self._prices[symbol] = event["price"]
        for perp in self._perps_of(symbol):
            mark, index = self._prices.get(perp.symbol), self._prices.get(perp.base)
            if mark is None or index is None:
                continue
            premium = (mark - index) / index
            low, high = self._premium_range.get(perp.symbol, (premium, premium))
            self._premium_range[perp.symbol] = (min(low, premium), max(high, premium))
        return None

    def _perps_of(self, symbol: str) -> list[Any]:
        return [m for m in self.profile.perp_markets() if symbol in (m.symbol, m.base)]

    def _funding_rate(self, event: Event) -> tuple[str, str] | None:
        symbol = event["actor"].split(":", 1)[1]
        rate = event["rate"]
        self._rates[symbol] = rate
        low, high = self._premium_range.pop(symbol, (ZERO, ZERO))
        market = self.profile.markets[symbol]
        mark, index = self._prices.get(symbol), self._prices.get(market.base)
        if mark is not None and index is not None:
            self._premium_range[symbol] = ((mark - index) / index,) * 2
        if (low >= 0 and rate < 0) or (high <= 0 and rate > 0):
            side = "at or above" if low >= 0 else "at or below"
            return ("rule:funding-direction",
                    f"{symbol}'s mark stayed {side} its index all interval (premium {fmt(low, 8)} to {fmt(high, 8)}), "
                    f"yet the rate is {fmt(rate)}")
        scale = Decimal(market.funding_interval_ms) / DAY_MS
        lower, upper = market.funding_lower_bound_bps / 10_000, market.funding_upper_bound_bps / 10_000
        least, most = (min(max(p * scale, lower), upper) for p in (low, high))
        slack = max(abs(least), abs(most)) * Decimal("1e-20")
        if not least - slack <= rate <= most + slack:
            return ("rule:funding-rate",
                    f"{symbol}'s rate {fmt(rate)} is outside {fmt(least)}..{fmt(most)}: the interval's premium ran "
                    f"{fmt(low, 8)} to {fmt(high, 8)}, times {fmt(scale, 8)} of a day, within the bounds "
                    f"{fmt(lower)}..{fmt(upper)}")
        return None

    def _funding(self, event: Event) -> tuple[str, str] | None:
        symbol = event["actor"].split(":", 1)[1]
        rate, mark = event["rate"], event["mark"]
        if self._rates.get(symbol) != rate:
            return ("rule:funding-direction",
                    f"{symbol} paid funding at rate {fmt(rate)}; the interval closed at {fmt(self._rates.get(symbol))}")
        total = ZERO
        for account, (position, amount) in event["payments"].items():
            total += amount
            owed = rate * position * mark
            if amount * owed > 0 or (owed > 0 and -amount < owed):
                who = "long" if position > 0 else "short"
                return ("rule:funding-direction",
                        f"{account} ({who} {fmt(position)} {symbol}) got {fmt(amount)} at rate {fmt(rate)} and mark "
                        f"{fmt(mark)}: it owes {fmt(owed)} (positive: pays)")
        if total:
            return "rule:funding-sums-to-zero", f"{symbol}'s funding payments at rate {fmt(rate)} sum to {fmt(total)}"
        return None

    # -- interest ---------------------------------------------------------------------------
    def _pool_flow(self, event: Event) -> None:
        pool = self._pools[event["actor"].split(":", 1)[1]]
        account, quantity = event["account"], event["quantity"]
        action = event["event"][5:]
        if action in ("lend", "redeem"):
            book, sign = pool.lenders, (ONE if action == "lend" else -ONE)
            pool.lent += sign * quantity
        else:
            fee = event["entry_fee"]
            book, sign = pool.borrowers, (ONE if action == "borrow" else -ONE)
            quantity += fee
            pool.borrowed += sign * quantity
            pool.undistributed += fee
        _add(book, account, sign * quantity)
        return None

    def _write_off(self, event: Event) -> None:
        pool = self._pools[event["actor"].split(":", 1)[1]]
        pool.borrowed -= pool.borrowers.pop(event["account"], ZERO)
        for lender, quantity in event["shares"].items():
            _add(pool.lenders, lender, -quantity)
            pool.lent -= quantity
        return None

    def _interest_accrued(self, event: Event) -> tuple[str, str] | None:
        asset = event["actor"].split(":", 1)[1]
        pool, t = self._pools[asset], event["t"]
        step = pool.step
        last = self._last_accrual.get(asset)
        self._last_accrual[asset] = t
        if t % self.interval_ms or last == t:
            return ("rule:interest-period",
                    f"the {asset} pool accrued interest at t={t} ms (previous accrual at {last} ms); it accrues once "
                    f"every {self.interval_ms} ms, on the interval")
        rate, utilization = event["borrow_rate"], event["utilization"]
        if utilization != pool.utilization or rate != pool.borrow_rate(utilization):
            return ("rule:interest-accrual",
                    f"the {asset} pool charged {fmt(rate)} a year at utilization {fmt(utilization)}; its books give "
                    f"utilization {fmt(pool.utilization)} and the curve {fmt(pool.borrow_rate(pool.utilization))}")
        charged: dict[str, Decimal] = event["borrow_interest"]
        for account in sorted(set(pool.borrowers) | set(charged)):
            exact = pool.borrowers.get(account, ZERO) * rate / HOURS_PER_YEAR
            got = charged.get(account, ZERO)
            if not exact <= got < exact + step:
                return ("rule:interest-accrual",
                        f"{account} borrowed {fmt(pool.borrowers.get(account, ZERO))} {asset} at {fmt(rate)} a year "
                        f"and was charged {fmt(got)} for the period; exactly {fmt(exact)}, rounded up")
        paid = pool.undistributed + sum(charged.values(), ZERO)
        to_lenders = paid * (1 - pool.params.fee)
        credited: dict[str, Decimal] = event["lend_interest"]
        for account in sorted(set(pool.lenders) | set(credited)):
            exact = to_lenders * pool.lenders.get(account, ZERO) / pool.lent if pool.lent else ZERO
            got = credited.get(account, ZERO)
            if not exact - step < got <= exact:
                return ("rule:lender-share",
                        f"{account} lent {fmt(pool.lenders.get(account, ZERO))} of {fmt(pool.lent)} {asset}: its share "
                        f"of the {fmt(to_lenders)} due to lenders is {fmt(exact)}, rounded down; it got {fmt(got)}")
        total = sum(credited.values(), ZERO)
        if event["paid"] != paid or event["credited"] != total or event["exchange_fee"] != paid - total:
            return ("rule:lender-share",
                    f"the {asset} pool reports {fmt(event['paid'])} paid, {fmt(event['credited'])} credited, "
                    f"{fmt(event['exchange_fee'])} kept; its charges give {fmt(paid)}, {fmt(total)}, {fmt(paid - total)}")
        for account, quantity in charged.items():
            _add(pool.borrowers, account, quantity)
        for account, quantity in credited.items():
            _add(pool.lenders, account, quantity)
        pool.borrowed += sum(charged.values(), ZERO)
        pool.lent += total
        pool.undistributed = ZERO
        for account in sorted(set(charged) | set(credited)):
            self._notices.setdefault((account, asset), deque()).append(
                (charged.get(account, ZERO), credited.get(account, ZERO)))
        return None

    def _interest(self, event: Event) -> tuple[str, str] | None:
        account, asset = event["actor"].split(":", 1)[1], event["asset"]
        waiting = self._notices.get((account, asset))
        got = (event["borrow_interest"], event["lend_interest"])
        if not waiting:
            return ("rule:interest-accrual",
                    f"{account} was charged {fmt(got[0])} and credited {fmt(got[1])} {asset} interest with no accrual "
                    "due to it (interest accrues once per period per borrow)")
        if got not in waiting:  # notices may be reordered on their way: any one due matches
            return ("rule:interest-accrual",
                    f"{account} booked {fmt(got[0])} / {fmt(got[1])} {asset} interest; the pool charged and credited "
                    f"{fmt(waiting[0][0])} / {fmt(waiting[0][1])}")
        waiting.remove(got)
        return None

    def _entry_fee_waived(self, event: Event) -> tuple[str, str] | None:
        """A borrow that served nothing has its entry fee taken back; the account is told as a
        negative interest charge (it changes the debt, not the cash)."""
        asset, account, fee = event["actor"].split(":", 1)[1], event["account"], event["quantity"]
        pool = self._pools[asset]
        _add(pool.borrowers, account, -fee)
        pool.borrowed -= fee
        pool.undistributed -= fee
        self._notices.setdefault((account, asset), deque()).append((-fee, ZERO))
        return None

    # -- the account's own state ------------------------------------------------------------
    def _account_event(self, kind: str, event: Event) -> tuple[str, str] | None:
        assert self.accounts is not None
        account_id = event["actor"].split(":", 1)[1]
        machine = self.accounts[account_id]
        before = self._snapshots.get(account_id)
        now = _snapshot(machine)
        self._snapshots[account_id] = now
        key = (account_id, event.get("order_id"))
        if kind == "order_placed":
            self._placed.add(key)
        elif kind == "order_rejected" and key in self._placed and not event.get("already_open"):
            # (A second order refused for reusing an open id leaves the first one open.)
            self._placed.discard(key)
            if event["order_id"] in machine.account.open_orders:
                return ("rule:reservation",
                        f"{account_id}'s order {event['order_id']} was refused by the book ({event['code']}) and is "
                        "still open on the account, its reservation kept")
        elif (kind in _REFUSALS or kind == "order_rejected") and before is not None and before != now:
            return ("rule:rejection-changed-nothing",
                    f"{account_id}'s {kind.replace('_', ' ')} ({event.get('code')}) changed the account: "
                    f"{_difference(before, now)}")
        if kind == "order_closed":
            self._placed.discard(key)
        if kind in _LOCK_EVENTS:
            return _reservation_problem(account_id, machine)
        return None


def _flag_problem(order: Event, fill: Event) -> tuple[str, str] | None:
    """A fill that its order's limit price or post-only flag forbids."""
    price, limit = fill["price"], order["price"]
    if limit is not None and (price > limit if fill["side"] == "Bid" else price < limit):
        return ("rule:order-flags", f"order {fill['order_id']} ({fill['side']} limit {fmt(limit)}) filled at {fmt(price)}")
    if order["post_only"] and not fill["maker"]:
        return "rule:order-flags", f"post-only order {fill['order_id']} took liquidity at {fmt(price)}"
    return None


def _add(book: dict[str, Decimal], account: str, quantity: Decimal) -> None:
    value = book.get(account, ZERO) + quantity
    if value:
        book[account] = value
    else:
        book.pop(account, None)


_FIELDS = ("balances", "lends", "borrows", "positions", "open orders")


def _snapshot(machine: SubAccountMachine) -> tuple[Any, ...]:
    """What a refusal must not change. Balances are totals (locks are the reservation check's
    business: an auto-repay the pool refuses releases its lock with no event), the settlement
    asset's with the debt to the fund (a cover moves one into the other), and open orders are the
    user's (a cover may place conversion orders in the same message)."""
    account = machine.account
    settle = machine.profile.settlement_asset
    totals = {a: b.available + b.locked for a, b in account.balances.items()}
    totals[settle] = totals.get(settle, ZERO) + account.unsettled_equity
    return (
        tuple((a, total) for a, total in totals.items() if total),
        tuple(account.lends.items()),
        tuple(account.borrows.items()),
        tuple((s, p.quantity, p.net_cost) for s, p in account.positions.items()),
        tuple(oid for oid, entry in account.open_orders.items() if entry.order.origin is Origin.USER),
    )


def _difference(before: tuple[Any, ...], after: tuple[Any, ...]) -> str:
    """What changed, readably: ``balances: USDC 1000 -> 999``."""
    parts = []
    for name, was, now in zip(_FIELDS, before, after, strict=True):
        if was == now:
            continue
        if isinstance(was, tuple) and name != "open orders":
            old = {row[0]: " ".join(fmt(v) for v in row[1:]) for row in was}
            new = {row[0]: " ".join(fmt(v) for v in row[1:]) for row in now}
            changes = [f"{key} {old.get(key, '-')} -> {new.get(key, '-')}" for key in dict.fromkeys([*old, *new])
                       if old.get(key) != new.get(key)]
            parts.append(f"{name}: " + ", ".join(changes))
        elif name == "open orders":
            parts.append(f"open orders: {', '.join(was) or 'none'} -> {', '.join(now) or 'none'}")
        else:
            parts.append(f"{name}: {fmt(was)} -> {fmt(now)}")
    return "; ".join(parts)


def _reservation_problem(account_id: str, machine: SubAccountMachine) -> tuple[str, str] | None:
    """What an account holds locked must be what its open orders and pending loans reserve."""
    reserved: dict[str, Decimal] = {}
    for entry in machine.account.open_orders.values():
        if entry.lock_asset is not None and entry.lock_left:
            reserved[entry.lock_asset] = reserved.get(entry.lock_asset, ZERO) + entry.lock_left
    for pending in machine.awaiting.values():
        if pending.locked is not None:
            asset, quantity = pending.locked
            reserved[asset] = reserved.get(asset, ZERO) + quantity
    for asset, balance in machine.account.balances.items():
        if balance.locked != reserved.get(asset, ZERO):
            return ("rule:reservation",
                    f"{account_id} holds {fmt(balance.locked)} {asset} locked; its {len(machine.account.open_orders)} "
                    f"open order(s) and pending loans reserve {fmt(reserved.get(asset, ZERO))}")
    return None
