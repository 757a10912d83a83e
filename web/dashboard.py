"""The web dashboard: a page that plays a run's event log, served offline.

The page (``static/``: HTML, CSS and a script of our own, no library and nothing from a CDN)
fetches the run's events once and replays them in the browser: index and mark with trades and
liquidation fills, each sub-account's equity and MMR against the 100% and auto-close lines, the
books' tops, the liquidation feed, the fund and ADL, with play, pause, step, speed, pause on the
next liquidation and jump back. Each liquidation step comes with its line from
``exchange.liquidation.describe_step``, so the page words it as ``run`` and ``explain`` do.

How each account ended is judged here too, not in the script: the server annotates each
account's closing health sample (the one logged once the run's last instant has settled) with
``status_text``, ``runner.account_status``'s words for it (liquidation pending with its MMR, a
bankrupt account's debt, mid-liquidation). The rule has one home in Python, which the page
cannot call; annotating the sample, rather than sending each account's end in the meta, keeps
it on the event it judges, so a served run that ends, a saved log and a jump back all show it
exactly when the page reaches that sample and not before.

``page_routes`` is what both front doors mount: ``marginsim demo --web`` (a finished run or a
saved ``--log``) and ``marginsim serve`` (at ``/``, through ``api.app.build_app``, fed by the
session's events so far: the page asks every second for those after the ones it has, and plays
the live run as a client trades on it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from actors.events import render
from exchange.decimals import ceil_to, floor_to, fmt, fmt_pct
from exchange.liquidation import describe_step
from scenarios.demo import scenario_markets
from scenarios.explain import sample_row, step_from_event
from scenarios.loader import Scenario
from scenarios.runner import CENT, account_status

STATIC = Path(__file__).resolve().parent / "static"
Event = dict[str, Any]


def with_words(events: Sequence[Event], settle: str = "USDC", starts: Mapping[str, int] | None = None) -> list[Event]:
    """The events as the page reads them: canonical JSON values, each liquidation step with its
    plain-words line (``text``), each closing health sample with the account's end status
    (``status_text``, judged in ``settle`` with the liquidations ``starts`` counts before these
    events plus those among them)."""
    started = Counter(starts or {})
    out = []
    for event in events:
        plain = json.loads(render(event))
        if plain["event"] == "liquidation_step":
            plain["text"] = describe_step(step_from_event(plain))
            if plain["stage"] == "start":
                started[plain["account"]] += 1
        elif plain["event"] == "health":
            _health_words(plain)
            if plain.get("closing"):
                account = plain["actor"].removeprefix("account:")
                plain["status_text"] = account_status(sample_row(plain, started[account]), settle)
        out.append(plain)
    return out


def _starts(events: Iterable[Event]) -> Counter[str]:
    """How many liquidations each account started in ``events``."""
    return Counter(e["account"] for e in events if e["event"] == "liquidation_step" and e["stage"] == "start")


def _health_words(sample: Event) -> None:
    """A health sample's numbers as the terminal shows them: equity floored to the cent, a debt
    ceiled, ratios that never read across 100%, and none at all for an account with nothing left."""
    equity = Decimal(sample["net_equity"])
    empty = equity <= 0 and not sample.get("positions") and not sample.get("borrows")
    sample["equity_text"] = fmt(floor_to(equity, CENT))
    sample["imr_text"] = "-" if empty else fmt_pct(Decimal(sample["imr"]))
    sample["mmr_text"] = "-" if empty else fmt_pct(Decimal(sample["mmr"]))
    unsettled = Decimal(sample.get("unsettled_equity") or 0)
    if unsettled < 0:
        sample["debt_text"] = fmt(ceil_to(-unsettled, CENT))


# What the page's source gives it: the events from a position on (the index of the first of
# them, which is past the asked position when a long session has let older ones go).
Source = Callable[[int], tuple[int, Sequence[Event]]]


def meta_for(scenario: Scenario, seed: int, until_ms: int | None, *, start_paused: bool = False,
             live: bool = False) -> dict[str, Any]:
    """What the page needs besides the events: names, the x axis (``until_ms``; None while a
    served run goes on), the auto-close line, the perp it charts (the scenario's first) and the
    backstops' capacity."""
    profile = scenario.profile
    perps = [m for m in scenario_markets(scenario) if profile.markets[m].is_perp]
    market = profile.markets[perps[0]] if perps else None
    return {"name": scenario.name, "seed": seed, "until_ms": until_ms, "settle": profile.settlement_asset,
            "auto_close": float(profile.liquidation.auto_close_mmr), "start_paused": start_paused, "live": live,
            "market": market.symbol if market else None, "base": market.base if market else None,
            "backstops": {a: {k: float(v) for k, v in capacity.items()} for a, capacity in scenario.backstops}}


def page_routes(events: Source | None, *, meta: dict[str, Any] | None = None) -> list[BaseRoute]:
    """The page at ``/``, its files under ``/dashboard/static`` and the run at
    ``/dashboard/run.json?after=N`` (the events from the N-th on: a live page asks only for
    what is new); without an event source the run answers 404 with the reason."""

    settle = (meta or {}).get("settle", "USDC")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    async def run(request: Request) -> Response:
        if events is None:
            return JSONResponse({"code": "NO_EVENTS", "message": "this server keeps no event history to play"},
                                status_code=404)
        after = request.query_params.get("after", "0")
        if not after.isdigit() or len(after) > 18:
            return JSONResponse({"code": "INVALID_CLIENT_REQUEST", "message": f"after: found {after!r}; allowed: "
                                 "a whole number of events already read (0 or more)"}, status_code=400)
        start, chunk = events(int(after))
        starts: Counter[str] = Counter()
        if start and any(e["event"] == "health" and e.get("closing") for e in chunk):
            first, earlier = events(0)  # an account's end is judged with its liquidations so far
            starts = _starts(earlier[:max(start - first, 0)])
        body = {"meta": meta or {}, "from": start, "events": with_words(chunk, settle, starts)}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return [Route("/", index), Route("/dashboard/run.json", run),
            Mount("/dashboard/static", app=StaticFiles(directory=STATIC), name="dashboard-static")]


def from_list(events: Sequence[Event]) -> Source:
    """A finished run's events as the page's source."""
    return lambda after: (after, events[after:])


def app(events: Sequence[Event], meta: dict[str, Any]) -> Starlette:
    """The dashboard on its own, for ``marginsim demo --web``."""
    return Starlette(routes=page_routes(from_list(events), meta=meta))


def serve(events: Sequence[Event], meta: dict[str, Any], *, host: str = "127.0.0.1", port: int = 8000,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard on Hypercorn's Trio worker until Ctrl-C (then it returns); ``ready``
    gets the URL."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: hypercorn_serve(
                app(events, meta), config, task_status=task_status))  # type: ignore[arg-type]
            if ready is not None:
                ready(binds[0] + "/" if binds else f"http://{host}:{port}/")

    try:
        trio.run(main)
    except* KeyboardInterrupt:  # Ctrl-C (SIGTERM too, under the CLI) is how the page is stopped: no traceback
        pass
