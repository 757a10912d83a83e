"""The venue profile: every exchange parameter the core uses, loaded from a data file.

Nothing numeric about the venue is a constant in code: assets (quantity step, haircut, borrow
margin functions, lending curve), spot and perp markets (tick, step, fees, margin functions,
funding, price bands, limits) and the liquidation knobs all come from a TOML file under
``exchange/profiles/``. A profile may ``extends`` another and override some fields; scenario
files use the same override mechanism.

Times in the file are seconds; the core keeps integer milliseconds of virtual time.
Numbers are parsed straight to ``Decimal`` (never through float).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from exchange.decimals import ONE, ZERO
from exchange.validation import InputError, Reader, deep_merge, read_user_file

SPOT = "SPOT"
PERP = "PERP"
POOL_STATES = ("Open", "RepayOnly", "Closed")
HAIRCUT_KINDS = ("identity", "inverseSqrt")
_ELEVEN_TENTHS = Decimal("1.1")


@attrs.frozen
class SqrtFunction:
    """``max(base, factor * sqrt(N))`` with N the USD notional (spec section 4)."""

    base: Decimal
    factor: Decimal
    flat_until: Decimal = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Below this notional the sqrt term is under the base: no square root needed.
        flat = (self.base / self.factor) ** 2 if self.factor > 0 else Decimal("Infinity")
        object.__setattr__(self, "flat_until", flat)

    def fraction(self, notional: Decimal) -> Decimal:
        if notional <= self.flat_until:
            return self.base
        return max(self.base, self.factor * notional.sqrt())


@attrs.frozen
class HaircutFunction:
    """Collateral weight of an asset as a function of the USD value held (spec 2.2).

    ``identity``: the weight is constant. ``inverseSqrt``: ``min(weight, base,
    1.1 / (1 + positive_curve_penalty * sqrt(N)))``, flat until the curve drops under the cap.
    """

    weight: Decimal
    kind: str = "identity"
    base: Decimal = ONE
    positive_curve_penalty: Decimal = ZERO
    cap: Decimal = attrs.field(init=False)
    flat_until: Decimal = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        cap = self.weight if self.kind == "identity" else min(self.weight, self.base)
        if self.kind == "identity" or self.positive_curve_penalty <= 0:
            flat = Decimal("Infinity")
        else:
            flat = ((_ELEVEN_TENTHS / cap - 1) / self.positive_curve_penalty) ** 2
        object.__setattr__(self, "cap", cap)
        object.__setattr__(self, "flat_until", flat)

    def weight_at(self, notional: Decimal) -> Decimal:
        """Average weight applied to the whole balance (the default ``haircut_mode``)."""
        if notional <= self.flat_until:
            return self.cap
        return min(self.cap, _ELEVEN_TENTHS / (1 + self.positive_curve_penalty * notional.sqrt()))

    def marginal_value(self, notional: Decimal) -> Decimal:
        """Collateral value when each extra dollar is weighted at the marginal weight.

        ``integral_0^N w(n) dn``: flat at the cap up to the kink, then
        ``1.1 / (1 + k sqrt(n))`` whose integral is ``2.2/k^2 (k u - ln(1 + k u))`` in
        ``u = sqrt(n)``.
        """
        if notional <= self.flat_until:
            return notional * self.cap
        k = self.positive_curve_penalty

        def primitive(u: Decimal) -> Decimal:
            return Decimal("2.2") / (k * k) * (k * u - (1 + k * u).ln())

        return self.flat_until * self.cap + primitive(notional.sqrt()) - primitive(self.flat_until.sqrt())


@attrs.frozen
class LendingParams:
    """One asset's borrow/lend pool: the two-slope curve and its limits (spec 9.1)."""

    r0: Decimal
    s1: Decimal
    s2: Decimal
    optimal_utilization: Decimal
    max_utilization: Decimal
    throttle_utilization_threshold: Decimal
    fee: Decimal
    state: str = "Open"
    open_borrow_lend_limit: Decimal | None = None


# The most of any asset a user file may name: a trillion units at an 1e-8 step is 20 digits, so
# every sum and product of the core stays inside Decimal's 28 significant digits.
MAX_QUANTITY = Decimal(10) ** 12
MAX_PRICE = Decimal(10) ** 9  # the highest price band a profile may set
MIN_STEP = Decimal("0.000000000001")  # the finest tick or step: with MAX_QUANTITY, 24 digits
MAX_RATE = Decimal(1000)  # annual rates, slopes and factors: 100,000% at most
BPS = Decimal(10000)  # funding bounds within +-100%


@attrs.frozen
class Asset:
    symbol: str
    step: Decimal
    haircut: HaircutFunction
    borrow_imf: SqrtFunction
    borrow_mmf: SqrtFunction
    lending: LendingParams
    max_quantity: Decimal = MAX_QUANTITY  # the most a user file may name (deposits, orders, loans)


@attrs.frozen
class PriceBands:
    """Spec section 14. ``None`` switches a band off (the mean-mark bands are perp-only)."""

    min_price: Decimal
    max_price: Decimal
    min_multiplier: Decimal
    max_multiplier: Decimal
    min_impact_multiplier: Decimal
    max_impact_multiplier: Decimal
    mean_mark_min_multiplier: Decimal | None = None
    mean_mark_max_multiplier: Decimal | None = None
    mean_premium_tolerance: Decimal | None = None


@attrs.frozen
class Market:
    symbol: str
    kind: str  # SPOT or PERP
    base: str
    quote: str
    tick_size: Decimal
    step_size: Decimal
    min_quantity: Decimal
    max_quantity: Decimal | None
    maker_fee: Decimal
    taker_fee: Decimal
    bands: PriceBands
    imf: SqrtFunction | None = None
    mmf: SqrtFunction | None = None
    funding_interval_ms: int = 3_600_000
    funding_lower_bound_bps: Decimal = Decimal(-100)
    funding_upper_bound_bps: Decimal = Decimal(100)
    position_limit_weight: Decimal = ONE
    open_interest_limit: Decimal | None = None

    @property
    def is_perp(self) -> bool:
        return self.kind == PERP


@attrs.frozen
class LiquidationParams:
    """Spec section 11 and the "Decisions for marginsim" table."""

    fee_rate: Decimal
    max_fraction_per_loop: Decimal
    loop_interval_ms: int
    end_mmr: Decimal
    auto_close_mmr: Decimal
    backstop_residual_to_fund: bool = True
    max_book_loops: int = 30  # loops on the book before the rest goes to stage 2 (termination)


@attrs.frozen
class Profile:
    name: str
    source: str
    settlement_asset: str
    assets: Mapping[str, Asset]
    markets: Mapping[str, Market]
    liquidation: LiquidationParams
    realize_interval_ms: int  # 0: legacy mode, PnL realized only on reduce/close
    interest_interval_ms: int
    haircut_mode: str  # "average" or "marginal"
    default_leverage_limit: Decimal
    max_leverage_limit: Decimal

    def market(self, symbol: str) -> Market:
        return self.markets[symbol]

    def perp_markets(self) -> list[Market]:
        return [m for m in self.markets.values() if m.is_perp]

    def max_price(self, symbol: str) -> Decimal:
        """The highest price a user file may give an asset's index or a market: the largest
        band maximum of the markets that trade it (every market's, for an asset none trades)."""
        market = self.markets.get(symbol)
        if market is not None:
            return market.bands.max_price
        bands = [m.bands.max_price for m in self.markets.values() if m.base == symbol]
        return max(bands or [m.bands.max_price for m in self.markets.values()])


# ---------------------------------------------------------------------------------------
# Loading


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the project."""
    folder = resources.files("exchange") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Load a shipped profile by name (``backpack``) or a profile file by path.

    ``overrides`` is a nested table merged over the file (the scenario's ``[profile]``
    overrides); the result is validated as a whole, so an override is checked like the file.
    """
    data, source = _read_with_extends(name_or_path, seen=())
    if overrides:
        data = deep_merge(data, overrides)
        source = f"{source} (with overrides)"
    return parse_profile(data, source)


def _read_with_extends(name_or_path: str, seen: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    text, source = _read_text(name_or_path)
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, "<file>", str(exc), "valid TOML") from None
    parent = data.pop("extends", None)
    if parent is None:
        return data, source
    if not isinstance(parent, str):
        raise InputError(source, "extends", parent, "the name of a shipped profile: " + ", ".join(available_profiles()))
    if parent in seen:
        raise InputError(source, "extends", parent, "a profile that does not extend itself")
    try:
        base, _ = _read_with_extends(parent, seen + (name_or_path,))
    except InputError as exc:
        if exc.source != "profile":  # an error inside the parent names its own file
            raise
        raise InputError(source, "extends", parent, exc.allowed) from None
    return deep_merge(base, data), source


def _read_text(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return read_user_file(path, "TOML profile file"), str(path)
    resource = resources.files("exchange") / "profiles" / f"{name_or_path}.toml"
    if not resource.is_file():
        raise InputError(
            "profile", "name", name_or_path, "one of " + ", ".join(available_profiles()) + " or a path to a .toml file"
        )
    return resource.read_text(encoding="utf-8"), f"{name_or_path}.toml"


def parse_profile(data: Mapping[str, Any], source: str) -> Profile:
    top = Reader(data, source)
    name = top.string("name")
    top.string("description", required=False, default="")
    settlement = top.string("settlement_asset")
    realize_ms = top.millis("realize_interval")
    interest_ms = top.millis("interest_interval", positive=True)
    haircut_mode = top.string("haircut_mode", choices=("average", "marginal"))
    default_lev = top.decimal("default_leverage_limit", minimum=ONE, maximum=MAX_RATE)
    max_lev = top.decimal("max_leverage_limit", minimum=default_lev, maximum=MAX_RATE)

    liq = top.table("liquidation")
    assert liq is not None
    liquidation = LiquidationParams(
        fee_rate=liq.decimal("fee_rate", minimum=ZERO, maximum=ONE),
        max_fraction_per_loop=liq.decimal("max_fraction_per_loop", positive=True, maximum=ONE),
        loop_interval_ms=liq.millis("loop_interval", positive=True),
        end_mmr=liq.decimal("end_mmr", positive=True, maximum=ONE),
        auto_close_mmr=liq.decimal("auto_close_mmr", minimum=ONE, maximum=MAX_RATE),
        backstop_residual_to_fund=liq.boolean("backstop_residual_to_fund"),
        max_book_loops=liq.integer("max_book_loops", minimum=1, maximum=10**6),
    )
    liq.done()

    asset_defaults = top.table("asset_defaults", required=False)
    assets: dict[str, Asset] = {}
    for symbol, table in top.tables("assets"):
        assets[symbol] = _parse_asset(symbol, _with_defaults(table, asset_defaults))
    if settlement not in assets:
        raise top.error("settlement_asset", settlement, "one of the assets: " + ", ".join(assets))

    market_defaults = top.table("market_defaults", required=False)
    markets: dict[str, Market] = {}
    for symbol, table in top.tables("markets"):
        markets[symbol] = _parse_market(symbol, _with_defaults(table, market_defaults), assets, settlement)
    top.done()
    return Profile(
        name=name,
        source=source,
        settlement_asset=settlement,
        assets=assets,
        markets=markets,
        liquidation=liquidation,
        realize_interval_ms=realize_ms,
        interest_interval_ms=interest_ms,
        haircut_mode=haircut_mode,
        default_leverage_limit=default_lev,
        max_leverage_limit=max_lev,
    )


def _with_defaults(table: Reader, defaults: Reader | None) -> Reader:
    """A market or asset table with the profile-wide defaults filled in under it."""
    if defaults is None:
        return table
    return Reader(deep_merge(defaults.data, table.data), table.source, table.path)


def _sqrt_function(r: Reader, key: str) -> SqrtFunction:
    t = r.table(key)
    assert t is not None
    fn = SqrtFunction(base=t.decimal("base", positive=True, maximum=ONE),
                      factor=t.decimal("factor", minimum=ZERO, maximum=ONE))
    t.done()
    return fn


def _parse_asset(symbol: str, r: Reader) -> Asset:
    h = r.table("haircut")
    assert h is not None
    kind = h.string("kind", choices=HAIRCUT_KINDS)
    haircut = HaircutFunction(
        weight=h.decimal("weight", minimum=ZERO, maximum=ONE),
        kind=kind,
        base=h.decimal("base", minimum=ZERO, maximum=ONE, required=kind == "inverseSqrt", default=ONE),
        positive_curve_penalty=h.decimal(
            "positive_curve_penalty", minimum=ZERO, maximum=ONE, required=kind == "inverseSqrt", default=ZERO
        ),
    )
    h.done()
    lend = r.table("lending")
    assert lend is not None
    optimal = lend.decimal("optimal_utilization", positive=True, maximum=ONE)
    lending = LendingParams(
        r0=lend.decimal("r0", minimum=ZERO, maximum=MAX_RATE),
        s1=lend.decimal("s1", minimum=ZERO, maximum=MAX_RATE),
        s2=lend.decimal("s2", minimum=ZERO, maximum=MAX_RATE),
        optimal_utilization=optimal,
        max_utilization=lend.decimal("max_utilization", positive=True, maximum=ONE),
        throttle_utilization_threshold=lend.decimal("throttle_utilization_threshold", positive=True, maximum=ONE),
        fee=lend.decimal("fee", minimum=ZERO, maximum=ONE),
        state=lend.string("state", choices=POOL_STATES, required=False, default="Open"),
        open_borrow_lend_limit=lend.optional_decimal("open_borrow_lend_limit", positive=True, maximum=MAX_QUANTITY),
    )
    lend.done()
    asset = Asset(
        symbol=symbol,
        step=r.decimal("step", positive=True, minimum=MIN_STEP, maximum=ONE),
        haircut=haircut,
        borrow_imf=_sqrt_function(r, "borrow_imf"),
        borrow_mmf=_sqrt_function(r, "borrow_mmf"),
        lending=lending,
        max_quantity=r.decimal("max_quantity", required=False, default=MAX_QUANTITY, positive=True,
                               maximum=MAX_QUANTITY),
    )
    r.done()
    return asset


def _parse_market(symbol: str, r: Reader, assets: Mapping[str, Asset], settlement: str) -> Market:
    kind = r.string("kind", choices=(SPOT, PERP))
    base = r.string("base", choices=tuple(assets))
    quote = r.string("quote", choices=tuple(assets))
    if kind == PERP and quote != settlement:
        raise r.error("quote", quote, f"`{settlement}` (perps settle in the settlement asset)")
    b = r.table("price_bands")
    assert b is not None
    perp = kind == PERP
    bands = PriceBands(
        min_price=b.decimal("min_price", positive=True, maximum=MAX_PRICE),
        max_price=b.decimal("max_price", positive=True, maximum=MAX_PRICE),
        min_multiplier=b.decimal("min_multiplier", positive=True, maximum=ONE),
        max_multiplier=b.decimal("max_multiplier", minimum=ONE, maximum=MAX_RATE),
        min_impact_multiplier=b.decimal("min_impact_multiplier", positive=True, maximum=ONE),
        max_impact_multiplier=b.decimal("max_impact_multiplier", minimum=ONE, maximum=MAX_RATE),
        mean_mark_min_multiplier=b.optional_decimal("mean_mark_min_multiplier", positive=True, maximum=ONE)
        if perp
        else None,
        mean_mark_max_multiplier=b.optional_decimal("mean_mark_max_multiplier", minimum=ONE, maximum=MAX_RATE)
        if perp
        else None,
        mean_premium_tolerance=b.optional_decimal("mean_premium_tolerance", positive=True, maximum=ONE) if perp else None,
    )
    if bands.min_price > bands.max_price:
        raise b.error("max_price", bands.max_price, f"at least min_price ({bands.min_price})")
    b.done(allowed_extra=() if perp else ("mean_mark_min_multiplier", "mean_mark_max_multiplier", "mean_premium_tolerance"))
    step = r.decimal("step_size", positive=True, minimum=MIN_STEP, maximum=MAX_QUANTITY)
    fields: dict[str, Any] = dict(
        symbol=symbol,
        kind=kind,
        base=base,
        quote=quote,
        tick_size=r.decimal("tick_size", positive=True, minimum=MIN_STEP, maximum=bands.max_price),
        step_size=step,
        min_quantity=r.decimal("min_quantity", minimum=step, maximum=MAX_QUANTITY),
        max_quantity=r.optional_decimal("max_quantity", minimum=step, maximum=MAX_QUANTITY),
        maker_fee=r.decimal("maker_fee", minimum=Decimal("-0.01"), maximum=Decimal("0.1")),
        taker_fee=r.decimal("taker_fee", minimum=ZERO, maximum=Decimal("0.1")),
        bands=bands,
    )
    perp_only = ("imf", "mmf", "funding_interval", "funding_lower_bound_bps", "funding_upper_bound_bps",
                 "position_limit_weight", "open_interest_limit")
    if perp:
        lower = r.decimal("funding_lower_bound_bps", minimum=-BPS, maximum=ZERO)
        fields.update(
            imf=_sqrt_function(r, "imf"),
            mmf=_sqrt_function(r, "mmf"),
            funding_interval_ms=r.millis("funding_interval", positive=True),
            funding_lower_bound_bps=lower,
            funding_upper_bound_bps=r.decimal("funding_upper_bound_bps", minimum=ZERO, maximum=BPS),
            position_limit_weight=r.decimal("position_limit_weight", minimum=ZERO, maximum=MAX_RATE, required=False,
                                            default=ONE),
            open_interest_limit=r.optional_decimal("open_interest_limit", positive=True, maximum=MAX_QUANTITY),
        )
        r.done()
    else:
        for key in perp_only:
            if r.has(key):
                raise r.error(key, r.raw(key), "nothing: this field belongs to PERP markets only")
        r.done()
    market = Market(**fields)
    if market.imf is not None and market.mmf is not None and market.mmf.base > market.imf.base:
        raise r.error("mmf", "base " + str(market.mmf.base), f"a base <= the imf base {market.imf.base}")
    return market
