"""Ctrl-C and SIGTERM, sent for real to a real ``marginsim`` process: the run stops with
``interrupted at t=...`` and exit status 130, the event log ends with an ``interrupted`` event
that ``explain`` reports, ``fuzz`` prints the table of the runs that finished, and a report
folder keeps the earlier report whole.

Nothing here asserts how long anything takes: each test waits for a condition (the log has
its first events, the process has done some work) and only then sends the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.cli import main

MARGINSIM = [sys.executable, "-m", "scenarios.cli"]
LONG = ["cascade", "--until", "3000"]  # far longer than any test waits
WATCHDOG_S = 120  # only so that a broken build fails instead of hanging


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.Popen(MARGINSIM + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until(proc: subprocess.Popen[str], ready: object) -> None:
    deadline = time.monotonic() + WATCHDOG_S
    while not ready():  # type: ignore[operator]
        assert proc.poll() is None, f"it ended before it was interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "the process never got going"
        time.sleep(0.05)


def has_events(log: Path) -> object:
    return lambda: log.exists() and log.stat().st_size > 0


def busy(proc: subprocess.Popen[str], cpu_s: float) -> object:
    """True once the process has used ``cpu_s`` of CPU: it is past its imports and working."""
    ticks = os.sysconf("SC_CLK_TCK")

    def ready() -> bool:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks >= cpu_s

    return ready


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WATCHDOG_S)
    return proc.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_when_and_its_log_says_so(tmp_path: Path, signum: int,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.jsonl"
    proc = start(["run", *LONG, "--log", str(log)], tmp_path)
    wait_until(proc, has_events(log))
    proc.send_signal(signum)
    code, out, err = finish(proc)
    assert code == 130, err
    assert "Traceback" not in err + out
    assert "interrupted at t=" in err
    last = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
    assert last["event"] == "interrupted" and last["actor"] == "system" and last["until"] == 3_000_000
    assert f"interrupted at t={last['t'] / 1000:.3f}s" in err
    assert main(["explain", str(log)]) == 0
    assert f"This run was interrupted at t={last['t'] / 1000:.3f}s of 3000s" in capsys.readouterr().out


def test_an_interrupted_json_run_still_prints_a_document(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    proc = start(["run", *LONG, "--json", "--log", str(log)], tmp_path)
    wait_until(proc, has_events(log))
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    document = json.loads(out)
    assert document["failure"]["kind"] == "interrupted" and document["passed"] is False
    assert document["scenario"] == "cascade" and 0 < document["interrupted_at"] < 3000


def test_an_interrupted_fuzz_campaign_prints_what_finished(tmp_path: Path) -> None:
    proc = start(["fuzz", "--runs", "100000", "--out", str(tmp_path / "failures")], tmp_path)
    wait_until(proc, busy(proc, 3.0))
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert "Traceback" not in err + out
    assert "fuzz campaign (interrupted)" in out
    assert "passed" in out and "seeds/s" in out
    assert "interrupted: the table counts the " in out and " run(s) that finished" in out


def test_an_interrupted_demo_exits_130(tmp_path: Path) -> None:
    proc = start(["demo", *LONG, "--rate", "50"], tmp_path)
    wait_until(proc, busy(proc, 2.0))
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert "Traceback" not in err + out
    assert "interrupted at t=" in err


def test_an_interrupted_report_run_leaves_the_earlier_report_whole(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "report"
    assert main(["run", "partial-liquidation", "--report", str(folder)]) == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    log = tmp_path / "events.jsonl"
    proc = start(["run", *LONG, "--report", str(folder), "--log", str(log)], tmp_path)
    wait_until(proc, has_events(log))
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "report"]  # no half-written folder left


def test_a_report_interrupted_while_drawing_leaves_the_earlier_one(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the charts are drawn: the folder still holds the earlier report, byte for
    byte, and no temporary folder is left beside it."""
    pytest.importorskip("matplotlib")
    from scenarios import loader, report, runner

    run = runner.run(loader.load("partial-liquidation"))
    folder = tmp_path / "report"
    report.write_report(run, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def draw_then_stop(run: object, directory: Path) -> list[object]:
        (directory / "account-trader.png").write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "_draw_charts", draw_then_stop)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(run, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_a_second_report_replaces_the_first_whole(tmp_path: Path) -> None:
    """Rerunning into the same folder leaves only the new report's files (no old index.html
    or charts of accounts the new run does not have)."""
    pytest.importorskip("matplotlib")
    from scenarios import loader, report, runner

    folder = tmp_path / "report"
    report.write_report(runner.run(loader.load("cascade"), until_s=2), folder)
    first = sorted(p.name for p in folder.iterdir())
    report.write_report(runner.run(loader.load("partial-liquidation")), folder)
    second = sorted(p.name for p in folder.iterdir())
    assert "account-t01.png" in first and "account-t01.png" not in second
    assert "index.html" in second and "partial-liquidation" in (folder / "index.html").read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
