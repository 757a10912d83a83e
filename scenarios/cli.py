"""The ``marginsim`` command line."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from importlib.metadata import PackageNotFoundError, version

from exchange import margin
from exchange.decimals import fmt, fmt_pct
from exchange.ledger import Settings, SubAccount
from exchange.orders import Fill, Side
from exchange.profile import available_profiles, load_profile
from exchange.validation import InputError


def _version() -> str:
    try:
        return version("marginsim")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marginsim",
        description="Simulate Backpack Exchange's unified cross-margin system.",
    )
    parser.add_argument("--version", action="version", version=f"marginsim {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    position = commands.add_parser(
        "position",
        help="margin numbers of one perp position on USDC collateral",
        description=(
            "Open one perp position on a fresh sub-account holding only USDC and print its "
            "margin: net equity, IMF/MMF, IMR/MMR, available equity and the estimated "
            "liquidation price. Fees and funding are left out."
        ),
    )
    position.add_argument("--market", default="BTC_USDC_PERP", help="perp market (default %(default)s)")
    position.add_argument("--collateral", type=_decimal, default=Decimal(10000), help="USDC deposited (default %(default)s)")
    position.add_argument("--size", type=_decimal, default=Decimal(1), help="signed position size in base units; negative for a short (default %(default)s)")
    position.add_argument("--entry", type=_decimal, default=Decimal(100000), help="entry price (default %(default)s)")
    position.add_argument("--mark", type=_decimal, help="mark price (default: the entry price)")
    position.add_argument("--leverage", type=_decimal, help="sub-account leverage limit (default: the profile's)")
    position.add_argument("--profile", default="backpack", help="venue profile: " + ", ".join(available_profiles()) + " or a .toml path")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "position":
            return _position(args)
    except InputError as exc:
        print(f"marginsim: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def _position(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    market = profile.markets.get(args.market)
    if market is None or not market.is_perp:
        perps = ", ".join(m.symbol for m in profile.perp_markets())
        print(f"marginsim: --market {args.market} is not a perp market of {profile.name}; choose one of {perps}", file=sys.stderr)
        return 2
    if args.size == 0 or args.size % market.step_size != 0:
        print(f"marginsim: --size must be a non-zero multiple of {market.step_size}", file=sys.stderr)
        return 2
    leverage = args.leverage if args.leverage is not None else profile.default_leverage_limit
    if not 1 <= leverage <= profile.max_leverage_limit:
        print(f"marginsim: --leverage must be between 1 and {profile.max_leverage_limit}", file=sys.stderr)
        return 2
    mark = args.mark if args.mark is not None else args.entry
    account = SubAccount("example", profile, settings=Settings(leverage_limit=leverage))
    account.deposit(profile.settlement_asset, args.collateral)
    account.set_mark(market.symbol, mark)
    account.set_mark(market.base, mark)
    side = Side.BID if args.size > 0 else Side.ASK
    quantity = abs(args.size)
    account.apply_fill(
        Fill(0, market.symbol, "example", account.id, side, args.entry, quantity, quantity * args.entry, Decimal(0), market.quote, False),
        market,
    )
    summary = margin.summarize(account)
    (risk,) = summary.exposures
    estimate = margin.estimate_liquidation_price(account, market.symbol)
    direction = "long" if args.size > 0 else "short"
    lines = [
        f"{direction} {fmt(quantity)} {market.symbol} at {fmt(args.entry)}, mark {fmt(mark)}, "
        f"{fmt(args.collateral)} {profile.settlement_asset} collateral, leverage limit {fmt(leverage)}x ({profile.name})",
        "",
        f"  position notional      {fmt(risk.position_notional, 2)}",
        f"  unrealized PnL         {fmt(summary.pnl_unrealized, 2)}",
        f"  net equity             {fmt(summary.net_equity, 2)}",
        f"  IMF                    {fmt(risk.imf, 8)}   (set by {_imf_source(risk.imf_source)})",
        f"  MMF                    {fmt(risk.mmf, 8)}",
        f"  locked (initial)       {fmt(summary.net_equity_locked, 2)}",
        f"  available equity       {fmt(summary.net_equity_available, 2)}",
        f"  maintenance margin     {fmt(summary.maintenance_requirement, 2)}",
        f"  margin fraction        {fmt(summary.margin_fraction, 6)}",
        f"  IMR                    {fmt_pct(summary.imr, 3)}   (orders that add risk are refused at 100%)",
        f"  MMR                    {fmt_pct(summary.mmr, 3)}   (liquidation starts at 100%)",
        f"  est. liquidation price {fmt(estimate.price, 2)}   ({estimate.method}: {estimate.reason})",
    ]
    print("\n".join(lines))
    return 0


def _imf_source(source: str) -> str:
    return {
        "base": "the market's base IMF, its maximum leverage",
        "size": "the position's size: the sqrt term is above the base",
        "leverage_limit": "the sub-account's leverage limit",
    }[source]


if __name__ == "__main__":
    sys.exit(main())
