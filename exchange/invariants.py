"""The system-wide invariants, computed from the core's state objects.

Used by the direct engine's tests and by the actor runtime's live observer (which also adds
what is in flight between actors). Each function returns the violations it finds as plain
sentences with the numbers; an empty list means the invariant holds.

Conservation counts physical holdings: every account's available and locked balances, the
pools' cash, the books' fee and liquidation-fee pots, the liquidity fund. Lends and borrows are
claims on a pool and do not count; neither does unsettled equity (a debt to the fund, which paid
cash when it arose). Perp positions are cash-neutral except through their net cost: a position
bought for ``c`` USDC is carried as ``-c`` USDC plus the contracts, so trading, realizing PnL
and paying fees all conserve the settlement asset exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal

from exchange.book import OrderBook
from exchange.decimals import ZERO, fmt
from exchange.ledger import SubAccount
from exchange.lending import LendingPool


def holdings_by_asset(
    accounts: Iterable[SubAccount],
    books: Iterable[OrderBook],
    pools: Iterable[LendingPool],
    fund: Mapping[str, Decimal],
    settlement_asset: str,
) -> dict[str, Decimal]:
    """Physical quantity of every asset in the system, as defined in the module docstring."""
    total: dict[str, Decimal] = {}

    def add(asset: str, quantity: Decimal) -> None:
        total[asset] = total.get(asset, ZERO) + quantity

    for account in accounts:
        for asset, bal in account.balances.items():
            add(asset, bal.available + bal.locked)
        for pos in account.positions.values():
            add(settlement_asset, -pos.net_cost)
    for book in books:
        for asset, quantity in book.fee_income.items():
            add(asset, quantity)
        for asset, quantity in book.liquidation_fees.items():
            add(asset, quantity)
    for pool in pools:
        add(pool.asset, pool.cash)
    for asset, quantity in fund.items():
        add(asset, quantity)
    return total


def conservation_violations(holdings: Mapping[str, Decimal], external: Mapping[str, Decimal]) -> list[str]:
    """Every asset's physical total equals what came in minus what went out, to the last digit."""
    problems = []
    for asset in sorted(set(holdings) | set(external)):
        held, came_in = holdings.get(asset, ZERO), external.get(asset, ZERO)
        if held != came_in:
            problems.append(
                f"{asset} not conserved: {fmt(held)} held in the system, {fmt(came_in)} deposited net "
                f"(difference {fmt(held - came_in)})"
            )
    return problems


def pool_violations(pools: Iterable[LendingPool], accounts: Iterable[SubAccount]) -> list[str]:
    """Pool books balance, borrows never exceed supply, and account mirrors match the pools."""
    problems = []
    accounts = list(accounts)
    for pool in pools:
        expected = pool.lent + pool.fee_income + pool.undistributed - pool.borrowed
        if pool.cash != expected:
            problems.append(f"{pool.asset} pool: cash {fmt(pool.cash)} != lent + fees - borrowed = {fmt(expected)}")
        if pool.cash < 0:
            problems.append(f"{pool.asset} pool: borrows exceed the lent supply (cash {fmt(pool.cash)})")
        for side, records, mirror in (("lent", pool.lenders, "lends"), ("borrowed", pool.borrowers, "borrows")):
            for account in accounts:
                mine = getattr(account, mirror).get(pool.asset, ZERO)
                if records.get(account.id, ZERO) != mine:
                    problems.append(
                        f"{pool.asset} pool: {account.id} {side} {fmt(records.get(account.id, ZERO))} "
                        f"but the account shows {fmt(mine)}"
                    )
    return problems


def position_violations(books: Iterable[OrderBook], accounts: Iterable[SubAccount]) -> list[str]:
    """Perp positions sum to zero per market, and each account agrees with the book."""
    problems = []
    accounts = list(accounts)
    for book in books:
        if not book.market.is_perp:
            continue
        net = sum(book.positions.values(), ZERO)
        if net:
            problems.append(f"{book.symbol}: positions sum to {fmt(net)}, not zero")
        for account in accounts:
            pos = account.positions.get(book.symbol)
            mine = pos.quantity if pos is not None else ZERO
            if book.positions.get(account.id, ZERO) != mine:
                problems.append(
                    f"{book.symbol}: book has {account.id} at {fmt(book.positions.get(account.id, ZERO))}, "
                    f"the account at {fmt(mine)}"
                )
    return problems


def negative_balance_violations(accounts: Iterable[SubAccount]) -> list[str]:
    """No balance below zero unless the account borrows that asset (spec: borrows back shorts)."""
    problems = []
    for account in accounts:
        for asset, bal in account.balances.items():
            if (bal.available < 0 or bal.locked < 0) and not account.borrows.get(asset):
                problems.append(
                    f"{account.id} holds {fmt(bal.available)} available / {fmt(bal.locked)} locked {asset} "
                    "without a borrow"
                )
    return problems


def quiet_violations(accounts: list[SubAccount], books: list[OrderBook], pools: list[LendingPool],
                     fund: Mapping[str, Decimal], settle: str, external: Mapping[str, Decimal]) -> list[str]:
    """Every invariant of a venue with nothing in flight (the engine between calls)."""
    holdings = holdings_by_asset(accounts, books, pools, fund, settle)
    return (conservation_violations(holdings, external) + pool_violations(pools, accounts)
            + position_violations(books, accounts) + negative_balance_violations(accounts))
