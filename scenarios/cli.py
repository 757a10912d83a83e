"""The ``marginsim`` command line: run, list, explain, export, sweep, demo, fuzz, position, serve, replay.

Exit status: 0 when a run's expectations all hold, 1 when one fails (or the run stopped early:
an actor crashed, an invariant broke, it stalled), 2 when the input is bad (the message names
the file and line, the --set value or the flag, the field and what is allowed), 130 when Ctrl-C
or SIGTERM interrupted it (``interrupted at t=...``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.events import render
from actors.system import Interrupted
from exchange import margin
from exchange.decimals import floor_to, fmt, fmt_pct
from exchange.ledger import Settings, SubAccount
from exchange.liquidation import describe_estimate, describe_step
from exchange.orders import Fill, Side
from exchange.profile import MAX_QUANTITY, available_profiles, load_profile
from exchange.validation import MAX_SECONDS, MILLISECOND, InputError, did_you_mean
from scenarios import differential, explain, fuzz, loader, runner

HISTORY_LINES = 12  # liquidation steps printed per sub-account after a run
DEFAULT_RUNS = 100  # fuzz seeds when neither --runs nor --time-budget is given


def _version() -> str:
    try:
        return version("marginsim")
    except PackageNotFoundError:
        return "unknown (not installed)"


# -- flag values: each checked where it is parsed, so a bad one names its flag (exit 2) ----------


def _decimal(text: str) -> Decimal:
    """A finite decimal of a sane size (at most ``MAX_QUANTITY`` either way)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    if abs(value) > MAX_QUANTITY:
        raise argparse.ArgumentTypeError(f"{text} is out of range: at most {fmt(MAX_QUANTITY)} either way")
    return value


def _whole(text: str, low: int, high: int, what: str) -> int:
    """A whole number in [low, high]; ``what`` says what it is in the error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what}, not {value}")
    return value


def _seed(text: str) -> int:
    return _whole(text, 0, loader.MAX_SEED, f"a seed is a whole number from 0 to {loader.MAX_SEED}")


def _positive_int(text: str) -> int:
    return _whole(text, 1, 2**31, "must be at least 1 (and at most 2**31)")


def _port(text: str) -> int:
    return _whole(text, 0, 65535, "a port is 0 to 65535")


def _seconds(text: str) -> float:
    """Virtual seconds for --until: positive, whole milliseconds, at most the run-length bound."""
    value = _decimal(text)
    if value <= 0 or value > MAX_SECONDS or value % MILLISECOND:
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed: seconds > 0 and at most {fmt(MAX_SECONDS)} (30 days), in whole milliseconds")
    return float(value)


def _positive_seconds(text: str) -> float:
    """Wall-clock seconds (--time-budget) or a rate (--rate): positive and finite."""
    value = _decimal(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: a positive number")
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marginsim",
        description="Simulate Backpack Exchange's unified cross-margin system: run scenarios, explain what "
        "happened, watch it live.",
        epilog="Shipped scenarios: `marginsim list`. Scenario format: scenarios/FORMAT.md.",
    )
    parser.add_argument("--version", action="version", version=f"marginsim {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a scenario and check its expectations",
        description="Run a scenario file (or a shipped scenario by name) on the actor runtime, print a summary "
        "per sub-account and market, the expectations with pass/fail, and the run's fingerprint. Exit 0 when "
        "every expectation holds, 1 when one fails, 2 on a bad file or flag, 130 when interrupted (Ctrl-C, SIGTERM: "
        "the --log then ends with an `interrupted` event).",
    )
    run.add_argument("scenario", metavar="FILE", help="a scenario .toml file or a shipped scenario's name")
    _run_options(run)
    run.add_argument("--json", action="store_true", help="print the summary as one JSON document (keys in README)")
    run.add_argument("--log", type=Path, metavar="EVENTS.jsonl", help="write the event log (canonical JSON lines)")
    run.add_argument("--report", type=Path, metavar="DIR", help="write charts (PNG) and an HTML page into DIR")
    run.add_argument("--differential", action="store_true",
                     help="run it through the direct engine and through the actors (zero latency, no faults) "
                     "and say whether they agree exactly; exit 1 with the first difference if not")

    commands.add_parser("list", help="the scenarios that ship with marginsim", description="One line per shipped scenario.")

    explainer = commands.add_parser(
        "explain", help="why an order was refused, how an account was liquidated",
        description="Read an event log written by `marginsim run --log` (or run a scenario, as `marginsim run` "
        "does) and answer in plain words with the numbers. Without --account or --order: every refusal and "
        "liquidation, one line each. Given a scenario, how each account stood at the run's end (liquidation "
        "pending, bankrupt) is judged on its end state, as `run` judges it; from a log, on the closing health sample "
        "each account logs at the run's end. Exit 0 with an answer, 1 when the --order "
        "or --account is not in the run (the ids that are, listed), 2 on a bad file or flag.",
    )
    explainer.add_argument("log", type=Path, metavar="LOG|SCENARIO",
                           help="an events .jsonl file, or a scenario (.toml file or shipped name) to run")
    explainer.add_argument("--account", metavar="ID", help="explain this sub-account's liquidations and refusals")
    explainer.add_argument("--order", metavar="ID", help="explain this order")
    explainer.add_argument("--seed", type=_seed, help="SCENARIO: the run's seed (default: the scenario's)")

    exporter = commands.add_parser(
        "export", help="an event log as tables (CSV or Parquet): orders, fills, liquidation steps, ...",
        description="Read an event log written by `marginsim run --log` and write one table per kind into DIR: "
        "events, orders, fills, liquidation_steps, account_samples, funding, interest, transfers. CSV keeps the "
        "log's exact decimals; Parquet (pip install 'marginsim[data]') holds numbers as float64.",
    )
    exporter.add_argument("log", type=Path, metavar="LOG", help="an events .jsonl file")
    exporter.add_argument("--to", type=Path, metavar="DIR", required=True, help="the folder to write the tables into")
    exporter.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format (default csv)")

    sweeper = commands.add_parser(
        "sweep", help="a scenario over many seeds and a grid of settings, outcomes compared",
        description="Run SCENARIO at every seed for every combination of the --set values (their cartesian "
        "product), on a process pool of --jobs, and print per combination: liquidations started, bankruptcies, ADL "
        "steps and the liquidity fund's balance, each as mean, standard deviation, min and max across seeds.",
    )
    sweeper.add_argument("scenario", metavar="FILE", help="a scenario .toml file or a shipped scenario's name")
    sweeper.add_argument("--seeds", default="0..9", metavar="A..B", help="seeds: a range 0..99 (both ends) or a "
                         "list 1,2,5 (default 0..9)")
    sweeper.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2", dest="grid",
                         help="a field and the values to try, e.g. --set accounts[0].leverage_limit=5,10 (repeatable)")
    sweeper.add_argument("--jobs", type=_positive_int, default=1, help="worker processes (default 1)")
    sweeper.add_argument("--report", type=Path, metavar="DIR", help="write sweep.csv, runs.csv and sweep.png into DIR")

    demo = commands.add_parser(
        "demo", help="watch a scenario live in the terminal, or in a web page (--web)",
        description="Run a scenario at a readable clock rate with a live dashboard: prices, books, each "
        "sub-account's equity and IMR/MMR, fills, refusals and liquidation steps. It is the same run as "
        "`marginsim run` with the same seed (same fingerprint), only paced. Keys (in a terminal): space pause, "
        "s step one second, b one second back (every panel as it stood then), + / - speed, q skip to the end (the "
        "rest runs unseen at full speed, then the results).",
    )
    demo.add_argument("scenario", metavar="NAME", help="a shipped scenario's name or a scenario file")
    _run_options(demo)
    demo.add_argument("--rate", type=_positive_seconds, default=5.0,
                      help="virtual seconds per real second (default %(default)s)")
    demo.add_argument("--web", action="store_true", help="play it in a web page instead (prints its URL; offline, "
                      "nothing fetched from elsewhere): the run is computed, then the page plays its events")
    demo.add_argument("--port", type=_port, default=8000, help="--web: the port on 127.0.0.1 (default 8000; 0: any)")
    demo.add_argument("--log", type=Path, metavar="EVENTS.jsonl", help="--web: play this saved event log instead of "
                      "running the scenario")
    demo.add_argument("--start-paused", action="store_true", help="wait for play (space; in the page, its button)")
    demo.add_argument("--pause-on", action="append", default=[], choices=("liquidation", "bankruptcy", "refusal"),
                      help="stop the clock at the next such event (repeatable; space goes on)")

    fuzzer = commands.add_parser(
        "fuzz", help="hunt race conditions: random scenarios with seeded faults, checked live",
        description="Generate random valid scenarios (10 sub-accounts, two perps and a spot market, a market "
        "maker, noise traders, gamblers near their leverage cap, gaps and wicks in prices) with swarm-drawn "
        "faults (reordered, held and delayed links, a stale feed, a lagging liquidator). Each run is checked by "
        "the invariant observer and, after the faults stop, for liveness. Failures are saved with the command "
        "that replays them and a shrunk version. Exit 0 when every run passes, 1 otherwise; Ctrl-C prints the table "
        "of the runs that finished and exits 130.",
    )
    fuzzer.add_argument("--runs", type=_positive_int,
                        help=f"how many seeds (default {DEFAULT_RUNS}; with --time-budget alone, as many as fit)")
    fuzzer.add_argument("--seed", type=_seed, default=0, help="the first seed; runs take the next ones (default 0)")
    fuzzer.add_argument("--time-budget", type=_positive_seconds, metavar="SECONDS",
                        help="start no new run after this many seconds of wall time")
    fuzzer.add_argument("--jobs", type=_positive_int, default=1,
                        help="worker processes (default %(default)s; at most the cores you have)")
    fuzzer.add_argument("--out", type=Path, default=Path("fuzz-failures"), metavar="DIR",
                        help="where failing scenarios go (default %(default)s)")
    fuzzer.add_argument("--no-shrink", action="store_true", help="save failures without shrinking them")
    fuzzer.add_argument("--differential", action="store_true",
                        help="instead of hunting races, run each seed's scenario through the direct engine and "
                        "through the actors (zero latency, no faults) and fail on the first difference")

    position = commands.add_parser(
        "position", help="margin numbers of one perp position on USDC collateral",
        description="Open one perp position on a fresh sub-account holding only USDC and print its margin: net "
        "equity, IMF/MMF, IMR/MMR, available equity and the estimated liquidation price. Fees and funding are "
        "left out.",
    )
    position.add_argument("--market", default="BTC_USDC_PERP", help="perp market (default %(default)s)")
    position.add_argument("--collateral", type=_decimal, default=Decimal(10000),
                          help="USDC deposited, 0 or more (default %(default)s)")
    position.add_argument("--size", type=_decimal, default=Decimal(1),
                          help="signed position size in base units; negative for a short (default %(default)s)")
    position.add_argument("--entry", type=_decimal, default=Decimal(100000), help="entry price (default %(default)s)")
    position.add_argument("--mark", type=_decimal, help="mark price (default: the entry price)")
    position.add_argument("--leverage", type=_decimal, help="sub-account leverage limit (default: the profile's)")
    position.add_argument("--profile", default="backpack",
                          help="venue profile: " + ", ".join(available_profiles()) + " or a .toml path")
    _api_commands(commands)
    return parser


def _api_commands(commands: Any) -> None:
    """``serve`` and ``replay``: the Backpack-compatible API (api/)."""
    server = commands.add_parser(
        "serve", help="serve a scenario as a Backpack-compatible REST and WebSocket API",
        description="Run a scenario's actor system (its latency, faults and the live invariant observer included) on "
        "a paced clock and serve the Backpack Exchange API over it, so "
        "unmodified ccxt and Backpack SDK clients can trade, borrow, lend and be liquidated. Prints `serving "
        "http://HOST:PORT ws://HOST:PORT/ws` when ready; Ctrl-C (or SIGTERM) stops it and prints the run summary.",
        epilog="Keys: an [[accounts]] entry may set api_key (base64 ED25519 public key); the others get fresh "
        "keys, written with --keys. Replay a session with `marginsim replay LOG`.",
    )
    server.add_argument("scenario", metavar="SCENARIO", help="a scenario .toml file or a shipped scenario's name")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    server.add_argument("--port", type=_port, default=8000, help="TCP port; 0 takes a free one (default %(default)s)")
    server.add_argument("--rate", type=float, default=1.0,
                        help="virtual seconds per real second (default %(default)s; 60 makes an hour a minute)")
    server.add_argument("--seed", type=_seed, help="the run's seed (default: the scenario's)")
    server.add_argument("--keys", type=Path, metavar="FILE",
                        help="write every sub-account's api_key and secret here as JSON (mode 0600)")
    server.add_argument("--log", type=Path, metavar="EVENTS.jsonl",
                        help="write the event log, API requests included (replay it with `marginsim replay`)")
    server.add_argument("--until", type=float, metavar="SECONDS", help="stop at this virtual time (default: never)")
    server.add_argument("--public", action="store_true", help="allow a --host other than loopback")
    server.add_argument("--rate-limit", type=_positive_int, default=50, metavar="N",
                        help="requests per second per API key before 429 TOO_MANY_REQUESTS (default %(default)s)")
    server.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a scenario field (repeatable)")
    replayer = commands.add_parser(
        "replay", help="re-run a served session from its event log",
        description="Re-run the scenario of a `marginsim serve --log` file with every logged API request injected "
        "at the same virtual instant, print the run summary, and say whether the new log equals the recorded one "
        "(exit 0) or where it first differs (exit 1).",
    )
    replayer.add_argument("log", type=Path, metavar="LOG", help="an events .jsonl file written by serve --log")
    replayer.add_argument("--log", type=Path, dest="new_log", metavar="EVENTS.jsonl", help="write the replay's log")


def _serve(args: argparse.Namespace) -> int:
    from api.serve import ServeOptions, serve

    options = ServeOptions(args.host, args.port, args.rate, args.seed, args.keys, args.log, args.until, args.public,
                           args.rate_limit)
    served = serve(args.scenario, options, args.overrides)
    out = Console()
    print_summary(served.run, out if out.is_terminal else Console(width=160))
    if served.failure is not None:
        print(f"the run stopped the server: {served.failure}")
        return 1
    if served.violations:
        print("invariants broken at the end:", *served.violations, sep="\n  ")
        return 1
    print("invariants hold at the end (conservation, pools, positions, balances)")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from api.serve import replay

    result = replay(args.log, args.new_log)
    out = Console()
    print_summary(result.run, out if out.is_terminal else Console(width=160))
    if result.identical:
        print(f"replayed {result.requests} API requests: the log is identical ({len(result.run.result.events):,} "
              f"events, fingerprint {result.fingerprint})")
        return 0
    print(f"replayed {result.requests} API requests: the log differs from the recording\n{result.first_difference}")
    return 1


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=_seed, help="the run's seed (default: the scenario's)")
    parser.add_argument("--until", type=_seconds, metavar="T",
                        help="stop at T seconds of virtual time (default: its duration; at most 30 days)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a scenario field, e.g. --set accounts[0].leverage_limit=20 (repeatable)")


def _sigterm_as_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM stops a run the way Ctrl-C does: trio delivers SIGINT to the run safely."""
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"run": _run, "list": _list, "explain": _explain, "export": _export, "sweep": _sweep, "demo": _demo, "fuzz": _fuzz,
                "position": _position, "serve": _serve, "replay": _replay}
    previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a background job: SIGTERM still needs SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return handlers[args.command](args)
    except InputError as exc:
        print(f"marginsim: {exc}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"marginsim: {stop}; the event log (if any) ends with an `interrupted` event", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("marginsim: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_output_paths(log: Path | None, report: Path | None) -> None:
    """Refuse, before anything runs, a --log or --report the run could not write."""
    if log is not None:
        if log.is_dir():
            raise InputError("--log", "--log", str(log), "a file path to write the event log to, not a directory")
        if not log.parent.is_dir():
            raise InputError("--log", "--log", str(log), f"a file in an existing folder ({log.parent} is not there)")
    if report is not None:
        _check_report_dependencies()
        from scenarios.report import check_directory

        check_directory(report)


# -- run -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    scenario = loader.load(args.scenario, args.overrides)
    check_output_paths(args.log, args.report)
    if args.differential:
        until_ms = None if args.until is None else round(args.until * 1000)
        comparison = differential.compare(scenario, seed=args.seed, until_ms=until_ms)
        if comparison.equal:
            print(f"{scenario.name}, seed {comparison.seed}: the engine and the actors agree exactly "
                  f"({comparison.events:,} events)")
            return 0
        print(f"{scenario.name}, seed {comparison.seed}: the engine and the actors differ", *comparison.mismatches,
              sep="\n")
        return 1
    err = Console(stderr=True)
    show_progress = err.is_terminal and not args.json
    until_ms = scenario.duration_ms if args.until is None else round(args.until * 1000)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[t]}"), TimeElapsedColumn(),
                  console=err, disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"running {scenario.name}", total=until_ms, t="")

        def advance(now_ms: int) -> None:
            progress.update(task, completed=now_ms, t=f"t={now_ms / 1000:,.0f}s of {until_ms / 1000:,.0f}s")

        try:
            outcome = runner.run(scenario, seed=args.seed, until_s=args.until, log_path=args.log, progress=advance)
        except Interrupted as stop:
            if args.json:
                print(json.dumps(interrupted_document(scenario.name, stop, until_ms), indent=2, sort_keys=True))
            raise
    if args.report is not None and outcome.result is not None:
        from scenarios.report import write_report

        page = write_report(outcome, args.report)
        if not args.json:
            err.print(f"report: {page}")
    if args.json:
        print(json.dumps(summary_document(outcome), indent=2, sort_keys=True))
    else:
        out = Console()
        print_summary(outcome, out if out.is_terminal else Console(width=160))
    return 0 if outcome.passed else 1


def interrupted_document(name: str, stop: Interrupted, until_ms: int) -> dict[str, Any]:
    """The `--json` document of a run stopped by Ctrl-C or SIGTERM: what it was, where it stopped."""
    return {"scenario": name, "seed": stop.seed, "until": until_ms / 1000, "passed": False,
            "failure": {"kind": "interrupted", "message": str(stop)}, "interrupted_at": stop.time_ms / 1000,
            "fingerprint": stop.fingerprint}


def _check_report_dependencies() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--report", "--report", "matplotlib is not installed",
                         "install the charts extra: pip install 'marginsim[report]'") from None


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals as plain strings (``inf`` for an infinite ratio), containers kept."""
    if isinstance(value, Decimal):
        return fmt(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def summary_document(outcome: runner.ScenarioRun) -> dict[str, Any]:
    """The `--json` document; its keys are documented in README and stay stable."""
    result, failure = outcome.result, outcome.failure
    document: dict[str, Any] = {
        "scenario": outcome.scenario.name,
        "description": outcome.scenario.description,
        "seed": outcome.seed,
        "until": outcome.until_ms / 1000,
        "passed": outcome.passed,
        "failure": None if failure is None else {"kind": failure.kind, "message": str(failure)},
        "fingerprint": result.fingerprint if result else failure.fingerprint if failure else None,
        "events": result.event_count if result else 0,
        "accounts": {},
        "markets": {},
        "fund": {},
        "expectations": [{"description": o.description, "passed": o.passed, "detail": o.detail} for o in outcome.outcomes],
    }
    if result is not None:
        for account, row in result.summary["accounts"].items():
            document["accounts"][account] = {
                key: _plain(row[key]) for key in ("net_equity", "imr", "mmr", "available", "balances", "positions",
                                                   "borrows", "lends", "unsettled_equity", "liquidations")
            }
            document["accounts"][account].update(
                open_orders=row["open_orders"],
                status=runner.account_status(row, outcome.scenario.profile.settlement_asset),
                liquidation_prices={s: _plain(attrs.asdict(e)) for s, e in row["liquidation_prices"].items()})
            document["accounts"][account]["liquidation_history"] = [
                _plain(attrs.asdict(step)) for step in result.history.get(account, [])
            ]
        for market, row in result.summary["markets"].items():
            document["markets"][market] = {key: _plain(row[key]) for key in ("trades", "volume", "funding_paid")}
        document["fund"] = _plain(result.summary["fund"])
    return document


def _holdings(values: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{fmt(q)} {s}" for s, q in values.items()) or "-"


def print_summary(outcome: runner.ScenarioRun, console: Console) -> None:
    scenario, result = outcome.scenario, outcome.result
    console.print(f"[bold]{scenario.name}[/bold] — {scenario.description}")
    console.print(f"seed {outcome.seed}, {outcome.until_ms / 1000:g}s of virtual time, profile {scenario.profile.name}")
    if outcome.failure is not None and result is None:
        console.print(f"[bold red]the run stopped early ({outcome.failure.kind}):[/bold red] {outcome.failure}",
                      highlight=False)
        console.print(f"fingerprint {outcome.failure.fingerprint} (of the event log up to the stop)")
        return
    assert result is not None
    rows = result.summary["accounts"]
    shown = [c for c in ("borrows", "lends") if any(r[c] for r in rows.values())]
    accounts = Table(title="sub-accounts", title_justify="left")
    for column in ("account", "net equity", "IMR", "MMR", "balances", "positions", *shown, "open orders",
                   "liquidations", "status"):
        accounts.add_column(column, justify="right" if column in ("net equity", "IMR", "MMR", "open orders",
                                                                   "liquidations") else "left")
    settle = scenario.profile.settlement_asset
    for account, row in rows.items():
        empty = row["net_equity"] <= 0 and not (row["positions"] or row["borrows"])  # no ratio to show
        accounts.add_row(account, fmt(floor_to(row["net_equity"], runner.CENT)), "-" if empty else fmt_pct(row["imr"]),
                         "-" if empty else fmt_pct(row["mmr"]), _holdings(row["balances"]),
                         _holdings(row["positions"]), *(_holdings(row[c]) for c in shown), str(row["open_orders"]),
                         str(row["liquidations"]), runner.account_status(row, settle))
    console.print(accounts)
    estimates = Table(title="estimated liquidation prices (single-position, rounded toward the mark)",
                      title_justify="left")
    for column in ("account", "position", "estimate (method: why)"):
        estimates.add_column(column, justify="left")
    for account, row in rows.items():
        for symbol, estimate in row["liquidation_prices"].items():
            quantity = row["positions"][symbol]
            estimates.add_row(account, f"{fmt(quantity)} {symbol}", describe_estimate(estimate, quantity))
    if estimates.row_count:
        console.print(estimates)
    markets = Table(title="markets", title_justify="left")
    for column in ("market", "trades", "volume (USDC)", "funding paid"):
        markets.add_column(column, justify="left" if column == "market" else "right")
    for market, row in result.summary["markets"].items():
        if row["trades"] or row["funding_paid"]:
            markets.add_row(market, str(row["trades"]), fmt(row["volume"], 2), fmt(row["funding_paid"], 6))
    console.print(markets)
    fund = result.summary["fund"]
    if any(fund.values()):
        console.print("liquidity fund: " + _holdings(fund))
    for account, steps in result.history.items():
        console.print(f"[bold]liquidation history of {account}[/bold]")
        for step in steps[:HISTORY_LINES]:
            console.print("  " + describe_step(step), highlight=False)
        if len(steps) > HISTORY_LINES:
            console.print(f"  ... {len(steps) - HISTORY_LINES} more steps (all of them: `marginsim explain` on a --log)")
    if outcome.outcomes:
        console.print("[bold]expectations[/bold]")
        for o in outcome.outcomes:
            mark = "[green]PASS[/green]" if o.passed else "[red]FAIL[/red]"
            console.print(f"  {mark} {o.description}: {o.detail}")
    if outcome.failure is not None:  # the end-of-run liveness check
        console.print(f"[bold red]the run failed its {outcome.failure.kind} check:[/bold red] {outcome.failure}",
                      highlight=False)
        verdict = "[red]failed[/red]"
    else:
        verdict = "[green]all expectations hold[/green]" if outcome.passed else "[red]an expectation failed[/red]"
    console.print(f"{verdict}; fingerprint {result.fingerprint}")


# -- list, explain, demo ------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    for name, path in loader.shipped().items():
        scenario = loader.load(str(path))
        print(f"{name:<28} {scenario.description}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    ref = str(args.log)
    end: explain.RunEnd | None = None
    if args.log.suffix == ".toml" or (not args.log.exists() and ref in loader.shipped()):
        scenario = loader.load(ref)
        outcome = runner.run(scenario, seed=args.seed)
        if outcome.result is None:
            print(f"marginsim: the run stopped early ({outcome.failure}); nothing to explain", file=sys.stderr)
            return 1
        events = [json.loads(render(e)) for e in outcome.result.events]  # as `run --log` writes them
        end = explain.RunEnd(outcome.until_ms, outcome.result.summary["accounts"], scenario.profile.settlement_asset)
        source = f"the run of {scenario.name} (seed {outcome.seed})"
    else:
        if args.seed is not None:
            raise InputError("--seed", "--seed", f"{args.seed} with a log", "a scenario to run (a log's run is done)")
        events = explain.read_events(args.log)
        source = ref
    if args.account and not any(e["actor"] == f"account:{args.account}" for e in events):
        accounts = sorted({e["actor"].split(":", 1)[1] for e in events if e["actor"].startswith("account:")})
        return _not_found("sub-account", args.account, accounts, source)
    # An order id is its sub-account's own: with --account, the id must be that account's.
    actor = f"account:{args.account}" if args.account else None
    if args.order and not any(e.get("order_id") == args.order and actor in (None, e["actor"]) for e in events):
        orders = sorted({str(e["order_id"]) for e in events if e["event"] in ("order_placed", "order_rejected")
                         and actor in (None, e["actor"])})
        return _not_found("order", args.order, orders, source + (f" for sub-account {args.account}" if actor else ""))
    lines: list[str] = explain.interrupted(events)
    if args.order:
        lines += explain.explain_order(events, args.order, args.account)
    if args.account:
        lines += explain.explain_account(events, args.account, end)
    if not (args.order or args.account):
        lines += explain.overview(events)
    print("\n".join(lines))
    return 0


def _not_found(kind: str, wanted: str, known: list[str], source: str) -> int:
    """A well-formed id that is not in the run: exit 1, naming it and what is there."""
    hint = did_you_mean(wanted, known)
    listed = ", ".join(known[:20]) + (f" ... ({len(known)} in all)" if len(known) > 20 else "")
    print(f"marginsim: no {kind} {wanted} in {source}" + (f"; {hint}" if hint else "") + "\n  "
          + (f"its {kind}s: {listed}" if known else f"it has no {kind}s"), file=sys.stderr)
    return 1


def _export(args: argparse.Namespace) -> int:
    from scenarios import export

    events = explain.read_events(args.log)
    if args.to.exists() and not args.to.is_dir():
        raise InputError("--to", "--to", f"{args.to} (a file)", "a folder to write the tables into (made if missing)")
    if args.format == "parquet":
        try:
            import pandas  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError("--format", "--format", "parquet without pandas and pyarrow installed",
                             "csv, or install the data extra: pip install 'marginsim[data]'") from None
        counts = export.write_parquet(events, args.to)
    else:
        counts = export.write_csv(events, args.to)
    for name, count in counts.items():
        print(f"{args.to / f'{name}.{args.format}'}  {count} rows")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from scenarios import sweep

    seeds = sweep.parse_seeds(args.seeds)
    combinations = sweep.grid(args.grid)
    if args.report is not None and args.report.exists() and not args.report.is_dir():
        raise InputError("--report", "--report", f"{args.report} (a file)", "a folder for the sweep's tables and chart")
    result = sweep.sweep(args.scenario, seeds, combinations, jobs=args.jobs)
    table = Table(title=f"sweep of {args.scenario}: {len(seeds)} seeds x {len(combinations)} combination(s), "
                  f"{result.elapsed_s:.1f}s", title_justify="left")
    rows = sweep.rows(result)
    for column in ("settings", "runs", "failed", *(f"{m} mean [min..max]" for m in sweep.METRICS)):
        table.add_column(column, justify="left" if column == "settings" else "right")
    for row in rows:
        table.add_row(row["settings"], row["runs"], row["failed"],
                      *(f"{row[f'{m} mean']} [{row[f'{m} min']}..{row[f'{m} max']}]" for m in sweep.METRICS))
    Console().print(table)
    print("failed: runs whose expectations did not all hold (or that stopped early); standard deviations in "
          "--report's sweep.csv")
    if args.report is not None:
        for path in sweep.write_report(result, args.report):
            print(path)
    return 0


def _demo_web(args: argparse.Namespace, scenario: loader.Scenario) -> int:
    """The run's events (from --log, or a run now) played by the web dashboard until Ctrl-C."""
    from web import dashboard

    if args.log is not None:
        events = explain.read_events(args.log)
        seed, until_ms = args.seed if args.seed is not None else scenario.seed, max((e["t"] for e in events), default=0)
    else:
        outcome = runner.run(scenario, seed=args.seed, until_s=args.until)
        if outcome.result is None:
            print(f"the run stopped early ({outcome.failure}); nothing to play", file=sys.stderr)
            return 1
        events, seed, until_ms = outcome.result.events, outcome.seed, outcome.until_ms
    meta = dashboard.meta_for(scenario, seed, until_ms, start_paused=args.start_paused)
    dashboard.serve(events, meta, port=args.port,
                    ready=lambda url: print(f"dashboard: {url}  (Ctrl-C to stop)", flush=True))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from scenarios.demo import run_demo

    scenario = loader.load(args.scenario, args.overrides)
    if args.web:
        return _demo_web(args, scenario)
    if args.log is not None:
        raise InputError("--log", "--log", "without --web", "--web with it (the terminal demo runs the scenario live)")
    outcome = run_demo(scenario, seed=args.seed, rate=args.rate, until_s=args.until, start_paused=args.start_paused,
                       pause_on=args.pause_on)
    return 0 if outcome.passed else 1


# -- fuzz -----------------------------------------------------------------------------------------


def _fuzz(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    # --time-budget alone runs as many seeds as fit; --runs (default 100) bounds them otherwise.
    runs = args.runs if args.runs is not None else None if args.time_budget is not None else DEFAULT_RUNS
    last = loader.MAX_SEED if runs is None else min(args.seed + runs - 1, loader.MAX_SEED)
    seeds = range(args.seed, last + 1)
    finished: list[fuzz.FuzzOutcome] = []
    started = time.perf_counter()
    with Progress(TextColumn("fuzzing"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                  TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), console=err,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("fuzz", total=runs, failed="no failure")

        def advance(outcome: fuzz.FuzzOutcome) -> None:
            finished.append(outcome)
            failed = sum(not o.passed for o in finished)
            progress.update(task, advance=1, failed=f"{failed} failed" if failed else "no failure")

        try:
            result = fuzz.campaign(seeds, jobs=args.jobs, time_budget=args.time_budget, progress=advance,
                                   differential=args.differential)
        except KeyboardInterrupt:
            progress.stop()
            partial = fuzz.Campaign(tuple(sorted(finished, key=lambda o: o.seed)), time.perf_counter() - started,
                                    args.jobs)
            _print_campaign(args, partial, interrupted=True)
            raise
    _print_campaign(args, result)
    shrunk: set[str] = set()
    for outcome in result.failures:
        shrink_it = not args.no_shrink and outcome.label not in shrunk  # one shrink per invariant
        shrunk.add(outcome.label)
        out = Console() if Console().is_terminal else Console(width=160)
        out.print("\n".join(fuzz.save_failure(outcome, args.out, shrink_it=shrink_it)), highlight=False)
    return 1 if result.failures else 0


def _print_campaign(args: argparse.Namespace, result: fuzz.Campaign, *, interrupted: bool = False) -> None:
    """The campaign's table; when interrupted, of the runs that finished (failures not saved)."""
    out = Console() if Console().is_terminal else Console(width=160)
    title = ("differential campaign" if args.differential else "fuzz campaign") + (
        " (interrupted)" if interrupted else "")
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    seeds = [o.seed for o in result.outcomes]
    table.add_row("runs", f"{len(seeds)}" + (f" (seeds {min(seeds)}..{max(seeds)})" if seeds else ""))
    table.add_row("passed", str(len(result.outcomes) - len(result.failures)))
    for label, count in result.by_invariant().items():
        table.add_row(f"failed: {label}", str(count))
    events = sum(o.events for o in result.outcomes)
    table.add_row("events per run", f"{events / max(len(result.outcomes), 1):,.0f}")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    table.add_row("seeds/s", f"{result.seeds_per_second:.2f}")
    table.add_row("seeds/s per job", f"{result.seeds_per_second / args.jobs:.2f} ({args.jobs} job(s))")
    out.print(table)
    if interrupted:
        out.print(f"interrupted: the table counts the {len(result.outcomes)} run(s) that finished"
                  + ("; failing seeds (not saved, rerun them with --seed S --runs 1): "
                     + ", ".join(str(o.seed) for o in result.failures) if result.failures else ""), highlight=False)


# -- position -------------------------------------------------------------------------------------


def _position(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    market = profile.markets.get(args.market)
    if market is None or not market.is_perp:
        perps = [m.symbol for m in profile.perp_markets()]
        what = "not a perp market" if market is not None else "not a market"
        raise InputError("--market", "--market", args.market, f"a perp market ({args.market} is {what} of "
                         f"{profile.name}): " + ", ".join(perps), hint=did_you_mean(args.market, perps))
    largest = market.max_quantity or profile.assets[market.base].max_quantity
    if args.size == 0 or abs(args.size) > largest or args.size % market.step_size != 0:
        raise InputError("--size", "--size", args.size, f"a non-zero multiple of {fmt(market.step_size)}, "
                         f"at most {fmt(largest)} either way (negative for a short)")
    if args.collateral < 0 or args.collateral % profile.assets[profile.settlement_asset].step:
        raise InputError("--collateral", "--collateral", args.collateral,
                         f"0 or more {profile.settlement_asset}, in steps of "
                         f"{fmt(profile.assets[profile.settlement_asset].step)}")
    top = market.bands.max_price
    for flag, price in (("--entry", args.entry), ("--mark", args.mark)):
        if price is not None and not 0 < price <= top:
            raise InputError(flag, flag, price, f"a price > 0 and at most {fmt(top)} (the market's maximum)")
    leverage = args.leverage if args.leverage is not None else profile.default_leverage_limit
    if not 1 <= leverage <= profile.max_leverage_limit:
        raise InputError("--leverage", "--leverage", leverage, f"a leverage limit from 1 to {profile.max_leverage_limit}")
    mark = args.mark if args.mark is not None else args.entry
    account = SubAccount("example", profile, settings=Settings(leverage_limit=leverage))
    account.deposit(profile.settlement_asset, args.collateral)
    account.set_mark(market.symbol, mark)
    account.set_mark(market.base, mark)
    side = Side.BID if args.size > 0 else Side.ASK
    quantity = abs(args.size)
    account.apply_fill(
        Fill(trade_id=0, market=market.symbol, order_id="example", account=account.id, side=side, price=args.entry,
             quantity=quantity, quote_quantity=quantity * args.entry, fee=Decimal(0), fee_asset=market.quote,
             is_maker=False),
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
        f"  IMF                    {fmt(risk.imf, 8)}   (set by {explain.IMF_SOURCES[risk.imf_source]})",
        f"  MMF                    {fmt(risk.mmf, 8)}",
        f"  locked (initial)       {fmt(summary.net_equity_locked, 2)}",
        f"  available equity       {fmt(summary.net_equity_available, 2)}",
        f"  maintenance margin     {fmt(summary.maintenance_requirement, 2)}",
        f"  margin fraction        {fmt(summary.margin_fraction, 6)}",
        f"  IMR                    {fmt_pct(summary.imr, 3)}   (orders that add risk are refused at 100%)",
        f"  MMR                    {fmt_pct(summary.mmr, 3)}   (liquidation starts at 100%)",
        f"  est. liquidation price {describe_estimate(estimate, args.size)}",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
