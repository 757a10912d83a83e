"""The scenario loader's refusals and the marginsim command line."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from exchange.validation import InputError
from scenarios import loader
from scenarios.cli import main

D = Decimal
LIBRARY = loader.library_dir()

REFUSAL = """\
[scenario]
name = "refusal"
description = "a funded account is refused, then places the largest size that passes"
duration = 3

[prices.BTC]
kind = "constant"
price = 100000

[[accounts]]
id = "maker"
deposits = { USDC = 1000000 }

[[accounts]]
id = "alice"
deposits = { USDC = 10000 }
markets = ["BTC_USDC_PERP"]

[[actions]]
at = 1
account = "alice"
type = "order"
id = "too-big"
market = "BTC_USDC_PERP"
side = "buy"
quantity = 1.5
price = 100000

[[expect]]
kind = "refused"
order = "too-big"
code = "INSUFFICIENT_MARGIN"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- bad files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, field, line, allowed",
    [
        ('deposits = { USDC = 10000 }', 'deposits = { USDC = -5 }', "accounts[1].deposits.USDC", 16, "> 0"),
        ('deposits = { USDC = 10000 }', 'deposits = { USDX = 5 }', "accounts[1].deposits.USDX", 16, "an asset"),
        ('side = "buy"', 'side = "long"', "actions[0].side", 25, "one of `buy`"),
        ('duration = 3', 'duration = "soon"', "scenario.duration", 4, "a decimal number"),
        ('account = "alice"', 'account = "alicia"', "actions[0].account", 21, "the id of an account"),
        ('order = "too-big"', 'order = "too-small"', "expect[0].order", 31, "the id of an order action"),
        ('markets = ["BTC_USDC_PERP"]', 'markets = ["BTC_PERP"]', "accounts[1].markets[0]", 17, "a market of the profile"),
    ],
)
def test_a_bad_scenario_names_file_line_field_and_what_is_allowed(tmp_path, old, new, field, line, allowed):
    path = write(tmp_path, REFUSAL.replace(old, new, 1))
    with pytest.raises(InputError) as info:
        loader.load(str(path))
    err = info.value
    assert (err.source, err.field, err.line) == (str(path), field, line)
    assert allowed in err.allowed
    assert f"{path}:{line}: field `{field}`" in str(err)


def test_an_expectation_that_can_never_pass_is_refused(tmp_path):
    path = write(tmp_path, REFUSAL + '\n[[expect]]\nkind = "net_equity"\naccount = "alice"\nmin = 5\nmax = 1\n')
    with pytest.raises(InputError, match="at least min") as info:
        loader.load(str(path))
    assert info.value.field == "expect[1].max"


def test_a_count_that_can_never_pass_is_refused(tmp_path):
    never = '\n[[expect]]\nkind = "liquidated"\naccount = "alice"\nat_least = 2\nat_most = 1\n'
    path = write(tmp_path, REFUSAL + never)
    with pytest.raises(InputError, match="at least at_least") as info:
        loader.load(str(path))
    assert info.value.field == "expect[1].at_most"


def test_prices_may_be_left_out(tmp_path):
    """Assets a scenario does not mention keep their constant default price."""
    start = REFUSAL.index("[prices.BTC]")
    path = write(tmp_path, REFUSAL[:start] + REFUSAL[REFUSAL.index("[[accounts]]"):])
    prices = loader.load(str(path)).prices
    assert (prices["BTC"].kind, prices["BTC"].price, prices["SOL"].price) == ("constant", D(100000), D(150))


def test_unknown_keys_get_a_did_you_mean(tmp_path):
    path = write(tmp_path, REFUSAL.replace("leverage_limit", "x").replace('markets = ["BTC_USDC_PERP"]',
                                                                          'markts = ["BTC_USDC_PERP"]'))
    with pytest.raises(InputError, match=r"did you mean `markets`\?") as info:
        loader.load(str(path))
    assert info.value.field == "accounts[1].markts" and info.value.line == 17
    typo = write(tmp_path, REFUSAL.replace('side = "buy"', 'side = "buy"\npost_onyl = true'), "t.toml")
    with pytest.raises(InputError, match=r"did you mean `post_only`\?"):
        loader.load(str(typo))


def test_toml_syntax_errors_give_the_line(tmp_path):
    path = write(tmp_path, REFUSAL.replace("price = 100000\n\n[[accounts]]", "price = 100000 x\n\n[[accounts]]", 1))
    with pytest.raises(InputError) as info:
        loader.load(str(path))
    assert info.value.line == 8 and "valid TOML" in str(info.value)


def test_unknown_scenario_name_suggests_a_shipped_one():
    with pytest.raises(InputError, match="did you mean `partial-liquidation`"):
        loader.load("partial-liquidatoin")


def test_set_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, REFUSAL)
    scenario = loader.load(str(path), ["accounts[1].leverage_limit=20", "scenario.seed=7"])
    assert scenario.accounts[1].leverage_limit == 20 and scenario.seed == 7
    with pytest.raises(InputError) as info:
        loader.load(str(path), ["accounts[1].leverage_limit=500"])
    assert info.value.field == "accounts[1].leverage_limit" and "<= 50" in info.value.allowed


def test_a_bad_file_runs_nothing_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, REFUSAL.replace("duration = 3", "duration = -3"))
    log = tmp_path / "events.jsonl"
    assert main(["run", str(path), "--log", str(log)]) == 2
    assert "scenario.duration" in capsys.readouterr().err
    assert not log.exists()


# -- run, json, explain -------------------------------------------------------------------


def test_run_exit_status_follows_the_expectations(tmp_path, capsys):
    path = write(tmp_path, REFUSAL)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PASS order too-big refused with INSUFFICIENT_MARGIN" in out and "fingerprint" in out
    failing = write(tmp_path, REFUSAL.replace("quantity = 1.5", "quantity = 0.5"), "f.toml")
    assert main(["run", str(failing)]) == 1
    assert "FAIL order too-big refused" in capsys.readouterr().out


def test_refused_can_pin_the_largest_size_that_passes(tmp_path, capsys):
    """alice has 10,000 USDC at the default 10x: IMF_eff = max(0.01333333, 1/10) = 0.1, so the
    largest bid at the 100,000 mark is 10,000 / (100,000 x 0.1) = 1 BTC (nothing fills: no fee)."""
    expect = 'code = "INSUFFICIENT_MARGIN"\n'
    right = write(tmp_path, REFUSAL.replace(expect, expect + "max_quantity = 1\n"), "right.toml")
    assert main(["run", str(right)]) == 0
    out = capsys.readouterr().out
    assert "PASS order too-big refused with INSUFFICIENT_MARGIN, the largest size that passes 1" in out
    wrong = write(tmp_path, REFUSAL.replace(expect, expect + "max_quantity = 0.9\n"), "wrong.toml")
    assert main(["run", str(wrong)]) == 1
    assert "(its largest size that passes is 1)" in capsys.readouterr().out


def test_counted_expectations_have_an_upper_bound(tmp_path, capsys):
    """alice is never liquidated: ``at_most = 0`` alone holds, ``at_least = 1`` does not."""
    never = write(tmp_path, REFUSAL + '\n[[expect]]\nkind = "liquidation_stage"\naccount = "alice"\nstage = "book"\n'
                  'at_most = 0\n', "never.toml")
    assert main(["run", str(never)]) == 0
    assert "PASS alice has exactly 0 'book' liquidation step(s): 0 book step(s)" in capsys.readouterr().out
    once = write(tmp_path, REFUSAL + '\n[[expect]]\nkind = "liquidated"\naccount = "alice"\nat_most = 3\n'
                 'at_least = 1\n', "once.toml")
    assert main(["run", str(once)]) == 1
    assert "FAIL alice liquidated between 1 and 3 time(s): 0 start step(s)" in capsys.readouterr().out


JSON_KEYS = {"scenario", "description", "seed", "until", "passed", "failure", "fingerprint", "events", "accounts",
             "markets", "fund", "expectations"}
ACCOUNT_KEYS = {"net_equity", "imr", "mmr", "available", "balances", "positions", "borrows", "lends",
                "unsettled_equity", "liquidations", "liquidation_history", "open_orders", "status",
                "liquidation_prices"}
STEP_KEYS = {"time_ms", "stage", "market", "side", "quantity", "price", "fee", "mmr_before", "mmr_after", "reason",
             "taker_fee", "liquidation_fee", "mark", "planned_mark", "mmr_after_at_planned_mark", "position_after"}


def test_json_summary_has_the_documented_keys(tmp_path, capsys):
    assert main(["run", "partial-liquidation", "--json", "--seed", "3"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == JSON_KEYS
    assert set(document["accounts"]["trader"]) == ACCOUNT_KEYS
    history = document["accounts"]["trader"]["liquidation_history"]
    assert set(history[0]) == STEP_KEYS and document["accounts"]["maker"]["liquidation_history"] == []
    # partial-liquidation's trigger and first book step, derived in its file's header.
    assert (history[0]["stage"], history[0]["mmr_before"], history[0]["time_ms"]) == ("start", "1.50750075375", 6000)
    assert [(s["stage"], s["side"], s["quantity"], s["price"]) for s in history[1:3]] == [
        ("book", "Ask", "0.1", "90440"), ("book", "Ask", "0.09", "90440")]
    assert set(document["markets"]["BTC_USDC_PERP"]) == {"trades", "volume", "funding_paid"}
    assert document["seed"] == 3 and document["passed"] is True and len(document["fingerprint"]) == 64
    assert document["expectations"][0] == {"description": "order open-long accepted", "passed": True,
                                           "detail": "accepted"}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for key in JSON_KEYS | ACCOUNT_KEYS | STEP_KEYS:
        assert f"`{key}`" in readme, key


def test_explain_a_refusal(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    assert main(["run", str(write(tmp_path, REFUSAL)), "--log", str(log)]) == 0
    capsys.readouterr()
    assert main(["explain", str(log), "--order", "too-big"]) == 0
    out = capsys.readouterr().out
    assert "Order too-big (Bid 1.5 BTC_USDC_PERP at 100000) from sub-account alice was refused at t=1.000s: " \
           "INSUFFICIENT_MARGIN." in out
    assert "IMR from 0% to 150%: available equity 10000 -> -5000 USDC" in out
    assert "The largest Bid that would have passed: 1." in out
    assert "set by the sub-account's leverage limit" in out


def test_explain_a_liquidation(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    assert main(["run", "partial-liquidation", "--log", str(log)]) == 0
    capsys.readouterr()
    assert main(["explain", str(log)]) == 0
    assert "trader: 1 start, 5 book, 1 healthy" in capsys.readouterr().out
    assert main(["explain", str(log), "--account", "trader"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # The single-position estimate (partial-liquidation's header): 9,950 USDC + 1 BTC bought at
    # 100,000, MMF 0.00666667: P = (100,000 - 9,950) / (1 - 0.00666667) = 90,654.3627..., shown
    # rounded up (toward the mark, for a long) as 90,654.37.
    assert lines[0] == ("t=6.000s 1 BTC_USDC_PERP at mark 90450: its estimated liquidation price was 90654.37 "
                        "(closed form: MMF flat at its base).")
    assert lines[1].startswith("t=6.000s start at MMR 150.75% (MMR 150.75%: net equity 400 against maintenance "
                               "margin 603 (1 BTC_USDC_PERP at 90450 needs 603, PnL -9550)")
    assert lines[2].startswith("t=6.000s book: Ask 0.1 BTC_USDC_PERP at 90440 (mark 90450), taker fee 4.522, "
                               "liquidation fee 0; MMR 150.75% -> 137.57%; 0.9 left")
    assert lines[-2].startswith("t=11.000s healthy (")
    # A log has no end state: the last health sample is what it can judge (MMR just under 100%).
    assert lines[-1] == "At the end of the run (t=30.000s) MMR was 99.99%: nothing pending."


def test_the_event_log_file_is_the_fingerprinted_log(tmp_path, capsys):
    import hashlib

    log = tmp_path / "events.jsonl"
    assert main(["run", "partial-liquidation", "--log", str(log), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert hashlib.sha256(log.read_bytes()).hexdigest() == document["fingerprint"]


def test_list_names_every_shipped_scenario(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in loader.shipped():
        assert name in out
    assert "partial-liquidation" in out


def test_run_differential_says_the_drivers_agree(capsys):
    """partial-liquidation logs 127 events (two of them the closing health samples), the same on the engine and on the actors."""
    assert main(["run", "partial-liquidation", "--differential"]) == 0
    assert capsys.readouterr().out == (
        "partial-liquidation, seed 1: the engine and the actors agree exactly (127 events)\n")


def test_a_misnamed_expectations_table_is_refused_with_its_line(tmp_path, capsys):
    """FORMAT.md names the table `[[expect]]`; `[[expectations]]` on line 7 gets that line and
    the did-you-mean, exit 2."""
    path = write(tmp_path, '[scenario]\nname = "x"\nduration = 1\n\n[[accounts]]\nid = "a"\n'
                           '[[expectations]]\nkind = "fund"\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7: field `expectations`" in err and "(did you mean `expect`?)" in err


def test_a_refusal_one_step_over_the_line_reads_over_it(capsys):
    """order-refused's 0.69851 BTC bid leaves available equity -0.1 on net equity 9,985, so IMR
    is 9,985.1 / 9,985 = 100.001...%: shown as 100.001%, not as the 100% the rule allows."""
    assert main(["run", "order-refused", "--json"]) == 0
    details = [e["detail"] for e in json.loads(capsys.readouterr().out)["expectations"]]
    assert any("0.69851 BTC_USDC_PERP would take IMR from 30.04% to 100.001%" in d for d in details)


def test_the_summary_says_how_each_account_ended(tmp_path, capsys):
    """cascade at seed 1 ends with bankrupt accounts, t08 mid-liquidation and t09 over 100%
    MMR with no liquidation yet (the run stopped before the next loop). A bankrupt account's
    debt is its negative unsettled equity rounded up to the cent, and the fund paid at least the
    sum of those debts; explain says who absorbed it and where the run stopped."""
    log = tmp_path / "events.jsonl"
    assert main(["run", "cascade", "--json", "--log", str(log)]) == 0
    document = json.loads(capsys.readouterr().out)
    accounts = document["accounts"]
    for account in ("t01", "t02", "t03"):
        debt = -Decimal(accounts[account]["unsettled_equity"])
        cents = debt.quantize(Decimal("0.01"), rounding="ROUND_CEILING")
        assert accounts[account]["status"] == f"bankrupt: owes the liquidity fund {cents} USDC"
        assert accounts[account]["liquidation_history"][-1]["stage"] == "bankruptcy"
    assert accounts["t08"]["status"] == "the run ended mid-liquidation"
    assert Decimal(accounts["t09"]["mmr"]) >= 1 and accounts["t09"]["liquidations"] == 0
    assert accounts["t09"]["status"].startswith("liquidation pending: MMR 105.")
    estimate = accounts["t12"]["liquidation_prices"]["BTC_USDC_PERP"]
    assert estimate["method"] == "closed form" and Decimal(estimate["price"]) > 0
    assert main(["explain", str(log), "--account", "t01"]) == 0
    out = capsys.readouterr().out
    assert "the liquidity fund absorbed its debt: it paid 2568.01 USDC" in out
    # explain's step times are the steps' own, as in run's history.
    times = [f"t={s['time_ms'] / 1000:.3f}s {s['stage']}" for s in accounts["t01"]["liquidation_history"]]
    assert all(t in out for t in times)
    assert main(["explain", str(log), "--account", "t08"]) == 0
    assert "The run ended mid-liquidation" in capsys.readouterr().out


def test_explain_judges_the_end_of_cascade_as_run_does(tmp_path, capsys):
    """t09 in cascade (seed 1) is never liquidated: its last health sample, at t=49.004 s, was
    taken on the mark of t=48.002 s (93,629.4: 1 BTC long, equity 629.4, MMR 99.17%); the mark of
    t=49.002 s (93,590) reached it after, so at the end its equity is 929.9 - (93,929.9 - 93,590)
    = 590 and MMR 105.75%: liquidation pending, which `run` says. Explaining the scenario judges
    that end state with the same rule and says the same; so does explaining the log, from the
    closing sample every account logs at the end. A log without closing samples (one cut short)
    says what its last periodic sample showed and how to get the end judged."""
    assert main(["run", "cascade", "--json"]) == 0
    t09 = json.loads(capsys.readouterr().out)["accounts"]["t09"]
    assert t09["net_equity"] == "590" and t09["liquidations"] == 0
    assert t09["status"] == "liquidation pending: MMR 105.75% >= 100%, the next loop starts it"
    assert main(["explain", "cascade", "--account", "t09"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Sub-account t09 was never liquidated.", f"At the end of the run (t=50.000s): {t09['status']}."]
    assert main(["explain", "cascade", "--account", "t12"]) == 0  # MMR 4.59% at the end: nothing pending
    assert capsys.readouterr().out.splitlines() == ["Sub-account t12 was never liquidated."]
    log = tmp_path / "events.jsonl"
    assert main(["run", "cascade", "--log", str(log)]) == 0
    capsys.readouterr()
    assert main(["explain", str(log), "--account", "t09"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"At the end of the run (t=50.000s): {t09['status']}."
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(line for line in log.read_text().splitlines(keepends=True) if '"closing":true' not in line))
    assert main(["explain", str(cut), "--account", "t09"]) == 0
    out = capsys.readouterr().out
    assert "At its last health sample (t=49.004s) MMR was 99.17%: nothing pending then." in out
    assert "`marginsim explain SCENARIO --account t09` runs it" in out


def test_explain_an_order_id_two_accounts_used():
    """An order id is its sub-account's own: alice's x was accepted and filled, bob's x refused.
    Each gets its own answer, in the order they first used it; ``account`` picks one."""
    from scenarios import explain

    placed = {"event": "order_placed", "actor": "account:alice", "order_id": "x", "side": "Bid", "quantity": "1",
              "market": "SOL_USDC", "price": "150", "imr_after": None, "t": 1000}
    refused = {"event": "order_rejected", "actor": "account:bob", "order_id": "x", "side": "Ask", "quantity": "2",
               "market": "SOL_USDC", "price": None, "code": "INVALID_ORDER", "message": "no", "t": 2000}
    closed = {"event": "order_closed", "actor": "account:alice", "order_id": "x", "status": "Filled",
              "reason": None, "executed": "1", "t": 3000}
    events = [placed, refused, closed]
    assert explain.explain_order(events, "x") == [
        "Order x (Bid 1 SOL_USDC at 150) from sub-account alice was accepted at t=1.000s (it could only reduce risk: "
        "no margin check).",
        "  t=3.000s it ended Filled with 1 executed.",
        "Order x (Ask 2 SOL_USDC at market) from sub-account bob was refused at t=2.000s: INVALID_ORDER.",
        "  no",
    ]
    assert explain.explain_order(events, "x", "bob")[0].startswith("Order x (Ask 2 SOL_USDC at market) from sub-account bob")
    assert explain.explain_order(events, "x", "carol") == ["No order x of sub-account carol in this log."]
