"""The bad-input corpus: scenario files, CSV price files, profiles, --set values, command-line
flags and event logs that must each be refused with exit status 2, no traceback, and a message
that names the field (or flag) at fault.

Every case calls the command line's ``main`` in this process; only the interruption tests
(tests/test_bad_input_signals.py) need a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenarios.cli import main

BASE = """\
[scenario]
name = "corpus"
duration = 10

[prices.BTC]
kind = "constant"
price = 100000

[[accounts]]
id = "alice"
owner = "alice"
deposits = { USDC = 10000 }
markets = ["BTC_USDC_PERP"]

[[accounts]]
id = "alice-2"
owner = "alice"
"""

# (case id, TOML appended to BASE, what the message must name)
FILE_CASES = [
    ("price-zero", '[prices.ETH]\nkind = "constant"\nprice = 0\n', "prices.ETH.price"),
    ("price-negative", '[prices.ETH]\nkind = "constant"\nprice = -5\n', "prices.ETH.price"),
    ("price-huge", '[prices.ETH]\nkind = "constant"\nprice = 1e30\n', "prices.ETH.price"),
    ("price-1e400", '[prices.ETH]\nkind = "constant"\nprice = 1e400\n', "prices.ETH.price"),
    ("price-nan", '[prices.ETH]\nkind = "constant"\nprice = nan\n', "prices.ETH.price"),
    ("price-inf", '[prices.ETH]\nkind = "constant"\nprice = inf\n', "prices.ETH.price"),
    ("price-bool", '[prices.ETH]\nkind = "constant"\nprice = true\n', "found true"),
    ("price-word", '[prices.ETH]\nkind = "constant"\nprice = "cheap"\n', "prices.ETH.price"),
    ("points-zero", '[prices.ETH]\nkind = "linear"\npoints = [[0, 4000], [5, 0]]\n', "prices.ETH.points[1]"),
    ("points-negative", '[prices.ETH]\nkind = "steps"\npoints = [[0, -1]]\n', "prices.ETH.points[0]"),
    ("points-order", '[prices.ETH]\nkind = "linear"\npoints = [[5, 4000], [1, 3000]]\n', "prices.ETH.points"),
    ("points-submilli", '[prices.ETH]\nkind = "linear"\npoints = [[0.0001, 4000]]\n', "prices.ETH.points[0]"),
    ("points-empty", '[prices.ETH]\nkind = "linear"\npoints = []\n', "prices.ETH.points"),
    ("points-shape", '[prices.ETH]\nkind = "linear"\npoints = [[0, 1, 2]]\n', "prices.ETH.points[0]"),
    ("points-huge", '[prices.ETH]\nkind = "linear"\npoints = [[0, 1e400]]\n', "prices.ETH.points[0]"),
    ("shock-minus-one", '[prices.ETH]\nkind = "constant"\nprice = 4000\nshocks = [[5, -1]]\n', "prices.ETH.shocks[0]"),
    ("shock-below", '[prices.ETH]\nkind = "constant"\nprice = 4000\nshocks = [[5, -1.5]]\n', "prices.ETH.shocks[0]"),
    ("shock-past-max", '[prices.ETH]\nkind = "constant"\nprice = 400000\nshocks = [[5, 9]]\n', "prices.ETH.shocks"),
    ("premium-high", '[prices.BTC_USDC_PERP]\npremium = 0.9\n', "prices.BTC_USDC_PERP.premium"),
    ("premium-points-negative", '[prices.BTC_USDC_PERP]\npoints = [[0, 0], [5, -1.5]]\n',
     "prices.BTC_USDC_PERP.points[1]"),
    ("premium-points-huge", '[prices.BTC_USDC_PERP]\npoints = [[0, 1e30]]\n', "prices.BTC_USDC_PERP.points[0]"),
    ("gbm-step-submilli", '[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = 0.5\nstep = 0.0001\n',
     "prices.SOL.step"),
    ("gbm-step-zero", '[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = 0.5\nstep = 0\n', "prices.SOL.step"),
    ("gbm-start-zero", '[prices.SOL]\nkind = "gbm"\nstart = 0\nvolatility = 0.5\n', "prices.SOL.start"),
    ("gbm-volatility-negative", '[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = -1\n',
     "prices.SOL.volatility"),
    ("gbm-volatility-huge", '[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = 1e9\n', "prices.SOL.volatility"),
    ("gbm-drift-huge", '[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = 1\ndrift = 1e9\n', "prices.SOL.drift"),
    ("gbm-drift-over-the-run", '[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = 1\ndrift = 20000000\n',
     "prices.SOL.drift"),
    ("path-kind", '[prices.SOL]\nkind = "spline"\n', "prices.SOL.kind"),
    ("price-unknown-symbol", '[prices.DOGE]\nkind = "constant"\nprice = 1\n', "prices.DOGE"),
    ("csv-missing", '[prices.ETH]\nkind = "csv"\nfile = "nope.csv"\n', "prices.ETH.file"),
    ("csv-directory", '[prices.ETH]\nkind = "csv"\nfile = "."\n', "prices.ETH.file"),
    ("deposit-zero", '[[accounts]]\nid = "bob"\ndeposits = { USDC = 0 }\n', "accounts[2].deposits.USDC"),
    ("deposit-negative", '[[accounts]]\nid = "bob"\ndeposits = { USDC = -10 }\n', "accounts[2].deposits.USDC"),
    ("deposit-huge", '[[accounts]]\nid = "bob"\ndeposits = { USDC = 1e30 }\n', "accounts[2].deposits.USDC"),
    ("deposit-1e400", '[[accounts]]\nid = "bob"\ndeposits = { USDC = 1e400 }\n', "accounts[2].deposits.USDC"),
    ("deposit-off-step", '[[accounts]]\nid = "bob"\ndeposits = { USDC = 1.0000001 }\n', "accounts[2].deposits.USDC"),
    ("deposit-unknown-asset", '[[accounts]]\nid = "bob"\ndeposits = { DOGE = 1 }\n', "accounts[2].deposits.DOGE"),
    ("deposit-word", '[[accounts]]\nid = "bob"\ndeposits = { USDC = "lots" }\n', "accounts[2].deposits.USDC"),
    ("account-duplicate", '[[accounts]]\nid = "alice"\n', "accounts"),
    ("account-leverage-high", '[[accounts]]\nid = "bob"\nleverage_limit = 80\n', "accounts[2].leverage_limit"),
    ("account-leverage-low", '[[accounts]]\nid = "bob"\nleverage_limit = 0.5\n', "accounts[2].leverage_limit"),
    ("account-typo", '[[accounts]]\nid = "bob"\nauto_lnd = true\n', "accounts[2].auto_lnd"),
    ("account-market", '[[accounts]]\nid = "bob"\nmarkets = ["BTC_PERP"]\n', "accounts[2].markets[0]"),
    ("account-flag-word", '[[accounts]]\nid = "bob"\nauto_lend = "yes"\n', "accounts[2].auto_lend"),
    ("action-after-end", '[[actions]]\nat = 11\naccount = "alice"\ntype = "deposit"\nasset = "USDC"\nquantity = 1\n',
     "actions[0].at"),
    ("action-negative-time", '[[actions]]\nat = -1\naccount = "alice"\ntype = "deposit"\nasset = "USDC"\nquantity = 1\n',
     "actions[0].at"),
    ("action-submilli", '[[actions]]\nat = 1.0001\naccount = "alice"\ntype = "deposit"\nasset = "USDC"\nquantity = 1\n',
     "actions[0].at"),
    ("action-type", '[[actions]]\nat = 1\naccount = "alice"\ntype = "buy"\n', "actions[0].type"),
    ("action-account", '[[actions]]\nat = 1\naccount = "carol"\ntype = "cancel_all"\n', "actions[0].account"),
    ("withdraw-huge", '[[actions]]\nat = 1\naccount = "alice"\ntype = "withdraw"\nasset = "USDC"\nquantity = 1e400\n',
     "actions[0].quantity"),
    ("withdraw-zero", '[[actions]]\nat = 1\naccount = "alice"\ntype = "withdraw"\nasset = "USDC"\nquantity = 0\n',
     "actions[0].quantity"),
    ("lend-off-step", '[[actions]]\nat = 1\naccount = "alice"\ntype = "lend"\nasset = "USDC"\nquantity = 0.0000001\n',
     "actions[0].quantity"),
    ("borrow-asset", '[[actions]]\nat = 1\naccount = "alice"\ntype = "borrow"\nasset = "USD"\nquantity = 1\n',
     "actions[0].asset"),
    ("transfer-stranger",
     '[[accounts]]\nid = "bob"\n[[actions]]\nat = 1\naccount = "alice"\ntype = "transfer"\ntarget = "bob"\n'
     'asset = "USDC"\nquantity = 1\n', "actions[0].target"),
    ("transfer-huge",
     '[[actions]]\nat = 1\naccount = "alice"\ntype = "transfer"\ntarget = "alice-2"\nasset = "USDC"\nquantity = 1e30\n',
     "actions[0].quantity"),
    ("order-price-zero", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquantity = 1\nprice = 0\n', "actions[0].price"),
    ("order-price-huge", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquantity = 1\nprice = 1e30\n', "actions[0].price"),
    ("order-quantity-huge", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquantity = 1e400\nprice = 100000\n', "actions[0].quantity"),
    ("order-quantity-negative", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquantity = -1\nprice = 100000\n', "actions[0].quantity"),
    ("order-no-quantity", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nprice = 100000\n', "actions[0].quantity"),
    ("order-quote-huge", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquote_quantity = 1e400\n', "actions[0].quote_quantity"),
    ("order-side", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "long"\nquantity = 1\n', "actions[0].side"),
    ("order-tif", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquantity = 1\ntime_in_force = "GTD"\n', "actions[0].time_in_force"),
    ("order-market", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTCUSD"\n'
     'side = "buy"\nquantity = 1\n', "actions[0].market"),
    ("order-flag-word", '[[actions]]\nat = 1\naccount = "alice"\ntype = "order"\nmarket = "BTC_USDC_PERP"\n'
     'side = "buy"\nquantity = 1\npost_only = 1\n', "actions[0].post_only"),
    ("settings-leverage", '[[actions]]\nat = 1\naccount = "alice"\ntype = "settings"\nleverage_limit = 51\n',
     "actions[0].leverage_limit"),
    ("fault-ends-first", '[[faults]]\nkind = "hold"\nfrom = "feed"\nto = "account:*"\nstart = 5\nend = 2\n',
     "faults[0].end"),
    ("fault-ends-at-start", '[[faults]]\nkind = "hold"\nfrom = "feed"\nto = "account:*"\nstart = 5\nend = 5\n',
     "faults[0].end"),
    ("fault-kind", '[[faults]]\nkind = "drop"\nfrom = "feed"\nto = "account:*"\nstart = 1\nend = 2\n', "faults[0].kind"),
    ("fault-submilli", '[[faults]]\nkind = "hold"\nfrom = "feed"\nto = "account:*"\nstart = 0.0001\nend = 2\n',
     "faults[0].start"),
    ("fault-ms-negative", '[[faults]]\nkind = "delay"\nfrom = "feed"\nto = "account:*"\nstart = 1\nend = 2\nms = -5\n',
     "faults[0].ms"),
    ("latency-kind", '[latency]\nkind = "slow"\n', "latency.kind"),
    ("latency-negative", '[latency]\nkind = "constant"\nms = -1\n', "latency.ms"),
    ("latency-huge", '[latency]\nkind = "constant"\nms = 1e30\n', "latency.ms"),
    ("maker-size-huge", '[[market_makers]]\nname = "mm"\naccount = "alice"\nmarkets = ["BTC_USDC_PERP"]\nsize = 1e400\n',
     "market_makers[0].size"),
    ("maker-refresh-submilli",
     '[[market_makers]]\nname = "mm"\naccount = "alice"\nmarkets = ["BTC_USDC_PERP"]\nsize = 1\nrefresh = 0.0001\n',
     "market_makers[0].refresh"),
    ("maker-levels", '[[market_makers]]\nname = "mm"\naccount = "alice"\nmarkets = ["BTC_USDC_PERP"]\nsize = 1\n'
     'levels = 0\n', "market_makers[0].levels"),
    ("noise-interval-submilli",
     '[[noise_traders]]\nname = "n"\naccount = "alice"\nmarkets = ["BTC_USDC_PERP"]\ninterval = 0.0001\n',
     "noise_traders[0].interval"),
    ("noise-share", '[[noise_traders]]\nname = "n"\naccount = "alice"\nmarkets = ["BTC_USDC_PERP"]\nioc_share = 2\n',
     "noise_traders[0].ioc_share"),
    ("noise-steps-huge",
     '[[noise_traders]]\nname = "n"\naccount = "alice"\nmarkets = ["BTC_USDC_PERP"]\nmax_steps = 1e30\n',
     "noise_traders[0].max_steps"),
    ("backstop-capacity", '[[backstops]]\naccount = "alice"\ncapacity = { BTC_USDC_PERP = -1 }\n',
     "backstops[0].capacity.BTC_USDC_PERP"),
    ("expect-kind", '[[expect]]\nkind = "rich"\naccount = "alice"\n', "expect[0].kind"),
    ("expect-at-after-end", '[[expect]]\nkind = "net_equity"\naccount = "alice"\nmin = 0\nat = 20\n', "expect[0].at"),
    ("expect-min-max", '[[expect]]\nkind = "net_equity"\naccount = "alice"\nmin = 5\nmax = 1\n', "expect[0].max"),
    ("expect-no-bounds", '[[expect]]\nkind = "mmr"\naccount = "alice"\n', "expect[0].min"),
    ("expect-order", '[[expect]]\nkind = "refused"\norder = "nope"\n', "expect[0].order"),
    ("overrides-bad", '[profile_overrides]\nliquidation = { fee_rate = 2 }\n', "liquidation.fee_rate"),
    ("overrides-submilli", '[profile_overrides]\nliquidation = { loop_interval = 0.0001 }\n',
     "liquidation.loop_interval"),
    ("overrides-funding-zero", '[profile_overrides]\nmarkets = { BTC_USDC_PERP = { funding_interval = 0 } }\n',
     "markets.BTC_USDC_PERP.funding_interval"),
    ("top-typo", '[scenarios]\nname = "x"\n', "scenarios"),
]

# (case id, the [scenario] table's replacement, what the message must name)
HEAD_CASES = [
    ("duration-zero", 'name = "c"\nduration = 0\n', "scenario.duration"),
    ("duration-tiny", 'name = "c"\nduration = 0.0001\n', "scenario.duration"),
    ("duration-submilli", 'name = "c"\nduration = 1.0005\n', "scenario.duration"),
    ("duration-huge", 'name = "c"\nduration = 1e300\n', "scenario.duration"),
    ("duration-too-long", 'name = "c"\nduration = 2592001\n', "scenario.duration"),
    ("duration-word", 'name = "c"\nduration = "long"\n', "scenario.duration"),
    ("duration-missing", 'name = "c"\n', "scenario.duration"),
    ("name-missing", 'duration = 5\n', "scenario.name"),
    ("seed-negative", 'name = "c"\nduration = 5\nseed = -1\n', "scenario.seed"),
    ("seed-fraction", 'name = "c"\nduration = 5\nseed = 1.5\n', "scenario.seed"),
    ("price-interval-submilli", 'name = "c"\nduration = 5\nprice_interval = 0.0001\n', "scenario.price_interval"),
    ("sample-interval-zero", 'name = "c"\nduration = 5\nsample_interval = 0\n', "scenario.sample_interval"),
    ("profile-unknown", 'name = "c"\nduration = 5\nprofile = "binance"\n', "scenario.profile"),
    ("liveness-word", 'name = "c"\nduration = 5\nliveness = "yes"\n', "scenario.liveness"),
]

# (case id, --set value, what the message must name): the message says it came from --set
SET_CASES = [
    ("set-dotted-index", "accounts.0.id=x", "accounts[0].id"),
    ("set-into-string", "scenario.name.x=1", "scenario.name is not a table"),
    ("set-leverage", "accounts[0].leverage_limit=80", "accounts[0].leverage_limit"),
    ("set-seed", "scenario.seed=-1", "scenario.seed"),
    ("set-missing-entry", "accounts[5].id=x", "accounts[5].id"),
    ("set-no-equals", "scenario.seed", "KEY=VALUE"),
    ("set-empty-key", "=5", "a field path"),
    ("set-duration", "scenario.duration=0.0001", "scenario.duration"),
    ("set-deposit", "accounts[0].deposits.USDC=1e400", "accounts[0].deposits.USDC"),
    ("set-unknown", "scenario.durations=5", "scenario.durations"),
    ("set-price", "prices.BTC.price=-1", "prices.BTC.price"),
    ("set-bool", "accounts[0].auto_lend=maybe", "accounts[0].auto_lend"),
]

# (case id, arguments after the command, what the message must name)
FLAG_CASES = [
    ("until-negative", ["run", "{scenario}", "--until", "-5"], "--until"),
    ("until-nan", ["run", "{scenario}", "--until", "nan"], "--until"),
    ("until-inf", ["run", "{scenario}", "--until", "inf"], "--until"),
    ("until-huge", ["run", "{scenario}", "--until", "1e300"], "--until"),
    ("until-submilli", ["run", "{scenario}", "--until", "0.0001"], "--until"),
    ("until-word", ["run", "{scenario}", "--until", "soon"], "--until"),
    ("run-seed-negative", ["run", "{scenario}", "--seed", "-1"], "--seed"),
    ("seed-word", ["run", "{scenario}", "--seed", "x"], "--seed"),
    ("seed-huge", ["run", "{scenario}", "--seed", str(2**64)], "--seed"),
    ("log-directory", ["run", "{scenario}", "--log", "{tmp}"], "--log"),
    ("log-missing-folder", ["run", "{scenario}", "--log", "{tmp}/no/such/events.jsonl"], "--log"),
    ("scenario-directory", ["run", "{tmp}"], "a directory"),
    ("scenario-missing", ["run", "{tmp}/nope.toml"], "no such file"),
    ("scenario-name", ["run", "partial-liquidaton"], "did you mean"),
    ("demo-rate-zero", ["demo", "{scenario}", "--rate", "0"], "--rate"),
    ("demo-rate-nan", ["demo", "{scenario}", "--rate", "nan"], "--rate"),
    ("demo-until", ["demo", "{scenario}", "--until", "-1"], "--until"),
    ("fuzz-seed-negative", ["fuzz", "--seed", "-5"], "--seed"),
    ("serve-seed-negative", ["serve", "{scenario}", "--seed", "-1"], "--seed"),
    ("serve-port-too-big", ["serve", "{scenario}", "--port", "70000"], "--port"),
    ("fuzz-budget-nan", ["fuzz", "--time-budget", "nan"], "--time-budget"),
    ("fuzz-budget-zero", ["fuzz", "--time-budget", "0"], "--time-budget"),
    ("fuzz-runs-zero", ["fuzz", "--runs", "0"], "--runs"),
    ("fuzz-jobs-word", ["fuzz", "--jobs", "many"], "--jobs"),
    ("position-size-1e400", ["position", "--size", "1e400"], "--size"),
    ("position-size-1e20", ["position", "--size", "1e20"], "--size"),
    ("position-size-zero", ["position", "--size", "0"], "--size"),
    ("position-size-off-step", ["position", "--size", "0.000001"], "--size"),
    ("position-collateral-1e400", ["position", "--collateral", "1e400"], "--collateral"),
    ("position-collateral-negative", ["position", "--collateral", "-100"], "--collateral"),
    ("position-mark-zero", ["position", "--mark", "0"], "--mark"),
    ("position-entry-negative", ["position", "--entry", "-1"], "--entry"),
    ("position-entry-huge", ["position", "--entry", "1e9"], "--entry"),
    ("position-leverage", ["position", "--leverage", "80"], "--leverage"),
    ("position-market", ["position", "--market", "BTC_USDC"], "--market"),
    ("position-profile", ["position", "--profile", "nope"], "profile"),
    ("explain-missing", ["explain", "{tmp}/none.jsonl"], "no such file"),
    ("explain-directory", ["explain", "{tmp}"], "a directory"),
    ("unknown-command", ["launch"], "invalid choice"),
]

# (case id, event-log lines, extra flags, what the message must name)
LOG_CASES = [
    ("log-list", ['[1, 2]'], [], ":1"),
    ("log-string", ['"hello"'], [], ":1"),
    ("log-no-event", ['{"actor": "feed", "t": 0}'], [], "event"),
    ("log-no-actor", ['{"event": "price", "t": 0}'], [], "actor"),
    ("log-bad-t", ['{"event": "price", "actor": "feed", "t": "soon"}'], [], "`t`"),
    ("log-not-json", ['{"event": "price",'], [], ":1"),
    ("log-second-line", ['{"event": "price", "actor": "feed", "t": 0}', 'nope'], [], ":2"),
    ("log-rejected-no-code", ['{"event": "order_rejected", "actor": "account:a", "t": 0, "order_id": "x"}'], [],
     "code"),
    ("log-step-no-stage", ['{"event": "liquidation_step", "actor": "liquidator", "t": 0, "account": "a"}'], [],
     "stage"),
    ("log-seed", ['{"event": "price", "actor": "feed", "t": 0}'], ["--seed", "3"], "--seed"),
]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a flag value itself, with exit status 2
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def refused(argv: list[str], field: str, capsys: pytest.CaptureFixture[str]) -> str:
    code, text = cli(argv, capsys)
    assert code == 2, text
    assert "Traceback" not in text
    assert field in text, text
    return text


@pytest.mark.parametrize(("snippet", "field"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_file_field_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, field: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE + "\n" + snippet, encoding="utf-8")
    text = refused(["run", str(path)], field, capsys)
    assert str(path) in text


@pytest.mark.parametrize(("head", "field"), [c[1:] for c in HEAD_CASES], ids=[c[0] for c in HEAD_CASES])
def test_scenario_head_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], head: str, field: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace('name = "corpus"\nduration = 10\n', head), encoding="utf-8")
    refused(["run", str(path)], field, capsys)


@pytest.mark.parametrize(("assignment", "field"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_set_value_refused_and_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str], assignment: str,
                                             field: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE, encoding="utf-8")
    text = refused(["run", str(path), "--set", assignment], field, capsys)
    assert f"--set {assignment}" in text  # not a line of the file
    assert f"{path}:" not in text


@pytest.mark.parametrize(("argv", "field"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_flag_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], field: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE, encoding="utf-8")
    refused([a.format(scenario=path, tmp=tmp_path) for a in argv], field, capsys)


@pytest.mark.parametrize(("lines", "extra", "field"), [c[1:] for c in LOG_CASES], ids=[c[0] for c in LOG_CASES])
def test_event_log_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], extra: list[str],
                           field: str) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused(["explain", str(path), *extra], field, capsys)


CSV_CASES = [
    ("csv-word", "time,price\n0,100\n1,cheap\n", ":3"),
    ("csv-no-rows", "time,price\n", "no time,price rows"),
    ("csv-empty", "", "no time,price rows"),
    ("csv-zero-price", "0,100\n1,0\n", ":2"),
    ("csv-negative-price", "0,-100\n", ":1"),
    ("csv-huge-price", "0,1e400\n", ":1"),
    ("csv-backwards", "5,100\n1,100\n", "goes back in time"),
    ("csv-submilli", "0.0001,100\n", ":1"),
    ("csv-three-columns", "0,100,7\n", ":1"),
    ("csv-negative-time", "-1,100\n", ":1"),
]


@pytest.mark.parametrize(("content", "field"), [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES])
def test_csv_price_file_refused_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                              field: str) -> None:
    (tmp_path / "eth.csv").write_text(content, encoding="utf-8")
    path = tmp_path / "s.toml"
    path.write_text(BASE + '\n[prices.ETH]\nkind = "csv"\nfile = "eth.csv"\n', encoding="utf-8")
    text = refused(["run", str(path)], field, capsys)
    assert "eth.csv" in text


# (case id, TOML after `extends = "backpack"`, what the message must name): profile files
PROFILE_CASES = [
    ("profile-tick-huge", "[markets.BTC_USDC_PERP]\ntick_size = 1e400\n", "markets.BTC_USDC_PERP.tick_size"),
    ("profile-step-zero", "[markets.BTC_USDC_PERP]\nstep_size = 0\n", "markets.BTC_USDC_PERP.step_size"),
    ("profile-bands", "[markets.BTC_USDC_PERP.price_bands]\nmin_price = 10\nmax_price = 5\n",
     "markets.BTC_USDC_PERP.price_bands.max_price"),
    ("profile-max-price", "[markets.BTC_USDC_PERP.price_bands]\nmax_price = 1e30\n",
     "markets.BTC_USDC_PERP.price_bands.max_price"),
    ("profile-funding-submilli", "[markets.BTC_USDC_PERP]\nfunding_interval = 0.0001\n",
     "markets.BTC_USDC_PERP.funding_interval"),
    ("profile-funding-bound", "[markets.BTC_USDC_PERP]\nfunding_upper_bound_bps = 1e9\n",
     "markets.BTC_USDC_PERP.funding_upper_bound_bps"),
    ("profile-asset-step", "[assets.USDC]\nstep = -1\n", "assets.USDC.step"),
    ("profile-rate", "[assets.USDC.lending]\nr0 = 1e30\n", "assets.USDC.lending.r0"),
    ("profile-interest-zero", "interest_interval = 0\n", "interest_interval"),
    ("profile-realize-submilli", "realize_interval = 0.0005\n", "realize_interval"),
    ("profile-leverage", "max_leverage_limit = 1e9\n", "max_leverage_limit"),
    ("profile-loops", "[liquidation]\nmax_book_loops = 0\n", "liquidation.max_book_loops"),
    ("profile-not-toml", "this is = = not toml\n", "valid TOML"),
    ("profile-extends-unknown", 'extends = "nope"\n', "extends"),
]


@pytest.mark.parametrize(("snippet", "field"), [c[1:] for c in PROFILE_CASES], ids=[c[0] for c in PROFILE_CASES])
def test_profile_field_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, field: str) -> None:
    profile = tmp_path / "p.toml"
    head = 'name = "p"\n' + ('' if snippet.startswith("extends") else 'extends = "backpack"\n')
    profile.write_text(head + snippet, encoding="utf-8")
    refused(["position", "--profile", str(profile)], field, capsys)


def test_a_csv_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eth.csv").write_bytes(b"0,100\n\xff\xfe,1\n")
    path = tmp_path / "s.toml"
    path.write_text(BASE + '\n[prices.ETH]\nkind = "csv"\nfile = "eth.csv"\n', encoding="utf-8")
    refused(["run", str(path)], "not UTF-8", capsys)


def test_a_scenario_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(BASE.encode() + b"\n# \xff\xfe\n")
    refused(["run", str(path)], "not UTF-8", capsys)


def test_a_profile_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.toml"
    profile.write_bytes(b'extends = "backpack"\nname = "x"\n# \xff\n')
    refused(["position", "--profile", str(profile)], "not UTF-8", capsys)


def test_a_scenario_naming_a_profile_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.toml"
    profile.write_bytes(b'extends = "backpack"\nname = "x"\n# \xff\n')
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace("duration = 10\n", f'duration = 10\nprofile = "{profile}"\n'), encoding="utf-8")
    refused(["run", str(path)], "scenario.profile", capsys)


def test_a_report_onto_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.toml"
    path.write_text(BASE, encoding="utf-8")
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")
    refused(["run", str(path), "--report", str(tmp_path / "out")], "--report", capsys)


def test_a_report_into_a_folder_holding_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The report replaces its folder whole, so a folder with anything else in it is refused."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.toml"
    path.write_text(BASE, encoding="utf-8")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine", encoding="utf-8")
    text = refused(["run", str(path), "--report", str(tmp_path / "out")], "notes.txt", capsys)
    assert (tmp_path / "out" / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert "--report" in text


def test_messages_quote_values_in_toml_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE + '\n[[accounts]]\nid = "bob"\nleverage_limit = true\n', encoding="utf-8")
    text = refused(["run", str(path)], "accounts[2].leverage_limit", capsys)
    assert "found true" in text and "True" not in text


def test_a_time_bound_is_in_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace("duration = 10", "duration = 1e300"), encoding="utf-8")
    text = refused(["run", str(path)], "scenario.duration", capsys)
    assert "2592000" in text and "whole milliseconds" in text


def test_the_corpus_is_large_enough() -> None:
    cases = FILE_CASES + HEAD_CASES + SET_CASES + FLAG_CASES + LOG_CASES + CSV_CASES + PROFILE_CASES
    assert len(cases) + 9 >= 120  # the nine single tests above
    assert len({c[0] for c in cases}) == len(cases)


def test_fuzz_time_budget_alone_is_not_capped_at_the_default_runs(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--time-budget alone hands the campaign every seed from --seed on; --runs caps them."""
    from scenarios import fuzz

    seen: list[range] = []

    def campaign(seeds: range, **kwargs: object) -> fuzz.Campaign:
        seen.append(seeds)
        return fuzz.Campaign((), 0.0, 1)

    monkeypatch.setattr(fuzz, "campaign", campaign)
    assert cli(["fuzz", "--time-budget", "5"], capsys)[0] == 0
    assert cli(["fuzz", "--time-budget", "5", "--runs", "3", "--seed", "7"], capsys)[0] == 0
    assert cli(["fuzz"], capsys)[0] == 0
    assert seen[0].start == 0 and seen[0].stop - seen[0].start > 10**12
    assert seen[1] == range(7, 10)
    assert seen[2] == range(0, 100)


def test_an_id_not_in_the_log_is_not_found_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A well-formed --order or --account that the run does not have is "not found" (exit 1), not
    bad input: the message names it, suggests the close one, and lists the ids there are."""
    path = tmp_path / "events.jsonl"
    lines = [{"event": "order_placed", "actor": "account:alice", "t": 0, "order_id": "alice-long", "seq": 1},
             {"event": "order_rejected", "actor": "account:bob", "t": 5, "order_id": "bob-1", "code": "X", "seq": 2}]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")
    code, text = cli(["explain", str(path), "--order", "alice-lng"], capsys)
    assert code == 1 and "Traceback" not in text
    assert text == (f"marginsim: no order alice-lng in {path}; did you mean `alice-long`?\n"
                    "  its orders: alice-long, bob-1\n")
    code, text = cli(["explain", str(path), "--account", "carol"], capsys)
    assert code == 1 and text == f"marginsim: no sub-account carol in {path}\n  its sub-accounts: alice, bob\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"event": "price", "actor": "feed", "t": 0}\n', encoding="utf-8")
    code, text = cli(["explain", str(empty), "--account", "nope"], capsys)
    assert code == 1 and text.endswith("it has no sub-accounts\n")


def test_an_interrupted_log_is_explained_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.jsonl"
    lines = [{"event": "price", "actor": "feed", "t": 0, "seq": 1},
             {"event": "interrupted", "actor": "system", "t": 4250, "until": 10000, "seq": 2}]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")
    code, text = cli(["explain", str(path)], capsys)
    assert code == 0
    assert "interrupted at t=4.250s of 10s" in text


def test_a_position_no_mark_can_save_gets_an_answer_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    """10,000 BTC long on 10,000 USDC: the maintenance fraction grows with the square root of
    the notional (at 100,000: 1e9 x 0.00001496 x sqrt(1e9) dwarfs any equity), so no mark up
    to the market's 1,000,000 keeps it healthy. It used to double the search price until a
    Decimal overflow."""
    code, text = cli(["position", "--size", "10000"], capsys)
    assert code == 0
    assert "not available: no mark up to the market's maximum price 1000000 keeps this position healthy" in text


def test_a_random_walk_too_wild_for_its_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Volatility 50 over a day: 50 x sqrt(1/365) = 2.617 > 2, refused with that number; the
    same walk over an hour (50 x sqrt(1/8760) = 0.534) loads."""
    path = tmp_path / "s.toml"
    walk = '\n[prices.SOL]\nkind = "gbm"\nstart = 150\nvolatility = 50\n'
    path.write_text(BASE.replace("duration = 10", "duration = 86400") + walk, encoding="utf-8")
    text = refused(["run", str(path)], "prices.SOL.volatility", capsys)
    assert "(this one is 2.6171)" in text
    from scenarios import loader

    path.write_text(BASE.replace("duration = 10", "duration = 3600") + walk, encoding="utf-8")
    assert loader.load(str(path)).prices["SOL"].volatility == 50
