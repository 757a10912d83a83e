"""The invariant observer: checks the whole system while the run goes, between messages.

It is not an actor (it sends nothing); it reads the actors' state and everything still on the
wire, after a handled message, every ``every`` events (0: only at the end). Its cost follows
what changed, not what exists: each check looks at the sub-accounts that handled a message or
logged an event since the last one, those with value on its way to them, those whose record a
market or pool changed, and a few more in turn (``SWEEP``, so a change no message explains is
found on any of them); conservation adds their holdings to a running total of everyone's. The
check at the end of a run looks at every sub-account. Checked:

* **conservation**: every asset's physical total (balances, pool cash, fee pots, the fund, and
  the value carried by messages in flight) equals what was deposited minus what was withdrawn;
* **positions**: each perp market's positions sum to zero, and each account's position plus
  the fills on their way to it equals what the market holds for it;
* **pools**: each pool's books balance, borrows never exceed what was lent, and each account's
  lends and borrows (plus what is on its way) match the pool's records;
* **no negative balance** without a borrow of that asset or a USDC cover under way;
* **liquidation is timely**: an account at MMR >= 100% on its own marks is liquidating within
  ``grace_ms`` (default: two liquidation loops plus the slowest link);
* **the venue's rules**, event by event (``exchange/conformance.py``: ``rule:<name>``), among
  them that no liquidation starts below MMR 100% and no loop sells on the book under the end
  target (the account's own MMR, not the liquidator's last report);
* **the pre-trade check is honest**: a perp order's logged IMR after acceptance is the account's
  true IMR once it rests (checked right after the message, whatever ``every`` is);
* **funding is paid on held positions**: each payment matches the position the market holds;
* **no silent contamination**: an account's holdings change only with an event of its own.

During fault windows (``faults_until_ms``) an account may be unhealthy and not yet liquidated:
the timeliness clock starts when the faults end.

A violation stops the run with the invariant, the numbers, the event that broke it and the seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from actors.clock import now_ms
from exchange.conformance import Conformance
from exchange.decimals import ZERO, fmt
from exchange.invariants import conservation_violations, holdings_by_asset
from exchange.liquidation import needs_liquidation
from exchange.margin import totals
from exchange.protocol import (
    AssetTransfer,
    BackstopDelivery,
    BorrowWrittenOff,
    CollateralPayment,
    CollateralSale,
    FillNotice,
    FundFlow,
    FundingNotice,
    InterestNotice,
    LendWrittenOff,
    PoolReply,
    account_address,
)

if TYPE_CHECKING:
    from actors.system import System


# Messages that carry value (``in_flight``) or change an account's lends and borrows: the scan
# of what is on the wire looks at the class once instead of probing every message.
_CARRIERS = frozenset({FillNotice, FundingNotice, PoolReply, AssetTransfer, FundFlow, BackstopDelivery, CollateralSale,
                       CollateralPayment})
_CLAIMS = frozenset({PoolReply, InterestNotice, LendWrittenOff, BorrowWrittenOff})


class InvariantViolation(Exception):
    def __init__(self, invariant: str, detail: str, event: dict[str, Any] | None, seed: int, time_ms: int) -> None:
        self.invariant = invariant
        self.detail = detail
        self.event = event
        self.seed = seed
        self.time_ms = time_ms
        super().__init__(
            f"invariant '{invariant}' broken at t={time_ms / 1000:.3f}s (seed {seed}): {detail}\n"
            f"  last event: {event}"
        )


SWEEP = 16  # sub-accounts looked at in turn by every check, whatever they did


class Observer:
    def __init__(self, system: System, every: int, grace_ms: int, faults_until_ms: int = 0) -> None:
        self.system = system
        self.every = every
        self.grace_ms = grace_ms
        self.faults_until_ms = faults_until_ms
        self.external: dict[str, Decimal] = {}
        self.checks = 0
        self.looked = 0  # sub-accounts looked at, over all checks
        self._next_check = every
        self._snapshots: dict[str, Any] = {}
        self._touched: dict[str, None] = {}  # addresses that logged an event since the last check
        self._handled: dict[str, None] = {}  # addresses that handled a message since the last check
        self._address: dict[str, str] = {}  # account address -> id (the venue's accounts, read at the first check)
        self._ids: list[str] = []
        self._held: dict[str, dict[str, Decimal]] = {}  # account -> its physical holdings when last looked at
        self._held_total: dict[str, Decimal] = {}  # the sum of ``_held``
        self._unhealthy: dict[str, None] = {}  # accounts whose own reports found them unhealthy
        self._seen_books: dict[str, dict[str, Decimal]] = {}  # perp -> positions when last looked at
        self._seen_pools: dict[str, tuple[dict[str, Decimal], dict[str, Decimal]]] = {}  # asset -> lenders, borrowers
        self._turn = 0  # where the sweep goes on
        self._problem: tuple[str, str] | None = None
        self._timed_at = -1
        # account -> (IMR the pre-trade check logged, its event); the latest of a message wins,
        # since each order is checked with the ones before it already resting.
        self._claims: dict[str, tuple[Decimal, dict[str, Any]]] = {}
        self.conformance = Conformance(system.profile, system.accounts)  # the venue's rules, event by event

    # -- events -----------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any]) -> None:
        """Follow money entering and leaving the system, and who changed."""
        kind = event["event"]
        actor = event["actor"]
        self._touched[actor] = None
        broken = self.conformance.on_event(event)
        if broken is not None and self._problem is None:
            self._problem = (broken.name, broken.detail)
        if kind == "deposit":
            self._external(event["asset"], event["quantity"])
        elif kind == "withdrawal":
            self._external(event["asset"], -event["quantity"])
        elif kind == "order_placed" and event["imr_after"] is not None and event["market"].endswith("_PERP"):
            self._claims[actor.split(":", 1)[1]] = (event["imr_after"], event)
        elif kind == "funding":
            market = self.system.markets[actor.split(":", 1)[1]]
            for account, (held, _) in event["payments"].items():
                if market.book.positions.get(account) != held or held is None:
                    self._problem = (
                        "funding is paid on held positions",
                        f"{account} was paid funding on {market.market.symbol} for a position of {held}; the market "
                        f"holds {market.book.positions.get(account)}",
                    )

    def _external(self, asset: str, quantity: Decimal) -> None:
        self.external[asset] = self.external.get(asset, ZERO) + quantity

    def after_message(self, address: str) -> None:
        self._handled[address] = None
        if self._claims:
            self._check_claims()
        if self._problem is not None:
            self._fail(*self._problem)
        if self.every and self.system.log.count >= self._next_check:
            self._next_check = self.system.log.count + self.every
            self.check()

    # -- the checks -------------------------------------------------------------------------
    def check(self, everything: bool = False) -> None:
        """Look at what changed since the last check (``everything``: at every sub-account)."""
        self.checks += 1
        for invariant, problems in self._violations(everything):
            if problems:
                self._fail(invariant, problems[0])
        self._touched.clear()
        self._handled.clear()

    def _check_claims(self) -> None:
        """Each accepted perp order's IMR, as the pre-trade check logged it, is the truth."""
        claims, self._claims = self._claims, {}
        for account_id, (claimed, event) in claims.items():
            true = totals(self.system.accounts[account_id].account).imr
            if true.is_infinite() != claimed.is_infinite() or (
                not true.is_infinite() and abs(true - claimed) > max(abs(true), Decimal(1)) * Decimal("1e-20")
            ):
                self.system.log.last = event
                self._fail("the pre-trade check is honest",
                           f"order {event['order_id']} of {account_id} was accepted with IMR {fmt(claimed, 6)}; with it "
                           f"resting the account's IMR is {fmt(true, 6)}")

    def _fail(self, invariant: str, detail: str) -> None:
        raise InvariantViolation(invariant, detail, self.system.log.last, self.system.seed, now_ms())

    def _violations(self, everything: bool) -> Iterable[tuple[str, list[str]]]:
        system = self.system
        settle = system.profile.settlement_asset
        asset_flight: dict[str, Decimal] = {}
        contract_flight: dict[tuple[str, str], Decimal] = {}
        claim_flight: dict[tuple[str, str, str], Decimal] = {}  # (account, "lends"/"borrows", asset)
        due: dict[str, None] = {}  # the accounts to look at, in a fixed order
        for _, recipient, message in system.network.in_flight():
            kind = type(message)
            if kind in _CARRIERS:
                for symbol, quantity in message.in_flight(settle).items():
                    if symbol in system.profile.assets:
                        asset_flight[symbol] = asset_flight.get(symbol, ZERO) + quantity
                    else:
                        key = (recipient, symbol)
                        contract_flight[key] = contract_flight.get(key, ZERO) + quantity
            if kind in _CLAIMS:
                for key, quantity in _claims(recipient, message):
                    claim_flight[key] = claim_flight.get(key, ZERO) + quantity
        accounts = system.accounts
        if len(self._ids) != len(accounts):
            self._ids = list(accounts)
            self._address = {account_address(a): a for a in accounts}
        if everything:
            due = dict.fromkeys(accounts)
        else:
            for address in (*self._handled, *self._touched, *(r for r, _ in contract_flight),
                            *(r for r, _, _ in claim_flight)):
                account_id = self._address.get(address)
                if account_id is not None:
                    due[account_id] = None
            due.update(dict.fromkeys(self._records_changed()))
            ids = self._ids
            for i in range(min(SWEEP, len(ids))):
                due[ids[(self._turn + i) % len(ids)]] = None
            self._turn = (self._turn + SWEEP) % max(len(ids), 1)
        for account_id in due:
            self._look_at(account_id)
        holdings = dict(self._held_total)
        venue = holdings_by_asset((), (m.book for m in system.markets.values()), (p.pool for p in system.pools.values()),
                                  system.liquidator.fund, settle)
        for asset, quantity in (*venue.items(), *asset_flight.items()):
            holdings[asset] = holdings.get(asset, ZERO) + quantity
        yield "conservation", conservation_violations(holdings, self.external)
        yield "positions", self._positions(due, contract_flight)
        yield "pools", self._pools(due, claim_flight)
        yield "no negative balance", self._negatives(due)
        yield "liquidation is timely", self._timeliness()
        yield "no silent contamination", self._contamination(due)

    def _records_changed(self) -> Iterable[str]:
        """Accounts whose position on a book, or lend or borrow in a pool, changed since the
        last check: only markets and pools that handled a message are read."""
        system = self.system
        for symbol, market in system.markets.items():
            if market.market.is_perp and (market.address in self._handled or symbol not in self._seen_books):
                now, before = market.book.positions, self._seen_books.get(symbol, {})
                yield from (a for a in dict.fromkeys([*now, *before]) if now.get(a) != before.get(a))
                self._seen_books[symbol] = dict(now)
        for asset, actor in system.pools.items():
            if actor.address in self._handled or asset not in self._seen_pools:
                pool, seen = actor.pool, self._seen_pools.get(asset, ({}, {}))
                for now, before in ((pool.lenders, seen[0]), (pool.borrowers, seen[1])):
                    yield from (a for a in dict.fromkeys([*now, *before]) if now.get(a) != before.get(a))
                self._seen_pools[asset] = (dict(pool.lenders), dict(pool.borrowers))

    def _look_at(self, account_id: str) -> None:
        """Bring the account's share of the running totals, and its health, up to date."""
        self.looked += 1
        actor = self.system.accounts[account_id]
        held = holdings_by_asset((actor.account,), (), (), {}, self.system.profile.settlement_asset)
        total = self._held_total
        for asset, quantity in self._held.get(account_id, {}).items():
            total[asset] -= quantity
        for asset, quantity in held.items():
            total[asset] = total.get(asset, ZERO) + quantity
        self._held[account_id] = held
        if actor.unhealthy_since_ms is not None and not actor.account.liquidating:
            self._unhealthy[account_id] = None
        else:
            self._unhealthy.pop(account_id, None)

    def _positions(self, due: dict[str, None], flight: dict[tuple[str, str], Decimal]) -> list[str]:
        problems = []
        accounts = self.system.accounts
        for symbol, market in self.system.markets.items():
            if not market.market.is_perp:
                continue
            book = market.book.positions
            if market.address in self._handled or symbol not in self._seen_books:
                net = sum(book.values(), ZERO)
                if net:
                    problems.append(f"{symbol}: positions sum to {fmt(net)}, not zero")
            for account_id in due:
                pos = accounts[account_id].account.positions.get(symbol)
                held = book.get(account_id)
                if pos is None and held is None and not flight:
                    continue
                mine = (pos.quantity if pos is not None else ZERO) + flight.get((account_address(account_id), symbol), ZERO)
                if mine != (held or ZERO):
                    problems.append(f"{symbol}: the market holds {account_id} at {fmt(book.get(account_id, ZERO))}, "
                                    f"the account (with fills on the way) at {fmt(mine)}")
        return problems

    def _pools(self, due: dict[str, None], flight: dict[tuple[str, str, str], Decimal]) -> list[str]:
        problems = []
        accounts = self.system.accounts
        for asset, actor in self.system.pools.items():
            pool = actor.pool
            expected = pool.lent + pool.fee_income + pool.undistributed - pool.borrowed
            if pool.cash != expected:
                problems.append(f"{asset} pool: cash {fmt(pool.cash)} != lent + fees - borrowed {fmt(expected)}")
            if pool.cash < 0:
                problems.append(f"{asset} pool: borrows exceed the lent supply (cash {fmt(pool.cash)})")
            for side, records in (("lends", pool.lenders), ("borrows", pool.borrowers)):
                for account_id in due:
                    mine = getattr(accounts[account_id].account, side).get(asset)
                    recorded = records.get(account_id)
                    if mine is None and recorded is None and not flight:
                        continue
                    mine = (mine or ZERO) + flight.get((account_address(account_id), side, asset), ZERO)
                    if mine != (recorded or ZERO):
                        problems.append(f"{asset} pool: {account_id} {side} {fmt(recorded or ZERO)} in the "
                                        f"pool, {fmt(mine)} on the account (with what is on its way)")
        return problems

    def _negatives(self, due: dict[str, None]) -> list[str]:
        problems = []
        settle = self.system.profile.settlement_asset
        for account_id in due:
            actor = self.system.accounts[account_id]
            account = actor.account
            for asset, bal in account.balances.items():
                if bal.available >= 0 and bal.locked >= 0 or account.borrows.get(asset):
                    continue
                if asset == settle and actor.reconciling is not None:
                    continue
                problems.append(f"{account.id} holds {fmt(bal.available)} available / {fmt(bal.locked)} locked {asset} "
                                "without a borrow or a cover under way")
        return problems

    def _timeliness(self) -> list[str]:
        """Judged once per virtual instant (a rule about time; most events share one), from when
        each account's own health reports first found it unhealthy and not liquidating: exact
        however sparse the checks (sampling here alone once took a brief recovery between two
        checks for one long unhealthy spell). Only accounts that were unhealthy when last looked
        at are read: an account's health changes only while it handles a message."""
        problems: list[str] = []
        now = now_ms()
        if now == self._timed_at:
            return problems
        self._timed_at = now
        for account_id in self._unhealthy:
            actor = self.system.accounts[account_id]
            account = actor.account
            reported = actor.unhealthy_since_ms
            if reported is None or account.liquidating:
                continue
            t = totals(account)
            since = max(reported, self.faults_until_ms)
            if needs_liquidation(t) and now - since > self.grace_ms:
                problems.append(f"{account_id} has been at MMR {fmt(t.mmr, 4)} >= 100% since "
                                f"t={since / 1000:.3f}s and is not being liquidated")
        return problems

    def _contamination(self, due: dict[str, None]) -> list[str]:
        problems = []
        for account_id in due:
            account = self.system.accounts[account_id].account
            snapshot = (
                tuple((a, b.available + b.locked) for a, b in account.balances.items() if b.available + b.locked),
                tuple(account.lends.items()),
                tuple(account.borrows.items()),
                tuple((s, p.quantity, p.net_cost) for s, p in account.positions.items()),
                account.unsettled_equity,
            )
            before = self._snapshots.get(account_id)
            self._snapshots[account_id] = snapshot
            if before is not None and before != snapshot and account_address(account_id) not in self._touched:
                problems.append(f"{account_id}'s holdings changed with no event of its own")
        return problems


def _claims(recipient: str, message: object) -> Iterable[tuple[tuple[str, str, str], Decimal]]:
    """Changes to an account's lends and borrows that are on their way to it."""
    if isinstance(message, PoolReply):
        for grant in message.grants:
            if grant.action == "lend":
                yield (recipient, "lends", grant.asset), grant.quantity
            elif grant.action == "redeem":
                yield (recipient, "lends", grant.asset), -grant.quantity
            elif grant.action == "borrow":
                yield (recipient, "borrows", grant.asset), grant.quantity + grant.entry_fee
            else:
                yield (recipient, "borrows", grant.asset), -grant.quantity
    elif isinstance(message, InterestNotice):
        yield (recipient, "lends", message.asset), message.lend_interest
        yield (recipient, "borrows", message.asset), message.borrow_interest
    elif isinstance(message, LendWrittenOff):
        yield (recipient, "lends", message.asset), -message.quantity
    elif isinstance(message, BorrowWrittenOff):
        yield (recipient, "borrows", message.asset), -message.quantity
