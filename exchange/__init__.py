"""The pure core of marginsim: Backpack Exchange's unified cross-margin venue, without I/O.

What the README teaches is importable from here; every module behind it stays importable too:

    from exchange import Exchange, Side, load_profile
    ex = Exchange(load_profile("backpack"))

* ``load_profile``, ``Profile``: the venue's parameters (assets, markets, haircuts, curves).
* ``SubAccount``, ``Settings``: one sub-account's ledger and its settings.
* ``totals``, ``summarize``: its margin numbers (net equity, IMR, MMR, available; per row).
* ``check_order``: the pre-trade check, with the numbers behind a refusal.
* ``Exchange``: the direct engine; ``Venue``: the machines of one venue, for either driver.
* ``Order``, ``Side``, ``OrderType``, ``TimeInForce``, ``Rejection``, ``ErrorCode``: orders and
  refusals.
"""

from exchange.engine import Exchange, OrderOutcome
from exchange.ledger import Settings, SubAccount
from exchange.margin import summarize, totals
from exchange.orders import ErrorCode, Order, OrderType, Rejection, Side, TimeInForce
from exchange.pretrade import check_order
from exchange.profile import Profile, load_profile
from exchange.venue import Venue

__all__ = [
    "ErrorCode",
    "Exchange",
    "Order",
    "OrderOutcome",
    "OrderType",
    "Profile",
    "Rejection",
    "Settings",
    "Side",
    "SubAccount",
    "TimeInForce",
    "Venue",
    "check_order",
    "load_profile",
    "summarize",
    "totals",
]
