"""Scenario files: a declarative TOML description of a run, loaded and checked before anything runs.

A malformed file is refused with the file, the line, the field path (``accounts[2].deposits.USDC``),
what was found and what is allowed; an unknown key is an error with a did-you-mean. The format
is documented field by field in ``scenarios/FORMAT.md``; the shipped scenarios in
``scenarios/library/`` are examples of every part of it.
"""

from __future__ import annotations

import csv
import io
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
from exchange.profile import MAX_QUANTITY, Asset, Profile, available_profiles, load_profile
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
from exchange.validation import MAX_SECONDS, InputError, Reader, did_you_mean, join_path, read_user_file

SIDES = {"buy": Side.BID, "bid": Side.BID, "sell": Side.ASK, "ask": Side.ASK}
ACTION_TYPES = ("order", "cancel", "cancel_all", "deposit", "withdraw", "transfer", "settings", "lend", "redeem",
                "borrow", "repay")
PATH_KINDS = ("constant", "linear", "steps", "gbm", "csv")
MAX_SEED = 2**63 - 1
MAX_SHOCK = Decimal(10)  # a shock at most multiplies a price by 11
MAX_PREMIUM = Decimal("0.5")  # a mark within +-50% of its index
MAX_DRIFT = Decimal(100000)  # annual drift of a random walk (a crash scenario uses -6,000)
MAX_VOLATILITY = Decimal(1000)  # annual: 100,000%
MAX_DRIFT_MOVE = Decimal(5)  # |drift| x the run's length in years
MAX_NOISE_MOVE = Decimal(2)  # volatility x sqrt(the run's length in years)
YEAR_MS = Decimal(365 * 24 * 3600 * 1000)
MAX_BPS = Decimal(10000)
MAX_STEPS = 10**9
MAX_LATENCY_MS = int(MAX_SECONDS) * 1000
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
    api_key: str | None = None  # marginsim serve: base64 ED25519 public key (checked by api.auth)


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
            found = "a directory" if path.is_dir() else "no such file"
            raise InputError(str(path), "<file>", found, "a scenario .toml file or the name of a shipped scenario")
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
    return loads(read_user_file(path, "TOML scenario file"), str(path), path.parent, overrides)


def loads(text: str, source: str, folder: Path, overrides: list[str] | None = None) -> Scenario:
    """A scenario from its TOML text; ``source`` names it in errors, ``folder`` is where its
    relative paths (CSV prices) start. ``load`` reads a file into this."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        line = _decode_line(str(exc))
        raise InputError(source, "<file>", str(exc), "valid TOML", line=line) from None
    assigned: dict[str, str] = {}  # field path -> the --set that gave it
    for assignment in overrides or []:
        data = apply_override(data, assignment, source)
        assigned[_canonical(assignment.split("=", 1)[0])] = assignment
    try:
        return _parse(data, source, folder)
    except InputError as exc:
        setter = next((a for key, a in assigned.items() if exc.field == key or exc.field.startswith((key + ".", key + "["))), None)
        if setter is not None and exc.source == source:  # the value came from the command line
            exc = InputError(f"--set {setter}", exc.field, exc.found, exc.allowed, hint=exc.hint)
        elif exc.line is None and exc.source == source:
            exc = InputError(exc.source, exc.field, exc.found, exc.allowed, line=locate(text, exc.field), hint=exc.hint)
        raise exc from None


def _canonical(key: str) -> str:
    """A --set key as the loader names fields: ``accounts[0].id``."""
    return ".".join(f"{n}[{i}]" if i is not None else n for n, i in _segments(key.strip())) or key.strip()


def _decode_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def apply_override(data: dict[str, Any], assignment: str, source: str) -> dict[str, Any]:
    """``key.path=value`` (``accounts[0].leverage_limit=20``): the value is read as TOML, or
    taken as a string when it is not TOML (``scenario.profile=backpack-2025-10``)."""
    where = f"--set {assignment}"
    if "=" not in assignment:
        raise InputError(where, "KEY=VALUE", assignment, "key=value, e.g. scenario.seed=7")
    key, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}", parse_float=Decimal)["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    segments = _segments(key.strip())
    if not segments:
        raise InputError(where, key, key, "a field path, e.g. accounts[0].leverage_limit (an array entry by [index])")
    target: Any = data
    walked: list[str] = []
    for i, (name, index) in enumerate(segments):
        last = i == len(segments) - 1
        here = ".".join(walked + [name])
        if not isinstance(target, dict):
            raise InputError(where, key, target, f"a path through tables: {'.'.join(walked)} is not a table")
        if isinstance(target.get(name), list) and index is None:
            example = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key.strip())
            raise InputError(where, key, f"{here} is an array", "an entry by its index, e.g. "
                             + (example if example != key.strip() else f"{here}[0]"))
        if index is None:
            if last:
                target[name] = value
            else:
                target = target.setdefault(name, {})
        else:
            items = target.get(name)
            if not isinstance(items, list) or index >= len(items):
                count = f"{len(items)} entries" if isinstance(items, list) else "no such array"
                raise InputError(where, key, count, f"an existing {name}[...] entry (numbered from 0)")
            if last:
                items[index] = value
            else:
                target = items[index]
        walked.append(f"{name}[{index}]" if index is not None else name)
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
        # A target without an index (an unknown array such as ``expectations``) is found at its first table.
        if name != t_name or (index is not None and t_index is not None and index != t_index):
            break
        depth += 1
    return depth


# ---------------------------------------------------------------------------------------
# Validation


def _parse(data: Mapping[str, Any], source: str, folder: Path) -> Scenario:
    top = Reader(data, source)
    head = top.table("scenario")
    assert head is not None
    name = head.string("name")
    description = head.string("description", required=False, default="")
    profile_name = head.string("profile", required=False, default="backpack")
    seed = head.integer("seed", required=False, default=1, minimum=0, maximum=MAX_SEED)
    duration_ms = head.millis("duration", positive=True)
    price_interval_ms = head.millis("price_interval", required=False, default=Decimal(1), positive=True)
    sample_ms = head.millis("sample_interval", required=False, default=Decimal(1), positive=True)
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
            prices[symbol] = _path(table, folder, profile.max_price(symbol), duration_ms)
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
    actions = tuple(_action(r, i, profile, known, accounts, duration_ms)
                    for i, r in enumerate(top.array("actions", required=False)))
    faults = tuple(_fault(r) for r in top.array("faults", required=False))
    order_ids = [a.label for a in actions if isinstance(a.message, PlaceOrder)]
    expectations = tuple(_expectation(r, profile, known, set(order_ids), duration_ms)
                         for r in top.array("expect", required=False))
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
    ms = r.integer("ms", required=False, default=0, minimum=0, maximum=MAX_LATENCY_MS)
    jitter = r.integer("jitter", required=False, default=0, minimum=0, maximum=MAX_LATENCY_MS)
    return Latency(kind, ms, jitter)


def _points(r: Reader, key: str, what: str, low: Decimal, high: Decimal, *, strict_low: bool = False,
            example: str = "[[0, 100000], [60, 95000]]") -> tuple[tuple[int, Decimal], ...]:
    """``[seconds, value]`` pairs in time order: times in whole milliseconds within the run's
    bound, each value within ``low`` (excluded when ``strict_low``) and ``high``."""
    raw = r.raw(key)
    bound = f"> {low}" if strict_low else f">= {low}"
    allowed = (f"a list of [seconds, {what}] pairs in time order, seconds 0 to {MAX_SECONDS} in whole milliseconds, "
               f"each {what} {bound} and <= {high}, e.g. {example}")
    if not isinstance(raw, list) or not raw:
        raise r.error(key, raw, allowed)
    points = []
    for i, item in enumerate(raw):
        if not isinstance(item, list) or len(item) != 2:
            raise r.error(f"{key}[{i}]", item, allowed)
        pair = Reader({"seconds": item[0], what: item[1]}, r.source, join_path(r.path, f"{key}[{i}]"))
        try:
            when = pair.millis("seconds")
            value = pair.decimal(what, minimum=None if strict_low else low, maximum=high)
        except InputError:
            raise r.error(f"{key}[{i}]", item, allowed) from None
        if strict_low and value <= low:
            raise r.error(f"{key}[{i}]", item, allowed)
        points.append((when, value))
    if [p[0] for p in points] != sorted(p[0] for p in points):
        raise r.error(key, raw, allowed)
    return tuple(points)


def _price(r: Reader, key: str, high: Decimal) -> Decimal:
    return r.decimal(key, positive=True, maximum=high)


def _path(r: Reader, folder: Path, high: Decimal, duration_ms: int) -> PathSpec:
    """An index path; its prices (after every shock) stay positive and at most ``high``. A
    random walk cannot promise that, so its drift and volatility are bounded over the run's
    length instead (see ``_walk_bounds``)."""
    kind = r.string("kind", choices=PATH_KINDS)
    # A shock multiplies the price by (1 + change): above -1, or the price would reach zero.
    shocks = (_points(r, "shocks", "change", Decimal(-1), MAX_SHOCK, strict_low=True, example="[[30, -0.10]]")
              if r.has("shocks") else ())
    if kind == "constant":
        spec = PathSpec(kind, price=_price(r, "price", high), shocks=shocks)
        extremes = [spec.price]
    elif kind in ("linear", "steps"):
        points = _points(r, "points", "price", Decimal(0), high, strict_low=True)
        spec = PathSpec(kind, points=points, shocks=shocks)
        extremes = [p for _, p in points]
    elif kind == "gbm":
        spec = PathSpec(kind, price=_price(r, "start", high),
                        drift=r.decimal("drift", required=False, default=Decimal(0), minimum=-MAX_DRIFT,
                                        maximum=MAX_DRIFT),
                        volatility=r.decimal("volatility", minimum=Decimal(0), maximum=MAX_VOLATILITY),
                        step_ms=r.millis("step", required=False, default=Decimal(1), positive=True), shocks=shocks)
        _walk_bounds(r, spec, duration_ms)
        extremes = [spec.price]
    else:
        spec = PathSpec(kind, points=_csv(r, folder, high), shocks=shocks)
        extremes = [p for _, p in spec.points]
    rise = Decimal(1)
    for _, change in shocks:
        rise *= max(1 + change, Decimal(1))
    if shocks and max(extremes) * rise > high:
        raise r.error("shocks", [[Decimal(t) / 1000, c] for t, c in shocks],
                      f"shocks that keep the price at most {high} (the profile's maximum price): "
                      f"{max(extremes)} would reach {max(extremes) * rise}")
    r.done()
    return spec


def _walk_bounds(r: Reader, spec: PathSpec, duration_ms: int) -> None:
    """Over the whole run the drift alone may move a random walk by a factor of at most e^5
    (148x), and one standard deviation of its noise by at most e^2 (7.4x): beyond that its
    prices leave any range a venue quotes (and Decimal's digits) long before the run ends."""
    years = Decimal(duration_ms) / YEAR_MS
    moved = abs(spec.drift) * years
    if moved > MAX_DRIFT_MOVE:
        raise r.error("drift", spec.drift, f"an annual drift whose move over the run's {Decimal(duration_ms) / 1000} s, "
                      f"|drift| x years, is at most {MAX_DRIFT_MOVE} (this one is {moved:.4f})")
    spread = spec.volatility * years.sqrt()
    if spread > MAX_NOISE_MOVE:
        raise r.error("volatility", spec.volatility, f"an annual volatility whose spread over the run's "
                      f"{Decimal(duration_ms) / 1000} s, volatility x sqrt(years), is at most {MAX_NOISE_MOVE} "
                      f"(this one is {spread:.4f})")


def _csv(r: Reader, folder: Path, high: Decimal) -> tuple[tuple[int, Decimal], ...]:
    """A CSV file of ``time,price`` rows (seconds; a header row is allowed), checked row by row."""
    name = r.string("file")
    file = folder / name
    if not file.is_file():
        raise r.error("file", name, f"a CSV file of time,price rows next to the scenario ({file} is "
                      + ("a directory)" if file.is_dir() else "not there)"))
    text = read_user_file(file, "CSV file")
    allowed = (f"a row `seconds,price`: seconds 0 to {MAX_SECONDS} in whole milliseconds, in time order, and a "
               f"price > 0 and <= {high}")
    points: list[tuple[int, Decimal]] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or (number == 1 and row[0].strip().lower() in ("time", "t", "seconds")):
            continue
        cells = [c.strip() for c in row]
        if len(cells) != 2:
            raise InputError(str(file), f"row {number}", ",".join(row), allowed, line=number)
        pair = Reader({"seconds": cells[0], "price": cells[1]}, str(file), f"row {number}")
        try:
            when, price = pair.millis("seconds"), _price(pair, "price", high)
        except InputError:
            raise InputError(str(file), f"row {number}", ",".join(row), allowed, line=number) from None
        if points and when < points[-1][0]:
            raise InputError(str(file), f"row {number}", ",".join(row), allowed + " (this row goes back in time)",
                             line=number)
        points.append((when, price))
    if not points:
        raise InputError(str(file), "<file>", "no time,price rows", allowed)
    return tuple(points)


def _premium(r: Reader) -> PathSpec:
    """A perp's mark premium over its index: a constant ``premium`` or ``points`` of fractions,
    within +-50% (so the mark stays positive)."""
    top = MAX_PREMIUM
    if r.has("premium"):
        spec = PathSpec("constant", price=r.decimal("premium", minimum=-MAX_PREMIUM, maximum=top))
    else:
        spec = PathSpec("linear", points=_points(r, "points", "premium", -MAX_PREMIUM, top,
                                                 example="[[0, 0], [60, 0.001]]"))
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
        out[asset] = _quantity(table, asset, profile.assets[asset])
    table.done()
    return out


def _quantity(r: Reader, key: str, asset: Asset, *, required: bool = True) -> Decimal:
    """A quantity of ``asset``: positive, on the asset's step, within its range."""
    return r.decimal(key, required=required, positive=True, maximum=asset.max_quantity, step=asset.step,
                     unit=f"the {asset.symbol} step")


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
        api_key=r.string("api_key", required=False, default=None),
    )
    r.done()
    return spec


def _size(r: Reader, key: str, markets: tuple[str, ...]) -> Decimal | dict[str, Decimal]:
    raw = r.raw(key)
    if isinstance(raw, Mapping):
        table = r.table(key)
        assert table is not None
        sizes = {m: table.decimal(m, positive=True, maximum=MAX_QUANTITY) for m in list(table.data)}
        table.done(allowed_extra=())
        missing = [m for m in markets if m not in sizes]
        if missing:
            raise r.error(key, dict(raw), "a size for every market: missing " + ", ".join(missing))
        return sizes
    return r.decimal(key, positive=True, maximum=MAX_QUANTITY)


def _maker(r: Reader, profile: Profile, known: set[str]) -> MakerSpec:
    markets = _markets(r, "markets", profile)
    spec = MakerSpec(
        name=r.string("name"),
        account=_account_ref(r, "account", known),
        markets=markets,
        size=_size(r, "size", markets),
        spread_bps=r.decimal("spread_bps", required=False, default=Decimal(10), minimum=Decimal(0),
                             maximum=MAX_BPS),
        levels=r.integer("levels", required=False, default=5, minimum=1, maximum=50),
        spacing_bps=r.decimal("spacing_bps", required=False, default=Decimal(5), minimum=Decimal(0),
                              maximum=MAX_BPS),
        refresh_ms=r.millis("refresh", required=False, default=Decimal(1), positive=True),
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
        max_steps: int | dict[str, int] = {m: table.integer(m, minimum=1, maximum=MAX_STEPS) for m in list(table.data)}
        table.done()
    else:
        max_steps = r.integer("max_steps", required=False, default=10, minimum=1, maximum=MAX_STEPS)
    spec = NoiseSpec(
        name=r.string("name"),
        account=_account_ref(r, "account", known),
        markets=markets,
        interval_ms=r.millis("interval", required=False, default=Decimal(1), positive=True),
        max_steps=max_steps,
        market_share=_share(r, "market_share", "0.3"),
        within_bps=r.integer("within_bps", required=False, default=20, minimum=0, maximum=int(MAX_BPS)),
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
        capacity[symbol] = table.decimal(symbol, positive=True, maximum=MAX_QUANTITY)
    table.done()
    r.done()
    return account, capacity


def _fault(r: Reader) -> Fault:
    kind = r.string("kind", choices=("hold", "delay", "reorder"))
    start_ms, end_ms = r.millis("start"), r.millis("end", positive=True)
    if end_ms <= start_ms:
        raise r.error("end", Decimal(end_ms) / 1000, f"a time after start ({Decimal(start_ms) / 1000} s): "
                      "a fault window ends after it begins")
    fault = Fault(kind, r.string("from"), r.string("to"), start_ms, end_ms,
                  r.integer("ms", required=False, default=0, minimum=0, maximum=MAX_LATENCY_MS))
    r.done()
    return fault


def _action(r: Reader, index: int, profile: Profile, known: set[str], accounts: tuple[AccountSpec, ...],
            duration_ms: int) -> ActionSpec:
    at_ms = _within_run(r, "at", duration_ms, "an action after it would never be sent")
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
        quantity = _quantity(r, "quantity", profile.assets[asset])
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
        asset = r.string("asset", choices=tuple(profile.assets))
        message = TransferOut(label, target, asset, _quantity(r, "quantity", profile.assets[asset]))
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
    spec = profile.markets[market]
    price = r.optional_decimal("price", positive=True, maximum=spec.bands.max_price)
    quantity = r.optional_decimal("quantity", positive=True, maximum=profile.assets[spec.base].max_quantity)
    quote = r.optional_decimal("quote_quantity", positive=True, maximum=profile.assets[spec.quote].max_quantity)
    if quantity is None and quote is None:
        raise r.error("quantity", None, "a quantity (or, for a market order, a quote_quantity)")
    tif = r.string("time_in_force", required=False, default="GTC", choices=tuple(t.value for t in TimeInForce))
    stp = r.string("self_trade_prevention", required=False, default="RejectTaker",
                   choices=tuple(s.value for s in SelfTradePrevention))
    flags = {name: r.boolean(name, required=False, default=False)
             for name in ("post_only", "reduce_only", "auto_borrow", "auto_borrow_repay", "auto_lend", "auto_lend_redeem")}
    return Order(label, account, market, side, OrderType.LIMIT if price is not None else OrderType.MARKET, quantity,
                 price, quote, TimeInForce(tif), self_trade_prevention=SelfTradePrevention(stp), **flags)


def _within_run(r: Reader, key: str, duration_ms: int, why: str) -> int:
    """A time in the run: from 0 to its duration (``why`` says what a later one would mean)."""
    at_ms = r.millis(key)
    if at_ms > duration_ms:
        raise r.error(key, r.raw(key), f"a time from 0 to the run's duration, {Decimal(duration_ms) / 1000} s ({why})")
    return at_ms


def _expectation(r: Reader, profile: Profile, known: set[str], orders: set[str], duration_ms: int) -> Expectation:
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
        params["at_ms"] = (_within_run(r, "at", duration_ms, "no sample is taken after the end")
                           if r.has("at") else None)
    expectation = Expectation(kind, params, r.path)
    r.done()
    return expectation
