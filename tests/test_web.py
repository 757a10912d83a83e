"""The web dashboard: its files are offline, its words are the project's, and a real headless
Chromium plays cascade to its first liquidation step.

The browser test needs Chromium and its driver from the OS (Debian: ``apt-get install chromium
chromium-driver``, which ``.ci/run`` does); without them it is skipped and says so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from exchange.liquidation import describe_step
from scenarios import loader, runner
from web import dashboard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ENABLE = "install Chromium and its driver to run it: apt-get install chromium chromium-driver (Debian)"


@pytest.fixture(scope="module")
def cascade() -> runner.ScenarioRun:
    return runner.run(loader.load("cascade"))


def test_the_page_fetches_nothing_from_elsewhere():
    """Every script, style and font is shipped: no address outside the page's own server."""
    files = sorted(dashboard.STATIC.iterdir())
    assert {f.name for f in files} == {"dashboard.html", "dashboard.js", "dashboard.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path.name
        assert "@import" not in text and "url(" not in text, path.name


def test_the_page_reads_steps_and_samples_in_the_projects_words(cascade):
    """Each liquidation step carries describe_step's line, each health sample the summary's
    rounding: a bankrupt account's equity floored and its debt ceiled to the cent, no ratio."""
    events = dashboard.with_words(cascade.result.events)
    steps = [e for e in events if e["event"] == "liquidation_step"]
    for account, history in cascade.result.history.items():
        assert [s["text"] for s in steps if s["account"] == account] == [describe_step(s) for s in history]
    last = [e for e in events if e["event"] == "health" and e["actor"] == "account:t01"][-1]
    assert last["imr_text"] == last["mmr_text"] == "-"
    assert last["debt_text"] == "2568.01" and last["equity_text"] == "-2568.01"


PENDING = "liquidation pending: MMR 105.75% >= 100%, the next loop starts it"


def test_each_accounts_closing_sample_carries_how_it_ended(cascade):
    """The page cannot call Python, so the server judges each account's end with run's rule and
    puts the words on its closing sample: t09 ended at MMR 105.75% with no liquidation under way
    (pending; its last periodic sample, at 49.004 s, read 99.17%), t08 mid-liquidation, t01 owing
    the fund 2,568.01, t10 with nothing to say. No earlier sample carries a status."""
    events = dashboard.with_words(cascade.result.events, "USDC")
    closing = {e["actor"].removeprefix("account:"): e for e in events if e["event"] == "health" and e.get("closing")}
    assert {e["t"] for e in closing.values()} == {50000}
    ends = {a: runner.account_status(row, "USDC") for a, row in cascade.result.summary["accounts"].items()}
    assert {a: e["status_text"] for a, e in closing.items()} == ends  # the same words as `run`'s summary
    assert closing["t09"]["status_text"] == PENDING and closing["t09"]["mmr_text"] == "105.75%"
    assert closing["t08"]["status_text"] == "the run ended mid-liquidation"
    assert closing["t01"]["status_text"] == "bankrupt: owes the liquidity fund 2568.01 USDC"
    assert closing["t10"]["status_text"] == ""
    assert not any("status_text" in e for e in events if e["event"] == "health" and not e.get("closing"))
    before_end = [e for e in events if e["event"] == "health" and e["actor"] == "account:t09"][-2]
    assert before_end["t"] == 49004 and before_end["mmr_text"] == "99.17%"


def test_a_page_asking_only_for_the_end_gets_the_same_end(cascade):
    """A live page asks for the events after those it has: the closing samples it gets then are
    judged with the liquidations logged before them, as a full fetch judges them: t07, liquidated
    once and left with nothing, reads "liquidated to zero equity", which it could not without its
    start step (logged long before the end)."""
    import json

    import trio

    app = dashboard.app(cascade.result.events, {"settle": "USDC"})
    after = next(i for i, e in enumerate(cascade.result.events) if e["event"] == "health" and e.get("closing"))

    async def get(path: str, query: str) -> dict:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "root_path": ""}
        await app(scope, receive, send)
        assert sent[0]["status"] == 200
        return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    whole = trio.run(get, "/dashboard/run.json", "")
    tail = trio.run(get, "/dashboard/run.json", f"after={after}")
    assert tail["from"] == after and len(tail["events"]) == len(whole["events"]) - after
    assert tail["events"] == whole["events"][after:]
    assert not any(e["event"] == "liquidation_step" for e in tail["events"])
    t07 = next(e for e in tail["events"] if e["event"] == "health" and e["actor"] == "account:t07")
    assert cascade.result.summary["accounts"]["t07"]["liquidations"] == 1
    assert t07["status_text"] == "liquidated to zero equity"


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason=f"no headless browser here: {ENABLE}")
def test_a_browser_plays_cascade_to_its_first_liquidation_step(cascade, tmp_path):
    """`marginsim demo cascade --web` serves the page; Chromium presses play at 10x with
    "pause on the next liquidation step" on, and the page stops at the run's first step: its
    clock at that step's time, its feed line the one `run` prints, t01 shown liquidating, the
    same number of events as the run logged. The screenshot is saved beside the test's files."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server = subprocess.Popen([sys.executable, "-m", "scenarios.cli", "demo", "cascade", "--web", "--port", "0",
                               "--start-paused"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = server.stdout.readline()
        url = re.search(r"http://\S+", line).group(0)
        options = webdriver.ChromeOptions()
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1500"):
            options.add_argument(argument)
        options.binary_location = CHROMIUM
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            browser.get(url)
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.ID, "total").text not in ("", "0"))
            assert int(browser.find_element(By.ID, "total").text) == cascade.result.event_count
            Select(browser.find_element(By.ID, "speed")).select_by_value("10")
            browser.find_element(By.ID, "play").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#feed li"))
            wait.until(lambda b: b.find_element(By.ID, "state").text == "paused")
            first = min((s for steps in cascade.result.history.values() for s in steps), key=lambda s: s.time_ms)
            account = next(a for a, steps in cascade.result.history.items() if first in steps)
            feed = browser.find_elements(By.CSS_SELECTOR, "#feed li")
            assert [li.text for li in feed] == [f"{account}: {describe_step(first)}"]
            assert browser.find_element(By.ID, "time").text == f"{first.time_ms / 1000:.3f}"
            row = browser.find_element(By.CSS_SELECTOR, f'#accounts tr[data-account="{account}"]')
            assert "liquidating" in row.text
            browser.find_element(By.ID, "step-second").click()
            assert len(browser.find_elements(By.CSS_SELECTOR, "#feed li")) > 1  # the next steps of that second
            browser.find_element(By.ID, "back").click()
            assert float(browser.find_element(By.ID, "time").text) < first.time_ms / 1000 + 1
            # On to t01's bankruptcy (a pause at each step): the table shows that instant, not the
            # last health sample's: t01 bankrupt with no position left, blp holding what the
            # backstop took (1.02579 BTC), the whale short by 21.4 less what ADL closed (3.87421).
            steps = cascade.result.history["t01"]
            taken = {s.stage: s.quantity for s in steps if s.stage in ("backstop", "adl")}
            for _ in range(10):
                feed = browser.find_elements(By.CSS_SELECTOR, "#feed li")
                if feed and feed[-1].get_attribute("data-account") == "t01" and \
                        feed[-1].get_attribute("data-stage") == "bankruptcy":
                    break
                browser.find_element(By.ID, "play").click()
                wait.until(lambda b: b.find_element(By.ID, "state").text == "paused")
            assert browser.find_element(By.ID, "time").text == f"{steps[-1].time_ms / 1000:.3f}"

            def row(name: str) -> list[str]:
                cells = browser.find_elements(By.CSS_SELECTOR, f'#accounts tr[data-account="{name}"] td')
                return [c.text for c in cells]

            assert row("t01")[4:] == ["-", "bankrupt"]
            assert row("blp")[4] == f"{taken['backstop']} BTC_USDC_PERP" == "1.02579 BTC_USDC_PERP"
            assert row("whale")[4] == f"{-21.4 + float(taken['adl']):.5f} BTC_USDC_PERP" == "-17.52579 BTC_USDC_PERP"
            assert browser.find_element(By.ID, "adl-parties").text == "whale"
            assert browser.find_element(By.ID, "backstop-room").text == "blp BTC_USDC_PERP: 0.76 of 100000 USDC"
            browser.save_screenshot(str(tmp_path / "dashboard.png"))
            assert (tmp_path / "dashboard.png").stat().st_size > 20_000
            # On to the end, without stopping: at its closing sample t09 reads as `run` ends it.
            browser.find_element(By.ID, "pause-on-liquidation").click()
            assert browser.find_element(By.ID, "pause-on-liquidation").is_selected() is False
            browser.find_element(By.ID, "play").click()
            wait.until(lambda b: b.find_element(By.ID, "state").text == "ended")
            assert browser.find_element(By.ID, "time").text == f"{cascade.until_ms / 1000:.3f}" == "50.000"
            assert row("t09")[3] == "105.75%" and row("t09")[5] == PENDING
            assert row("t01")[5] == "bankrupt: owes the liquidity fund 2568.01 USDC"
            assert row("t08")[5] == "the run ended mid-liquidation"
            assert browser.find_element(By.CSS_SELECTOR, '#accounts tr[data-account="t09"]').get_attribute(
                "class") == "ended"
        finally:
            browser.quit()
    finally:
        server.terminate()  # SIGTERM is Ctrl-C to the CLI: the page stops quietly
        _, errors = server.communicate(timeout=30)
    assert server.returncode == 0 and errors == "", errors



@pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason=f"no headless browser here: {ENABLE}")
def test_a_browser_follows_a_served_run_as_a_client_trades(tmp_path):
    """`marginsim serve` puts the same page at `/`: Chromium opens it, a client buys through the
    API, and the page (asking the server each second for what is new) plays up to and past the
    fill's event, its title saying the run is live."""
    import json
    import urllib.request

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_api import PERP, start_server

    server = start_server(tmp_path)
    try:
        options = webdriver.ChromeOptions()
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        options.binary_location = CHROMIUM
        browser = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            browser.get(server.http + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.ID, "total").text not in ("", "0"))
            assert browser.find_element(By.ID, "title").text == "marginsim: api-test (seed 3), live"
            client = server.ccxt("other")
            client.load_markets()
            order = client.create_order(PERP, "market", "buy", 0.01)
            with urllib.request.urlopen(server.http + "/dashboard/run.json", timeout=30) as answer:
                logged = json.loads(answer.read())["events"]
            fill = next(e for e in logged if e["event"] == "fill" and e.get("order_id") == order["id"])
            wait.until(lambda b: int(b.find_element(By.ID, "cursor").text) >= fill["seq"])
            assert browser.find_element(By.ID, "state").text == "playing"
        finally:
            browser.quit()
    finally:
        server.process.terminate()
        server.process.communicate(timeout=30)
