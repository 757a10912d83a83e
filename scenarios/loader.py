"""Scenario files: a declarative TOML description of a run, loaded and checked before anything runs.

A malformed file is refused with the file, the line, the field path (``accounts[2].deposits.USDC``),
what was found and what is allowed; an unknown key is an error with a did-you-mean. The format
is documented field by field in ``scenarios/FORMAT.md``; the shipped scenarios in
``scenarios/library/`` are examples of every part of it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from actors.faults import Fault
from actors.network import Latency
from exchange.orders import Order, OrderType, SelfTradePrevention, Side, TimeInForce
from exchange.profile import Profile, available_profiles, load_profile
from exchange.protocol import (
    CancelAll,
    CancelOrder,
    Deposit,
    LoanRequest,
    PlaceOrder,
    TransferOut,
    UpdateSettings,
    Withdraw,
)
from exchange.validation import InputError, Reader, did_you_mean

SIDES = {"buy": Side.BID, "bid": Side.BID, "sell": Side.ASK, "ask": Side.ASK}
ACTION_TYPES = ("order", "cancel", "cancel_all", "deposit", "withdraw", "transfer", "settings", "lend", "redeem",
                "borrow", "repay")
PATH_KINDS = ("constant", "linear", "steps", "gbm", "csv")
EXPECTATION_KINDS = ("liquidated", "not_liquidated", "liquidation_stage", "net_equity", "imr", "mmr", "position",
                     "balance", "borrow", "lend", "refused", "accepted", "fund", "funding_paid", "trades",
                     "unsettled_equity")


@attrs.frozen
class PathSpec:
    kind: str
    points: tuple[tuple[int, Decimal], ...] = ()
    price: Decimal = Decimal(0)
    drift: Decimal = Decimal(0)
    volatility: Decimal = Decimal(0)
    step_ms: int = 1000
    file: Path | None = None
    shocks: tuple[tuple[int, Decimal], ...] = ()


@attrs.frozen
class AccountSpec:
    id: str
    owner: str
    deposits: Mapping[str, Decimal]
    leverage_limit: Decimal
    auto_lend: bool
    auto_borrow_settlements: bool
    auto_repay_borrows: bool
    markets: tuple[str, ...]


@attrs.frozen
class MakerSpec:
    name: str
    account: str
    markets: tuple[str, ...]
    size: Decimal | Mapping[str, Decimal]
    spread_bps: Decimal
    levels: int
    spacing_bps: Decimal
    refresh_ms: int


@attrs.frozen
class NoiseSpec:
    name: str
    account: str
    markets: tuple[str, ...]
    interval_ms: int
    max_steps: int | Mapping[str, int]
    market_share: float
    within_bps: int
    reduce_only_share: float
    ioc_share: float
    auto_borrow_share: float
    post_only_share: float
    top_up: Decimal = Decimal(0)


@attrs.frozen
class ActionSpec:
    at_ms: int
    account: str
    message: object
    label: str


def _count(low: int, high: int | None) -> str:
    """A count's bounds in words: ``at least 5``, ``exactly 5``, ``between 2 and 4``."""
    if high is None:
        return f"at least {low}"
    if high == low:
        return f"exactly {low}"
    return f"at most {high}" if low == 0 else f"between {low} and {high}"


@attrs.frozen
class Expectation:
    kind: str
    params: Mapping[str, Any]
    path: str  # where it sits in the file, for messages

    def describe(self) -> str:
        """The expectation as a sentence: ``trader net equity between 370 and 400``."""
        p = self.params
        kind = self.kind
        if kind == "accepted":
            return f"order {p['order']} accepted"
        if kind == "refused":
            largest = f", the largest size that passes {p['max_quantity']}" if p.get("max_quantity") is not None else ""
            return f"order {p['order']} refused" + (f" with {p['code']}" if p.get("code") else "") + largest
        if kind == "liquidated":
            return f"{p['account']} liquidated {_count(p['min'], p['max'])} time(s)"
        if kind == "not_liquidated":
            return f"{p['account']} never liquidated"
        if kind == "liquidation_stage":
            return f"{p['account']} has {_count(p['min'], p['max'])} '{p['stage']}' liquidation step(s)"
        subject = {
            "fund": f"liquidity fund {p.get('asset')}",
            "funding_paid": f"funding paid on {p.get('market')}",
            "trades": f"trades on {p.get('market')}",
            "position": f"{p.get('account')} position in {p.get('market')}",
            "balance": f"{p.get('account')} {p.get('asset')} balance",
            "borrow": f"{p.get('account')} {p.get('asset')} borrow",
            "lend": f"{p.get('account')} {p.get('asset')} lend",
        }.get(kind, f"{p.get('account')} {kind.replace('_', ' ').replace('imr', 'IMR').replace('mmr', 'MMR')}")
        low, high = p.get("min"), p.get("max")
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        at = f" at t={p['at_ms'] / 1000:g}s" if p.get("at_ms") is not None else ""
        return f"{subject} {bounds}{at}"


@attrs.frozen
class Scenario:
    name: str
    description: str
    source: str
    profile: Profile
    seed: int
    duration_ms: int
    price_interval_ms: int
    sample_ms: int
    latency: Latency
    latency_rules: Mapping[tuple[str, str], Latency]
    prices: Mapping[str, PathSpec]
    premiums: Mapping[str, PathSpec]
    accounts: tuple[AccountSpec, ...]
    makers: tuple[MakerSpec, ...]
    noise: tuple[NoiseSpec, ...]
    backstops: tuple[tuple[str, Mapping[str, Decimal]], ...]
    actions: tuple[ActionSpec, ...]
    faults: tuple[Fault, ...]
    expectations: tuple[Expectation, ...]
    liveness: bool = False  # check at the end that everything resolved (the fuzzer's scenarios)

    @property
    def faults_until_ms(self) -> int:
        return max((f.end_ms for f in self.faults), default=0)


# ---------------------------------------------------------------------------------------
# Finding a shipped scenario, reading a file


def library_dir() -> Path:
    return Path(str(resources.files("scenarios") / "library"))


def shipped() -> dict[str, Path]:
    """Shipped scenarios by name (the file name without .toml)."""
    return {p.stem: p for p in sorted(library_dir().glob("*.toml"))}


def resolve(name_or_path: str) -> Path:
    """A shipped scenario's name, or a path to a scenario file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise InputError(str(path), "<file>", "no such file", "a scenario file or the name of a shipped scenario")
        return path
    found = shipped().get(name_or_path)
    if found is None:
        names = list(shipped())
        raise InputError("scenario", "name", name_or_path, "a path or one of: " + ", ".join(names),
                         hint=did_you_mean(name_or_path, names))
    return found


def load(name_or_path: str, overrides: list[str] | None = None) -> Scenario:
    """Read, apply ``--set key=value`` overrides, validate. Raises InputError, runs nothing."""
    path = resolve(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        line = _decode_line(str(exc))
        raise InputError(str(path), "<file>", str(exc), "valid TOML", line=line) from None
    for assignment in overrides or []:
        data = apply_override(data, assignment, str(path))
    try:
        return _parse(data, str(path), path.parent)
    except InputError as exc:
        if exc.line is None and exc.source == str(path):
            exc = InputError(exc.source, exc.field, exc.found, exc.allowed, line=locate(text, exc.field), hint=exc.hint)
        raise exc from None


def _decode_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def apply_override(data: dict[str, Any], assignment: str, source: str) -> dict[str, Any]:
    """``key.path=value`` (``accounts[0].leverage_limit=20``): the value is read as TOML, or
    taken as a string when it is not TOML (``scenario.profile=backpack-2025-10``)."""
    if "=" not in assignment:
        raise InputError(f"{source} (--set)", assignment, assignment, "key=value, e.g. scenario.seed=7")
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}", parse_float=Decimal)["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    segments = _segments(key.strip())
    if not segments:
        raise InputError(f"{source} (--set)", key, key, "a field path, e.g. accounts[0].leverage_limit")
    target: Any = data
    for i, (name, index) in enumerate(segments):
        last = i == len(segments) - 1
        if index is None:
            if last:
                target[name] = value
            else:
                target = target.setdefault(name, {})
        else:
            items = target.get(name)
            if not isinstance(items, list) or index >= len(items):
                raise InputError(f"{source} (--set)", key, None, f"an existing {name}[...] entry")
            if last:
                items[index] = value
            else:
                target = items[index]
    return data


def _segments(path: str) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for part in path.split("."):
        match = re.fullmatch(r"([^\[\]]+)(?:\[(\d+)\])?", part)
        if match is None:
            return []
        out.append((match.group(1), int(match.group(2)) if match.group(2) else None))
    return out


def locate(text: str, field: str) -> int | None:
    """The 1-based line where ``field`` (``accounts[2].deposits.USDC``) is written, or the
    closest enclosing table's header. Best effort: TOML keeps no positions."""
    target = _segments(field)
    if not target:
        return None
    counters: dict[str, int] = {}
    table: list[tuple[str, int | None]] = []
    best: tuple[int, int] | None = None  # (matched depth, line)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\[\s*([^\]]+?)\s*\]\]|\[\s*([^\]]+?)\s*\]", stripped.split("#")[0].strip())
        if header:
            if header.group(1):
                name = header.group(1)
                counters[name] = counters.get(name, -1) + 1
                table = [(part, None) for part in name.split(".")]
                table[-1] = (table[-1][0], counters[name])
            else:
                table = [(part, None) for part in header.group(2).split(".")]
            depth = _prefix(table, target)
            if depth == len(table) and (best is None or depth > best[0]):
                best = (depth, number)
            continue
        if _prefix(table, target) != len(table):
            continue
        rest = target[len(table):]
        for depth in range(len(rest), 0, -1):
            key = rest[0][0] if depth == 1 else ".".join(n for n, _ in rest[:depth])
            if re.match(rf"\s*{re.escape(rest[0][0])}\s*=", line) or (depth > 1 and key in line):
                found = len(table) + depth
                if best is None or found > best[0]:
                    best = (found, number)
                break
        else:
            if rest and re.search(rf"\b{re.escape(rest[-1][0])}\s*=", line) and rest[0][0] in line:
                best = (len(target), number)
    return best[1] if best else None


def _prefix(table: list[tuple[str, int | None]], target: list[tuple[str, int | None]]) -> int:
    depth = 0
    for (name, index), (t_name, t_index) in zip(table, target):
        if name != t_name or (index is not None and index != t_index):
            break
        depth += 1
    return depth


# ---------------------------------------------------------------------------------------
# Validation


def _ms(r: Reader, key: str, **kwargs: Any) -> int:
    return int(r.decimal(key, **kwargs) * 1000)


def _parse(data: Mapping[str, Any], source: str, folder: Path) -> Scenario:
    top = Reader(data, source)
    head = top.table("scenario")
    assert head is not None
    name = head.string("name")
    description = head.string("description", required=False, default="")
    profile_name = head.string("profile", required=False, default="backpack")
    seed = head.integer("seed", required=False, default=1, minimum=0)
    duration_ms = _ms(head, "duration", positive=True)
    price_interval_ms = _ms(head, "price_interval", required=False, default=Decimal(1), positive=True)
    sample_ms = _ms(head, "sample_interval", required=False, default=Decimal(1), positive=True)
    liveness = head.boolean("liveness", required=False, default=False)
    head.done()
    overrides = top.raw("profile_overrides", required=False, default=None)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise top.error("profile_overrides", overrides, "a table of profile fields to override")
    try:
        profile = load_profile(profile_name, overrides)
    except InputError as exc:
        prefix = "profile_overrides." if overrides else ""
        raise InputError(source, prefix + exc.field if exc.field not in ("name", "<file>") else "scenario.profile",
                         exc.found, exc.allowed if exc.field != "name" else "one of " + ", ".join(available_profiles()),
                         hint=exc.hint) from None

    latency, rules = _latency(top)
    prices: dict[str, PathSpec] = {}
    premiums: dict[str, PathSpec] = {}
    for symbol, table in top.tables("prices", required=False):
        if symbol in profile.assets:
            prices[symbol] = _path(table, folder)
        elif symbol in profile.markets and profile.markets[symbol].is_perp:
            premiums[symbol] = _premium(table)
        else:
            raise top.error(f"prices.{symbol}", symbol, "an asset (an index path) or a perp market (its premium): "
                            + ", ".join(list(profile.assets) + [m.symbol for m in profile.perp_markets()]),
                            did_you_mean(symbol, list(profile.assets) + list(profile.markets)))
    for market in profile.markets.values():
        if market.base not in prices and market.base != profile.settlement_asset:
            prices[market.base] = PathSpec("constant", price=_default_price(market.base))

    accounts = tuple(_account(r, profile) for r in top.array("accounts"))
    ids = [a.id for a in accounts]
    if len(set(ids)) != len(ids):
        raise top.error("accounts", ids, "accounts with different ids")
    known = set(ids)
    makers = tuple(_maker(r, profile, known) for r in top.array("market_makers", required=False))
    noise = tuple(_noise(r, profile, known) for r in top.array("noise_traders", required=False))
    backstops = tuple(_backstop(r, profile, known) for r in top.array("backstops", required=False))
    actions = tuple(_action(r, i, profile, known, accounts) for i, r in enumerate(top.array("actions", required=False)))
    faults = tuple(_fault(r) for r in top.array("faults", required=False))
    order_ids = [a.label for a in actions if isinstance(a.message, PlaceOrder)]
    expectations = tuple(_expectation(r, profile, known, set(order_ids)) for r in top.array("expect", required=False))
    top.done()
    return Scenario(name, description, source, profile, seed, duration_ms, price_interval_ms, sample_ms, latency,
                    rules, prices, premiums, accounts, makers, noise, backstops, actions, faults, expectations, liveness)


def _default_price(asset: str) -> Decimal:
    """Prices for assets a scenario does not mention, so every market has one."""
    return {"BTC": Decimal(100000), "ETH": Decimal(4000), "SOL": Decimal(150), "USDT": Decimal(1)}.get(asset, Decimal(1))


def _latency(top: Reader) -> tuple[Latency, dict[tuple[str, str], Latency]]:
    table = top.table("latency", required=False)
    if table is None:
        return Latency(), {}
    default = _latency_model(table)
    rules = {}
    for rule in table.array("rules", required=False):
        sender = rule.string("from")
        recipient = rule.string("to")
        rules[(sender, recipient)] = _latency_model(rule)
        rule.done()
    table.done()
    return default, rules


def _latency_model(r: Reader) -> Latency:
    kind = r.string("kind", choices=("zero", "constant", "jitter"), required=False, default="zero")
    ms = r.integer("ms", required=False, default=0, minimum=0)
    jitter = r.integer("jitter", required=False, default=0, minimum=0)
    return Latency(kind, ms, jitter)


def _points(r: Reader, key: str) -> tuple[tuple[int, Decimal], ...]:
    raw = r.raw(key)
    allowed = "a list of [seconds, price] pairs in time order, e.g. [[0, 100000], [60, 95000]]"
    if not isinstance(raw, list) or not raw:
        raise r.error(key, raw, allowed)
    points = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool) or isinstance(item[1], bool):
            raise r.error(key, item, allowed)
        try:
            when, value = int(Decimal(str(item[0])) * 1000), Decimal(str(item[1]))
        except ArithmeticError:
            raise r.error(key, item, allowed) from None
        points.append((when, value))
    if [p[0] for p in points] != sorted(p[0] for p in points):
        raise r.error(key, raw, allowed)
    return tuple(points)


def _path(r: Reader, folder: Path) -> PathSpec:
    kind = r.string("kind", choices=PATH_KINDS)
    shocks = _points(r, "shocks") if r.has("shocks") else ()
    if kind == "constant":
        spec = PathSpec(kind, price=r.decimal("price", positive=True), shocks=shocks)
    elif kind in ("linear", "steps"):
        points = _points(r, "points")
        if any(p <= 0 for _, p in points):
            raise r.error("points", [[t / 1000, str(p)] for t, p in points], "positive prices")
        spec = PathSpec(kind, points=points, shocks=shocks)
    elif kind == "gbm":
        spec = PathSpec(kind, price=r.decimal("start", positive=True), drift=r.decimal("drift", required=False, default=Decimal(0)),
                        volatility=r.decimal("volatility", minimum=Decimal(0)),
                        step_ms=_ms(r, "step", required=False, default=Decimal(1), positive=True), shocks=shocks)
    else:
        file = folder / r.string("file")
        if not file.is_file():
            raise r.error("file", str(file), "a CSV file of time,price rows next to the scenario")
        spec = PathSpec(kind, file=file, shocks=shocks)
    r.done()
    return spec


def _premium(r: Reader) -> PathSpec:
    """A perp's mark premium over its index: a constant ``premium`` or ``points`` of fractions."""
    if r.has("premium"):
        spec = PathSpec("constant", price=r.decimal("premium", minimum=Decimal("-0.5"), maximum=Decimal("0.5")))
    else:
        spec = PathSpec("linear", points=_points(r, "points"))
    r.done()
    return spec


def _markets(r: Reader, key: str, profile: Profile, required: bool = True) -> tuple[str, ...]:
    markets = r.string_list(key, required=required, default=[])
    for i, market in enumerate(markets):
        if market not in profile.markets:
            raise r.error(f"{key}[{i}]", market, "a market of the profile: " + ", ".join(profile.markets),
                          did_you_mean(market, list(profile.markets)))
    return tuple(markets)


def _assets_table(r: Reader, key: str, profile: Profile, required: bool = False) -> dict[str, Decimal]:
    table = r.table(key, required=required)
    if table is None:
        return {}
    out = {}
    for asset in list(table.data):
        if asset not in profile.assets:
            raise table.error(asset, asset, "an asset of the profile: " + ", ".join(profile.assets),
                              did_you_mean(asset, list(profile.assets)))
        out[asset] = table.decimal(asset, positive=True)
    table.done()
    return out


def _account_ref(r: Reader, key: str, known: set[str]) -> str:
    account = r.string(key)
    if account not in known:
        raise r.error(key, account, "the id of an account: " + ", ".join(sorted(known)), did_you_mean(account, sorted(known)))
    return account


def _account(r: Reader, profile: Profile) -> AccountSpec:
    account_id = r.string("id")
    spec = AccountSpec(
        id=account_id,
        owner=r.string("owner", required=False, default=account_id),
        deposits=_assets_table(r, "deposits", profile),
        leverage_limit=r.decimal("leverage_limit", required=False, default=profile.default_leverage_limit,
                                 minimum=Decimal(1), maximum=profile.max_leverage_limit),
        auto_lend=r.boolean("auto_lend", required=False, default=False),
        auto_borrow_settlements=r.boolean("auto_borrow_settlements", required=False, default=True),
        auto_repay_borrows=r.boolean("auto_repay_borrows", required=False, default=False),
        markets=_markets(r, "markets", profile, required=False),
    )
    r.done()
    return spec


def _size(r: Reader, key: str, markets: tuple[str, ...]) -> Decimal | dict[str, Decimal]:
    raw = r.raw(key)
    if isinstance(raw, Mapping):
        table = r.table(key)
        assert table is not None
        sizes = {m: table.decimal(m, positive=True) for m in list(table.data)}
        table.done(allowed_extra=())
        missing = [m for m in markets if m not in sizes]
        if missing:
            raise r.error(key, dict(raw), "a size for every market: missing " + ", ".join(missing))
        return sizes
    return r.decimal(key, positive=True)


def _maker(r: Reader, profile: Profile, known: set[str]) -> MakerSpec:
    markets = _markets(r, "markets", profile)
    spec = MakerSpec(
        name=r.string("name"),
        account=_account_ref(r, "account", known),
        markets=markets,
        size=_size(r, "size", markets),
        spread_bps=r.decimal("spread_bps", required=False, default=Decimal(10), minimum=Decimal(0)),
        levels=r.integer("levels", required=False, default=5, minimum=1, maximum=50),
        spacing_bps=r.decimal("spacing_bps", required=False, default=Decimal(5), minimum=Decimal(0)),
        refresh_ms=_ms(r, "refresh", required=False, default=Decimal(1), positive=True),
    )
    r.done()
    return spec


def _share(r: Reader, key: str, default: str) -> float:
    return float(r.decimal(key, required=False, default=Decimal(default), minimum=Decimal(0), maximum=Decimal(1)))


def _noise(r: Reader, profile: Profile, known: set[str]) -> NoiseSpec:
    markets = _markets(r, "markets", profile)
    raw_steps = r.raw("max_steps", required=False, default=10)
    if isinstance(raw_steps, Mapping):
        table = r.table("max_steps")
        assert table is not None
        max_steps: int | dict[str, int] = {m: table.integer(m, minimum=1) for m in list(table.data)}
        table.done()
    else:
        max_steps = r.integer("max_steps", required=False, default=10, minimum=1)
    spec = NoiseSpec(
        name=r.string("name"),
        account=_account_ref(r, "account", known),
        markets=markets,
        interval_ms=_ms(r, "interval", required=False, default=Decimal(1), positive=True),
        max_steps=max_steps,
        market_share=_share(r, "market_share", "0.3"),
        within_bps=r.integer("within_bps", required=False, default=20, minimum=0),
        reduce_only_share=_share(r, "reduce_only_share", "0.1"),
        ioc_share=_share(r, "ioc_share", "0.2"),
        auto_borrow_share=_share(r, "auto_borrow_share", "0"),
        post_only_share=_share(r, "post_only_share", "0"),
        top_up=r.decimal("top_up", required=False, default=Decimal(0), minimum=Decimal(0)),
    )
    r.done()
    return spec


def _backstop(r: Reader, profile: Profile, known: set[str]) -> tuple[str, dict[str, Decimal]]:
    account = _account_ref(r, "account", known)
    table = r.table("capacity")
    assert table is not None
    capacity = {}
    for symbol in list(table.data):
        if symbol not in profile.markets and symbol not in profile.assets:
            raise table.error(symbol, symbol, "a perp market or an asset (USD notional it takes)",
                              did_you_mean(symbol, list(profile.markets) + list(profile.assets)))
        capacity[symbol] = table.decimal(symbol, positive=True)
    table.done()
    r.done()
    return account, capacity


def _fault(r: Reader) -> Fault:
    kind = r.string("kind", choices=("hold", "delay", "reorder"))
    fault = Fault(kind, r.string("from"), r.string("to"), _ms(r, "start", minimum=Decimal(0)),
                  _ms(r, "end", positive=True), r.integer("ms", required=False, default=0, minimum=0))
    r.done()
    return fault


def _action(r: Reader, index: int, profile: Profile, known: set[str], accounts: tuple[AccountSpec, ...]) -> ActionSpec:
    at_ms = _ms(r, "at", minimum=Decimal(0))
    account = _account_ref(r, "account", known)
    kind = r.string("type", choices=ACTION_TYPES)
    label = r.string("id", required=False, default=f"{account}-{index + 1}")
    message: object
    if kind == "order":
        message = PlaceOrder(_order(r, label, account, profile))
    elif kind == "cancel":
        message = CancelOrder(r.string("market", choices=tuple(profile.markets)), r.string("order"))
    elif kind == "cancel_all":
        message = CancelAll(r.string("market", required=False, default=None, choices=tuple(profile.markets)))
    elif kind in ("deposit", "withdraw", "lend", "redeem", "borrow", "repay"):
        asset = r.string("asset", choices=tuple(profile.assets))
        quantity = r.decimal("quantity", positive=True)
        if kind == "deposit":
            message = Deposit(asset, quantity, label)
        elif kind == "withdraw":
            message = Withdraw(label, asset, quantity, r.boolean("auto_borrow", required=False, default=False))
        else:
            message = LoanRequest(label, kind, asset, quantity)
    elif kind == "transfer":
        target = _account_ref(r, "target", known)
        owners = {a.id: a.owner for a in accounts}
        if owners[target] != owners[account]:
            raise r.error("target", target, f"a sub-account of the same owner ({owners[account]})")
        message = TransferOut(label, target, r.string("asset", choices=tuple(profile.assets)), r.decimal("quantity", positive=True))
    else:
        message = UpdateSettings(
            label,
            r.optional_decimal("leverage_limit", minimum=Decimal(1), maximum=profile.max_leverage_limit),
            r.boolean("auto_lend", required=False, default=None),
            r.boolean("auto_borrow_settlements", required=False, default=None),
            r.boolean("auto_repay_borrows", required=False, default=None),
        )
    r.done()
    return ActionSpec(at_ms, account, message, label)


def _order(r: Reader, label: str, account: str, profile: Profile) -> Order:
    market = r.string("market", choices=tuple(profile.markets))
    side = SIDES[r.string("side", choices=tuple(SIDES))]
    price = r.optional_decimal("price", positive=True)
    quantity = r.optional_decimal("quantity", positive=True)
    quote = r.optional_decimal("quote_quantity", positive=True)
    if quantity is None and quote is None:
        raise r.error("quantity", None, "a quantity (or, for a market order, a quote_quantity)")
    tif = r.string("time_in_force", required=False, default="GTC", choices=tuple(t.value for t in TimeInForce))
    stp = r.string("self_trade_prevention", required=False, default="RejectTaker",
                   choices=tuple(s.value for s in SelfTradePrevention))
    flags = {name: r.boolean(name, required=False, default=False)
             for name in ("post_only", "reduce_only", "auto_borrow", "auto_borrow_repay", "auto_lend", "auto_lend_redeem")}
    return Order(label, account, market, side, OrderType.LIMIT if price is not None else OrderType.MARKET, quantity,
                 price, quote, TimeInForce(tif), self_trade_prevention=SelfTradePrevention(stp), **flags)


def _expectation(r: Reader, profile: Profile, known: set[str], orders: set[str]) -> Expectation:
    kind = r.string("kind", choices=EXPECTATION_KINDS)
    params: dict[str, Any] = {}
    if kind in ("refused", "accepted"):
        order = r.string("order")
        if order not in orders:
            raise r.error("order", order, "the id of an order action: " + ", ".join(sorted(orders)),
                          did_you_mean(order, sorted(orders)))
        params["order"] = order
        if kind == "refused":
            params["code"] = r.string("code", required=False, default=None)
            params["max_quantity"] = r.optional_decimal("max_quantity")
    elif kind in ("fund", "funding_paid", "trades"):
        if kind == "fund":
            params["asset"] = r.string("asset", required=False, default=profile.settlement_asset,
                                       choices=tuple(profile.assets))
        else:
            params["market"] = r.string("market", choices=tuple(profile.markets))
    else:
        params["account"] = _account_ref(r, "account", known)
        if kind in ("position",):
            params["market"] = r.string("market", choices=tuple(profile.markets))
        if kind in ("balance", "borrow", "lend"):
            params["asset"] = r.string("asset", choices=tuple(profile.assets))
        if kind == "liquidation_stage":
            params["stage"] = r.string("stage", choices=("start", "book", "conversion", "backstop", "adl", "waiting",
                                                         "bankruptcy", "healthy", "closed", "fund"))
        if kind in ("liquidated", "liquidation_stage"):
            # Alone, ``at_most`` counts from 0 (``at_most = 0``: never that stage); alone, at_least is 1.
            params["max"] = r.integer("at_most", required=False, default=None, minimum=0)
            params["min"] = r.integer("at_least", required=False, default=1 if params["max"] is None else 0, minimum=0)
            if params["max"] is not None and params["max"] < params["min"]:
                raise r.error("at_most", params["max"], f"at least at_least ({params['min']}), or the expectation "
                                                         "can never pass")
    if kind not in ("refused", "accepted", "liquidated", "not_liquidated", "liquidation_stage"):
        params["min"] = r.optional_decimal("min")
        params["max"] = r.optional_decimal("max")
        if params["min"] is None and params["max"] is None:
            raise r.error("min", None, "a min, a max, or both")
        if params["min"] is not None and params["max"] is not None and params["min"] > params["max"]:
            raise r.error("max", params["max"], f"at least min ({params['min']}), or the expectation can never pass")
    if kind in ("net_equity", "imr", "mmr", "position", "balance", "borrow", "lend", "unsettled_equity"):
        params["at_ms"] = _ms(r, "at", minimum=Decimal(0)) if r.has("at") else None
    expectation = Expectation(kind, params, r.path)
    r.done()
    return expectation
