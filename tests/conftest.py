"""Shared helpers for the core tests: a profile, accounts, and fills built by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange.decimals import ceil_to
from exchange.ledger import Settings, SubAccount
from exchange.orders import Fill, Side
from exchange.profile import Profile, load_profile

D = Decimal


@pytest.fixture(scope="session")
def profile() -> Profile:
    return load_profile("backpack")


def make_account(
    profile: Profile,
    account_id: str = "a",
    *,
    usdc: str | int = 0,
    leverage: str | int | None = None,
    marks: dict[str, str | int] | None = None,
) -> SubAccount:
    settings = Settings(leverage_limit=D(leverage)) if leverage is not None else None
    account = SubAccount(account_id, profile, settings=settings)
    if usdc:
        account.deposit("USDC", D(usdc))
    for symbol, price in (marks or {}).items():
        account.set_mark(symbol, D(price))
    return account


def perp_fill(
    profile: Profile,
    account: SubAccount,
    symbol: str,
    side: Side,
    quantity: str | Decimal,
    price: str | Decimal,
    *,
    taker: bool = True,
    fee: str | Decimal | None = None,
    order_id: str = "o",
    trade_id: int = 1,
) -> None:
    """Apply one perp fill to ``account`` with the venue's fee rule unless ``fee`` is given."""
    market = profile.markets[symbol]
    q, p = D(quantity), D(price)
    if fee is None:
        rate = market.taker_fee if taker else market.maker_fee
        fee = ceil_to(q * p * rate, profile.assets[market.quote].step)
    account.apply_fill(
        Fill(trade_id=trade_id, market=symbol, order_id=order_id, account=account.id, side=side, price=p, quantity=q,
             quote_quantity=q * p, fee=D(fee), fee_asset=market.quote, is_maker=not taker), market
    )
