"""``marginsim serve`` and ``marginsim replay``: a scenario's venue behind the API, and a
recorded session re-run on virtual time.

``serve`` builds the scenario's actor system (latency, faults and the live invariant observer
included), gives every sub-account without a configured key a fresh ED25519 key pair
(written with ``--keys``, mode 0600), binds Hypercorn's Trio worker and prints, flushed,
``serving http://HOST:PORT ws://HOST:PORT/ws``. The system runs in the same trio run on a
``PacedClock``: its scheduler moves the venue's instant ``rate`` virtual seconds per real
second. SIGINT or SIGTERM stops taking requests, finishes the instant, writes the log and
returns the run for the caller to summarize; a broken invariant stops the server with it.

``replay`` reads such a log, rebuilds the same system (scenario, seed, the venue clock's
start) and plans every logged request for its logged instant on virtual time, through the
same route code; the new log must equal the old one, and the result says whether it does.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from actors.clock import PacedClock
from actors.events import read_log
from actors.system import RunFailed, RunResult
from api import auth
from api.app import Gateway, build_app, wall_ms
from api.routes import dispatch
from api.session import Session
from api.streams import Streams
from exchange.validation import InputError
from scenarios import loader
from scenarios.runner import ScenarioRun, judge

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@attrs.frozen
class Served:
    """A finished session: the run (summarized as ``marginsim run`` does) and the venue-wide
    invariants checked on the quiet venue at the end (conservation, pools, positions, balances)."""

    run: ScenarioRun
    violations: tuple[str, ...]
    failure: RunFailed | None = None  # the run stopped the server (a broken invariant, a crash)


@attrs.frozen
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    rate: float = 1.0
    seed: int | None = None
    keys_path: Path | None = None
    log_path: Path | None = None
    until_s: float | None = None
    public: bool = False
    rate_limit: int = 50


def account_keys(scenario: loader.Scenario) -> dict[str, auth.KeyPair]:
    """Every sub-account's credentials: the scenario's ``api_key`` if given, else a fresh pair."""
    keys = {}
    for i, account in enumerate(scenario.accounts):
        if account.api_key is None:
            keys[account.id] = auth.generate_key()
            continue
        try:
            auth.public_key(account.api_key)
        except ValueError as exc:
            raise InputError(scenario.source, f"accounts[{i}].api_key", account.api_key,
                             f"base64 of a 32-byte ED25519 public key ({exc})") from None
        keys[account.id] = auth.KeyPair(account.api_key, None)
    taken = [k.api_key for k in keys.values()]
    if len(set(taken)) != len(taken):
        raise InputError(scenario.source, "accounts[].api_key", "the same api_key twice", "one key per sub-account")
    return keys


def write_keys(path: Path, keys: Mapping[str, auth.KeyPair]) -> None:
    """``{"<account>": {"api_key", "secret"}}``, created readable by its owner only."""
    document = {a: {"api_key": k.api_key, **({"secret": k.secret} if k.secret else {})} for a, k in keys.items()}
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")


def check_host(host: str, public: bool) -> None:
    if host not in LOOPBACK and not public:
        raise InputError("--host", "--host", host, "a loopback address (127.0.0.1, localhost, ::1), "
                         "or add --public to listen on another address")


def result_of(session: Session, fingerprint: str) -> ScenarioRun:
    """The session as a finished run, for the same summary ``marginsim run`` prints: the
    scenario's expectations judged on what the clients made of it."""
    until_ms = session.now_ms
    result = RunResult(session.seed, until_ms, fingerprint, session.kept, session.log.count,
                       dict(session.summary()), session.venue.liquidator.history)
    outcomes = tuple(judge(e, result, session.scripts) for e in session.scenario.expectations)
    return ScenarioRun(session.scenario, session.seed, until_ms, result, None, outcomes)


def serve(scenario_ref: str, options: ServeOptions, overrides: list[str] | None = None) -> Served:
    """Serve ``scenario_ref`` until stopped (or ``until_s``); the finished run."""
    check_host(options.host, options.public)
    scenario = loader.load(scenario_ref, overrides or [])
    if options.rate <= 0:
        raise InputError("--rate", "--rate", str(options.rate), "a positive number of virtual seconds per real second")
    seed = scenario.seed if options.seed is None else options.seed
    until_ms = None if options.until_s is None else round(options.until_s * 1000)
    keys = account_keys(scenario)
    if options.keys_path is not None:
        write_keys(options.keys_path, keys)
    source = str(Path(scenario_ref).resolve()) if Path(scenario_ref).is_file() else scenario_ref
    session = Session(scenario, seed, wall_ms(), clock=PacedClock(options.rate), until_ms=until_ms, source=source,
                      log_path=options.log_path, overrides=tuple(overrides or ()))
    gateway = Gateway(session, {k.api_key: a for a, k in keys.items()}, rate_limit=options.rate_limit)
    if options.host not in LOOPBACK:
        print(f"marginsim serve: WARNING: listening on {options.host}, reachable from other machines; "
              "the API keys are the only protection", file=sys.stderr)
    failure: RunFailed | None = None
    try:
        trio.run(_serve, gateway, options)
    except* OSError as failed:  # the bind: the port is taken, or the address is not this machine's
        session.log.close()
        cause: BaseException = failed
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        raise InputError("--port", "--host/--port", f"{options.host}:{options.port}",
                         f"an address and port free to listen on ({cause}); --port 0 takes a free one") from None
    except* RunFailed as stopped:
        failure = stopped.exceptions[0]  # type: ignore[assignment]
    fingerprint = session.result.fingerprint if session.result is not None else session.log.close()
    return Served(result_of(session, fingerprint), tuple(session.invariant_violations()), failure)


async def _serve(gateway: Gateway, options: ServeOptions) -> None:
    streams = Streams(gateway)
    gateway.streams = streams
    app = build_app(gateway, streams.endpoint)
    config = Config()
    host = f"[{options.host}]" if ":" in options.host else options.host
    config.bind = [f"{host}:{options.port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    # The signals are ours from before the first request to the end: a second Ctrl-C while
    # stopping must not cut the log short.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(_signals, signals, stop)
            async with trio.open_nursery() as server:
                binds = await server.start(lambda task_status=trio.TASK_STATUS_IGNORED: hypercorn_serve(
                    app, config, shutdown_trigger=shutdown_trigger, task_status=task_status))
                address = binds[0].split("://", 1)[1]
                print(f"serving http://{address} ws://{address}/ws", flush=True)
                session = gateway.session
                async with trio.open_nursery() as venue:
                    venue.start_soon(_run_venue, session, stop)
                    await stop.wait()
                    gateway.accepting = False  # requests still in flight are answered; new ones get 503
                    session.stop()  # the current instant is finished, then the run ends
                streams.close()
                server.cancel_scope.deadline = trio.current_time() + 2 * config.graceful_timeout
            outer.cancel_scope.cancel()


async def _run_venue(session: Session, stop: trio.Event) -> None:
    """The actor system on the paced clock; its end (``--until``, a stop) stops the server."""
    try:
        await session.run()
    finally:
        stop.set()


async def _signals(signals: Any, stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()


# ---------------------------------------------------------------------------------------
# Replay


@attrs.frozen
class Replay:
    run: ScenarioRun
    requests: int
    original_fingerprint: str
    fingerprint: str
    first_difference: str | None

    @property
    def identical(self) -> bool:
        return self.first_difference is None


def replay(log_path: Path, new_log: Path | None = None) -> Replay:
    """Re-run a served session from its log: the same requests at the same virtual instants."""
    if new_log is not None:
        return _replay(log_path, new_log)
    with tempfile.TemporaryDirectory() as tmp:
        return _replay(log_path, Path(tmp) / "replay.jsonl")


def _replay(log_path: Path, new_log: Path) -> Replay:
    if not log_path.is_file():
        raise InputError(str(log_path), "LOG", str(log_path), "an event log written by `marginsim serve --log`")
    try:
        original = read_log(log_path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(str(log_path), "LOG", "a line that is not JSON", f"canonical JSON lines ({exc})") from None
    head = next((e for e in original if e.get("event") == "api_session"), None)
    if head is None:
        raise InputError(str(log_path), "LOG", "no api_session event", "an event log written by `marginsim serve --log`")
    scenario = loader.load(head["scenario"], list(head.get("overrides", [])))
    session = Session(scenario, int(head["seed"]), int(head["start_wall_ms"]), source=head["scenario"],
                      log_path=new_log, overrides=tuple(head.get("overrides", [])))
    requests = 0
    end_ms = 0
    for event in original:
        kind = event["event"]
        if kind == "api_request":
            requests += 1
            session.plan(int(event["t"]), lambda now, e=event: dispatch(session, e["account"], e["method"], e["path"],
                                                                       e["params"]))
        elif kind == "api_refused" and event.get("stage") == "gate":
            session.plan(int(event["t"]), lambda now, e=event: session.log_refused(
                e["method"], e["path"], int(e["status"]), e["code"], e["message"]))
        end_ms = max(end_ms, int(event["t"]))
    try:
        fingerprint = session.run_replay(end_ms).fingerprint
    except RunFailed as failure:  # it stopped where the served run stopped, or it differs: the logs say
        fingerprint = failure.fingerprint
    difference = _first_difference(original, read_log(new_log))
    return Replay(result_of(session, fingerprint), requests, _fingerprint(log_path), fingerprint, difference)


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_difference(original: list[dict[str, Any]], again: list[dict[str, Any]]) -> str | None:
    for i, (a, b) in enumerate(zip(original, again)):
        if a != b:
            return f"event {i + 1} differs:\n  recorded: {a}\n  replayed: {b}"
    if len(original) != len(again):
        return f"the recording has {len(original)} events, the replay {len(again)}"
    return None
