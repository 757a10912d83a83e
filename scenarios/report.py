"""An HTML report of one scenario run: PNG charts and one page that shows them.

``write_report`` draws from the run's event log: each market's index and mark with its trades,
each sub-account's net equity and MMR with its liquidation steps, and, for each liquidated
sub-account, what was sold at which price and what was left. The page around the charts is plain
HTML with inline CSS, no script and nothing fetched, so it opens offline straight from the
directory and can be attached to an issue as it is.

Figures are built on matplotlib's Agg canvas directly, without pyplot: nothing opens a window,
the process-wide backend is left alone, and no figure outlives its file. Decimals become floats
only to place points on a chart; every number printed on the page is formatted from the Decimal.
"""

from __future__ import annotations

import html
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from exchange.decimals import floor_to, fmt, fmt_pct
from exchange.orders import Origin
from exchange.profile import Profile
from exchange.validation import InputError
from scenarios.runner import CENT, Outcome, ScenarioRun, account_status

Event = Mapping[str, Any]

LIQUIDATION_TRIGGER = Decimal(1)  # MMR >= 100% starts a liquidation (exchange.liquidation.needs_liquidation)
MMR_CEILING = 3  # MMR is drawn up to this many times the auto-close level; higher (or infinite) is clipped
STAGE_COLORS = {
    "start": "tab:orange", "book": "tab:blue", "conversion": "tab:cyan", "backstop": "tab:purple",
    "adl": "tab:red", "fund": "tab:brown", "healthy": "tab:green", "closed": "tab:gray", "bankruptcy": "black",
}
OTHER_STAGE_COLOR = "tab:pink"
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
div.wide { overflow-x: auto; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
td.reason { min-width: 18em; max-width: 36em; overflow-wrap: anywhere; font-size: 0.92em; }
th { background: #f3f3f3; }
tr.pass td:first-child { color: #1a7f37; font-weight: bold; }
tr.fail td:first-child { color: #cf222e; font-weight: bold; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
"""


@attrs.frozen
class Chart:
    file: str  # a file name next to index.html
    caption: str


def check_directory(directory: Path) -> None:
    """Refuse a report folder that holds anything but an earlier report: writing one replaces
    the whole folder."""
    if directory.exists() and not directory.is_dir():
        raise InputError("--report", "--report", str(directory), "a folder for the report (this is a file)")
    if not directory.resolve().parent.is_dir():
        raise InputError("--report", "--report", str(directory),
                         f"a folder inside an existing one ({directory.resolve().parent} is not there)")
    if directory.is_dir():
        other = sorted(p.name for p in directory.iterdir() if not _is_report_file(p))
        if other:
            raise InputError("--report", "--report", str(directory),
                             "a new folder or one holding only an earlier report (index.html and .png charts), "
                             f"since it is replaced whole; this one also holds {', '.join(other[:5])}")


def _is_report_file(path: Path) -> bool:
    return path.is_file() and (path.name == "index.html" or path.suffix == ".png")


def write_report(run: ScenarioRun, directory: Path) -> Path:
    """Write the charts and ``index.html`` into ``directory``; return the page.

    The report is drawn in a temporary folder beside it, then renamed into place, so the
    folder holds either the earlier report or the new one, never a mix (an interrupted
    report leaves the earlier one). A run that stopped early has no event log to draw: its
    page says why it stopped.
    """
    check_directory(directory)
    target = directory.resolve()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        charts = _draw_charts(run, work) if run.result is not None else []
        (work / "index.html").write_text(_render_page(run, charts), encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            target.rename(old / "report")
            work.rename(target)
            shutil.rmtree(old)
        else:
            work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return directory / "index.html"


# ---------------------------------------------------------------------------------------
# Reading the event log


def _by_kind(events: Iterable[Event], kind: str, actor: str | None = None) -> list[Event]:
    return [e for e in events if e["event"] == kind and (actor is None or e["actor"] == actor)]


def _price_series(events: Iterable[Event]) -> dict[str, list[tuple[int, Decimal]]]:
    """Feed prices by symbol: an asset's is its index, a perp's is its mark."""
    series: dict[str, list[tuple[int, Decimal]]] = defaultdict(list)
    for e in _by_kind(events, "price", "feed"):
        series[e["symbol"]].append((e["t"], e["price"]))
    return series


def _owner(event: Event) -> str:
    """The market or sub-account an event is about: ``market:BTC_USDC_PERP`` -> ``BTC_USDC_PERP``."""
    return event["actor"].split(":", 1)[1]


def _grouped(events: Iterable[Event], kind: str, key: Callable[[Event], str]) -> dict[str, list[Event]]:
    """One pass over a long log instead of one per market or account."""
    groups: dict[str, list[Event]] = defaultdict(list)
    for e in _by_kind(events, kind):
        groups[key(e)].append(e)
    return groups


def _positions_after_steps(events: Iterable[Event], account: str) -> dict[int, Decimal]:
    """The account's position after each liquidation step, by the step's ``seq``.

    The step is logged once its fills are in, so the position the account's last fill in that
    market left is the one after the step. Spot fills carry no position and a borrow repaid by a
    backstop has no fill: those steps have no entry.
    """
    last: dict[str, Decimal | None] = {}
    after: dict[int, Decimal] = {}
    for e in events:
        if e["event"] == "fill" and e["actor"] == f"account:{account}":
            last[e["market"]] = e["position"]
        elif e["event"] == "liquidation_step" and e["account"] == account and last.get(e["market"]) is not None:
            after[e["seq"]] = last[e["market"]]
    return after


def _moved(series: Sequence[tuple[int, Decimal]]) -> bool:
    return len({price for _, price in series}) > 1


def _charted_markets(profile: Profile, markets: Collection[str], prices: Mapping[str, Sequence[tuple[int, Decimal]]],
                     trades: Mapping[str, Sequence[Event]]) -> list[str]:
    """Markets worth a price chart: every market that traded, every perp whose index or mark
    moved, and a spot market whose index moved when no charted perp already shows that index.
    A price that stood still all run would be a flat line saying nothing."""
    def moved(symbol: str) -> bool:
        return _moved(prices.get(symbol, ()))

    perps = {m for m in markets if profile.markets[m].is_perp and (moved(m) or moved(profile.markets[m].base))}
    shown = {profile.markets[m].base for m in perps}

    def charted(market: str) -> bool:
        spec = profile.markets[market]
        return market in trades or market in perps or (not spec.is_perp and spec.base not in shown and moved(spec.base))

    return [m for m in markets if charted(m)]


# ---------------------------------------------------------------------------------------
# Charts


def _draw_charts(run: ScenarioRun, directory: Path) -> list[Chart]:
    """Every chart of the run, saved in ``directory``, in page order."""
    assert run.result is not None
    events, summary, profile = run.result.events, run.result.summary, run.scenario.profile
    end_ms = run.until_ms
    prices, trades = _price_series(events), _grouped(events, "trade", _owner)
    charts = []
    for market in _charted_markets(profile, summary["markets"], prices, trades):
        base = profile.markets[market].base
        figure = _price_figure(market, base, prices.get(base, []), prices.get(market, []), trades.get(market, []),
                               end_ms)
        what = "index and mark" if profile.markets[market].is_perp else "index"
        charts.append(_save(figure, directory, f"prices-{market}.png",
                            f"{market}: {what} over time, with its trades (liquidation trades as crosses)."))
    fund = _fund_series(events, profile.settlement_asset)
    if fund:
        charts.append(_save(_fund_figure(fund, _by_kind(events, "liquidation_step", "liquidator"), profile, end_ms),
                            directory, "fund.png", f"The liquidity fund ({profile.settlement_asset}) over time: "
                            "liquidation fees and residual equity in, shortfalls and lender compensation out; "
                            "bankruptcies marked."))
    samples = _grouped(events, "health", _owner)
    steps = _grouped(events, "liquidation_step", lambda e: e["account"])
    for account in summary["accounts"]:
        own_steps = steps.get(account, [])
        figure = _account_figure(account, samples.get(account, []), own_steps, profile, end_ms)
        marks = "vertical lines are liquidation steps, coloured by stage" if own_steps else "never liquidated"
        charts.append(_save(figure, directory, f"account-{account}.png",
                            f"{account}: net equity and MMR over time; {marks}."))
        sold = [s for s in own_steps if s["quantity"] > 0]
        if sold:
            figure = _liquidation_figure(account, sold, _positions_after_steps(events, account))
            charts.append(_save(figure, directory, f"liquidation-{account}.png",
                                f"{account}: what each liquidation step sold and at which price (bars), and the "
                                f"position left after it (line)."))
    return charts


def _fund_series(events: Iterable[Event], settle: str) -> list[tuple[int, Decimal]]:
    """The fund's balance after each change: what the liquidator holds (the ``fund`` its events
    report) plus the liquidation fees the books collected on liquidation fills, as the run's
    summary counts it. Empty when the fund never moved."""
    held = fees = Decimal(0)
    series: list[tuple[int, Decimal]] = []
    for event in events:
        kind = event["event"]
        if kind in ("fund_flow", "lenders_compensated") and event.get("asset", settle) == settle:
            held = Decimal(event["fund"])
        elif kind == "fill" and event.get("liquidation_fee") and event.get("market", "").endswith("_PERP"):
            fees += Decimal(event["liquidation_fee"])
        else:
            continue
        series.append((int(event["t"]), held + fees))
    return series


def _fund_figure(series: Sequence[tuple[int, Decimal]], steps: Sequence[Event], profile: Profile,
                 end_ms: int) -> Figure:
    figure = _new_figure(10, 3.2)
    ax = figure.subplots()
    _step_line(ax, [(0, Decimal(0)), *series], end_ms, color="tab:brown", label="liquidity fund")
    ax.axhline(0, color="black", linewidth=0.8)
    bankrupt = [s for s in steps if s["stage"] == "bankruptcy"]
    for i, step in enumerate(bankrupt):
        ax.axvline(_seconds(_step_ms(step)), color="black", linestyle=":", alpha=0.6,
                   label="a bankruptcy" if i == 0 else None)
    ax.set_title("liquidity fund")
    ax.set_ylabel(profile.settlement_asset)
    ax.set_xlabel("time (s)")
    ax.set_xlim(0, _seconds(end_ms))
    ax.grid(alpha=0.3)
    _plain_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return figure


def _safe(name: str) -> str:
    """A file-name-safe form of a market or account id (ids are free text in a scenario)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _save(figure: Figure, directory: Path, file: str, caption: str) -> Chart:
    """Write the PNG without the matplotlib version in its metadata, so one run gives the same bytes."""
    file = _safe(file)
    figure.savefig(directory / file, dpi=100, metadata={"Software": None})
    return Chart(file, caption)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _step_ms(step: Event) -> int:
    """When a step happened (its own time; the log's ``t`` is when the liquidator recorded it)."""
    return int(step.get("at", step["t"]))


def _seconds(ms: int) -> float:
    return ms / 1000


def _plain_axis(ax: Axes) -> None:
    """Prices and equity read as numbers (100000), not as an offset in scientific notation."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _stage_color(stage: str) -> str:
    return STAGE_COLORS.get(stage, OTHER_STAGE_COLOR)


def _step_line(ax: Axes, series: Sequence[tuple[int, Decimal]], end_ms: int, **style: Any) -> None:
    """A price holds until the next one: drawn as steps, carried to the end of the run."""
    points = [*series, (max(end_ms, series[-1][0]), series[-1][1])]
    ax.plot([_seconds(t) for t, _ in points], [float(p) for _, p in points], drawstyle="steps-post", **style)


def _price_figure(market: str, base: str, index: Sequence[tuple[int, Decimal]], mark: Sequence[tuple[int, Decimal]],
                  trades: Sequence[Event], end_ms: int) -> Figure:
    figure = _new_figure(9, 4)
    ax = figure.add_subplot()
    if index:
        _step_line(ax, index, end_ms, label=f"index ({base})", color="tab:blue")
    if mark:
        _step_line(ax, mark, end_ms, label="mark", color="tab:orange", linestyle="--")
    _scatter_trades(ax, [e for e in trades if e["taker_origin"] == Origin.USER], label="trades", marker="o",
                    color="tab:gray")
    _scatter_trades(ax, [e for e in trades if e["taker_origin"] != Origin.USER], label="liquidation trades",
                    marker="x", color="tab:red")
    ax.set_title(f"{market} prices")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("price")
    ax.set_xlim(0, _seconds(end_ms))
    _plain_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return figure


def _scatter_trades(ax: Axes, trades: Sequence[Event], **style: Any) -> None:
    if trades:
        ax.scatter([_seconds(e["t"]) for e in trades], [float(e["price"]) for e in trades], s=24, zorder=3, **style)


def _mmr_percent(mmr: Decimal, ceiling: float) -> float:
    """MMR in percent for the chart, clipped at ``ceiling`` (infinite when equity is gone)."""
    return ceiling if mmr.is_infinite() else min(float(mmr * 100), ceiling)


def _account_figure(account: str, samples: Sequence[Event], steps: Sequence[Event], profile: Profile,
                    end_ms: int) -> Figure:
    figure = _new_figure(10, 6)
    equity_ax, mmr_ax = figure.subplots(2, 1, sharex=True)
    times = [_seconds(s["t"]) for s in samples]
    equity = [float(s["net_equity"]) for s in samples]
    equity_ax.plot(times, equity, color="tab:green")
    if any(e < 0 for e in equity):  # a debt to the fund: shaded, under a zero line, never off the axis
        equity_ax.fill_between(times, equity, 0, where=[e < 0 for e in equity], color="tab:red", alpha=0.3,
                               step="post", label="negative equity (owed to the liquidity fund)")
        equity_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    equity_ax.axhline(0, color="black", linewidth=0.8)
    equity_ax.set_title(f"sub-account {account}")
    equity_ax.set_ylabel(f"net equity ({profile.settlement_asset})")
    _plain_axis(equity_ax)

    auto_close = float(profile.liquidation.auto_close_mmr * 100)
    ceiling = MMR_CEILING * auto_close
    # No requirement left and no equity (a bankrupt account): MMR means nothing, so none is drawn.
    mmr = [float("nan") if s["net_equity"] <= 0 and not s.get("maintenance") else _mmr_percent(s["mmr"], ceiling)
           for s in samples]
    mmr_ax.plot(times, mmr, color="tab:blue", label="MMR")
    mmr_ax.axhline(float(LIQUIDATION_TRIGGER * 100), color="tab:red", linestyle="--",
                   label=f"liquidation starts ({fmt_pct(LIQUIDATION_TRIGGER, 0)})")
    mmr_ax.axhline(auto_close, color="black", linestyle=":",
                   label=f"auto-close to backstop ({fmt_pct(profile.liquidation.auto_close_mmr, 0)})")
    _mark_steps(equity_ax, mmr_ax, steps, ceiling)
    clipped = any(m >= ceiling for m in mmr)
    drawn = [m for m in mmr if m == m]  # without the NaNs
    mmr_ax.set_ylim(0, ceiling * 1.05 if clipped else max([auto_close * 1.2, *(m * 1.05 for m in drawn)]))
    mmr_ax.set_ylabel(f"MMR % (>{ceiling:g} drawn at {ceiling:g})" if clipped else "MMR %")
    mmr_ax.set_xlabel("time (s)")
    mmr_ax.set_xlim(0, _seconds(end_ms))
    for ax in (equity_ax, mmr_ax):
        ax.grid(alpha=0.3)
    mmr_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: it would hide the steps
    return figure


def _mark_steps(equity_ax: Axes, mmr_ax: Axes, steps: Sequence[Event], ceiling: float) -> None:
    """A vertical line per liquidation step on both panels, and a dot at its resulting MMR, one
    legend entry per stage."""
    for stage in dict.fromkeys(s["stage"] for s in steps):
        chosen = [s for s in steps if s["stage"] == stage]
        color = _stage_color(stage)
        for step in chosen:
            for ax in (equity_ax, mmr_ax):
                ax.axvline(_seconds(_step_ms(step)), color=color, alpha=0.35, linewidth=1)
        mmr_ax.scatter([_seconds(_step_ms(s)) for s in chosen], [_mmr_percent(s["mmr_after"], ceiling) for s in chosen],
                       color=color, s=18, zorder=3, label=f"step: {stage}")


def _liquidation_figure(account: str, sold: Sequence[Event], positions: Mapping[int, Decimal]) -> Figure:
    """One panel per market (or borrowed asset): a bar per step with its price written on it."""
    markets = list(dict.fromkeys(s["market"] for s in sold))
    figure = _new_figure(min(max(7.0, 2 + 0.5 * len(sold)), 20.0), 1 + 3 * len(markets))
    crowded = len(sold) > 24  # labels turn upright rather than overlap
    for ax, market in zip(figure.subplots(len(markets), 1, squeeze=False)[:, 0], markets, strict=True):
        rows = [s for s in sold if s["market"] == market]
        xs = range(len(rows))
        bars = ax.bar(xs, [float(s["quantity"]) for s in rows], width=0.6,
                      color=[_stage_color(s["stage"]) for s in rows], label="sold in the step (at the price on top)")
        ax.bar_label(bars, labels=[fmt(s["price"], 2) for s in rows], fontsize=7, padding=2,
                     rotation=90 if crowded else 0)
        left = [(x, abs(positions[s["seq"]])) for x, s in zip(xs, rows, strict=True) if s["seq"] in positions]
        if left:
            ax.plot([x for x, _ in left], [float(q) for _, q in left], color="black", marker="o",
                    label="position left (absolute)")
        ax.set_xticks(list(xs), [f"{s['stage']}\n{_seconds(s['t']):g}s" for s in rows], fontsize=8,
                      rotation=90 if crowded else 0)
        ax.set_xlim(-0.6, max(len(rows), 5) - 0.4)  # a lone step keeps a bar's width, not the panel's
        ax.set_ylabel(f"{market} quantity")
        ax.set_ylim(0, ax.get_ylim()[1] * (1.4 if crowded else 1.15))  # room for the price labels
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    figure.suptitle(f"liquidation of {account}")
    return figure


# ---------------------------------------------------------------------------------------
# The page


def _holdings(values: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{fmt(q)} {s}" for s, q in values.items() if q) or "-"


def _row(cells: Sequence[str], css: str = "", *, prose_last: bool = False) -> str:
    """A table row; cells are escaped here, so callers pass plain text. ``prose_last`` wraps the
    last cell (a reason) in a column of its own width, so the table fits the page."""
    attribute = f' class="{css}"' if css else ""
    tds = [f"<td>{html.escape(cell)}</td>" for cell in cells]
    if prose_last and tds:
        tds[-1] = f'<td class="reason">{html.escape(cells[-1])}</td>'
    return f"<tr{attribute}>" + "".join(tds) + "</tr>"


def _table(headers: Sequence[str], rows: Iterable[str]) -> str:
    """A table of ``_row`` rows under escaped headers, scrolling sideways rather than overflowing."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _overview(run: ScenarioRun) -> str:
    scenario = run.scenario
    verdict = "all expectations hold" if run.passed else "FAILED"
    rows = [("seed", str(run.seed)), ("virtual time", f"{_seconds(run.until_ms):g} s"),
            ("profile", scenario.profile.name), ("verdict", verdict)]
    if run.result is not None:
        rows.insert(2, ("fingerprint", run.result.fingerprint))
    if run.failure is not None:
        rows.append(("stopped early", str(run.failure)))
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (f"<h1>{html.escape(scenario.name)}</h1>\n<p>{html.escape(scenario.description)}</p>\n"
            f"<table><tbody>{facts}</tbody></table>")


def _expectations(run: ScenarioRun) -> str:
    if not run.outcomes:
        return ""
    return "<h2>Expectations</h2>\n" + _table(("result", "expectation", "found"), map(_outcome_row, run.outcomes))


def _outcome_row(outcome: Outcome) -> str:
    verdict = "pass" if outcome.passed else "fail"
    return _row((verdict.upper(), outcome.description, outcome.detail), verdict)


def _summary(summary: Mapping[str, Any], settle: str) -> str:
    """The end state: the same tables the terminal summary prints (markets that traded or paid funding)."""
    accounts = []
    for account, row in summary["accounts"].items():
        empty = row["net_equity"] <= 0 and not (row["positions"] or row["borrows"])  # no ratio to show
        accounts.append(_row((
            account, fmt(floor_to(row["net_equity"], CENT)), "-" if empty else fmt_pct(row["imr"]),
            "-" if empty else fmt_pct(row["mmr"]), _holdings(row["balances"]), _holdings(row["positions"]),
            _holdings(row["borrows"]), _holdings(row["lends"]), str(row["open_orders"]), str(row["liquidations"]),
            account_status(row, settle)), prose_last=True))
    markets = [
        _row((market, str(row["trades"]), fmt(row["volume"], 2), fmt(row["funding_paid"], 6)))
        for market, row in summary["markets"].items() if row["trades"] or row["funding_paid"]
    ]
    parts = [
        "<h2>Sub-accounts at the end</h2>",
        _table(("account", f"net equity ({settle})", "IMR", "MMR", "balances", "positions", "borrows", "lends",
                "open orders", "liquidations", "status"), accounts),
        "<h2>Markets</h2>",
        _table(("market", "trades", f"volume ({settle})", "funding paid"), markets) if markets else "<p>No trades.</p>",
    ]
    if any(summary["fund"].values()):
        parts.append(f"<p>Liquidity fund: {html.escape(_holdings(summary['fund']))}</p>")
    return "\n".join(parts)


def _liquidation_steps(steps: Sequence[Event]) -> str:
    """Every liquidation step with its reason: the chart shows how much, this says why."""
    if not steps:
        return ""
    rows = []
    for s in steps:
        moved = (f"; at the earlier mark {fmt(s['planned_mark'])}: → {fmt_pct(s['mmr_after_at_planned_mark'])}"
                 if s.get("planned_mark") is not None and s.get("mmr_after_at_planned_mark") is not None else "")
        rows.append(_row((
            f"{_step_ms(s) / 1000:.3f}s", s["account"], s["stage"], s["market"] or "-", s["side"] or "-",
            fmt(s["quantity"]), fmt(s["price"]), fmt(s.get("mark")), fmt(s.get("taker_fee", 0)),
            fmt(s.get("liquidation_fee", 0)), fmt(s.get("position_after")),
            f"{fmt_pct(s['mmr_before'])} → {fmt_pct(s['mmr_after'])}{moved}", s["reason"]), prose_last=True))
    return "<h2>Liquidation steps</h2>\n" + _table(
        ("time", "account", "stage", "market", "side", "quantity", "price", "mark", "taker fee", "liquidation fee",
         "left", "MMR", "reason"), rows)


def _figures(charts: Sequence[Chart]) -> str:
    if not charts:
        return ""
    return "<h2>Charts</h2>\n" + "\n".join(
        f'<figure><img src="{html.escape(c.file)}" alt="{html.escape(c.caption)}">'
        f"<figcaption>{html.escape(c.caption)}</figcaption></figure>"
        for c in charts
    )


def _render_page(run: ScenarioRun, charts: Sequence[Chart]) -> str:
    """The whole page: overview, end state, expectations, charts, then every liquidation step."""
    parts = [_overview(run)]
    if run.result is not None:
        parts.append(_summary(run.result.summary, run.scenario.profile.settlement_asset))
    parts += [_expectations(run), _figures(charts)]
    if run.result is not None:
        parts.append(_liquidation_steps(_by_kind(run.result.events, "liquidation_step", "liquidator")))
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(run.scenario.name)} — marginsim report</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")
