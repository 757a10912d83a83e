"""The ASGI application: Starlette routes in front of a ``Session``, on the one Trio loop.

Each request is read (at most ``MAX_BODY`` bytes), parsed, checked against the signature and
the per-key rate limit, and only then handed to the session, which injects it into the venue
at the instant it arrives at, in arrival order; the handler awaits its answer. Errors are the
venue's ``{"code", "message"}`` with a 4xx status; nothing that fails before the venue changes
it. A client that hangs up after sending loses nothing: the request still reaches the venue.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from api import auth
from api.routes import PRIVATE, PUBLIC, ApiError, dispatch
from api.session import Session

MAX_BODY = 64 * 1024
METHODS = ["GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"]  # every one answers JSON, even a 405


def wall_ms() -> int:
    """The wall clock in Unix ms: authentication windows and ``/api/v1/time`` only."""
    return time.time_ns() // 1_000_000


class Gateway:
    """What the routes share: the session, the keys, the rate limit, the streams."""

    def __init__(self, session: Session, keys: dict[str, str], *, rate_limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.keys = keys  # api key -> sub-account id
        self.verify_keys = {k: auth.public_key(k) for k in keys}
        self.rate_limit = rate_limit
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}
        self.accepting = True
        self.streams: Any = None  # the WebSocket hub (api.streams), when serving

    def _rate_limited(self, api_key: str) -> bool:
        second = int(self._clock())
        start, count = self._counts.get(api_key, (second, 0))
        if start != second:
            start, count = second, 0
        self._counts[api_key] = (start, count + 1)
        return count + 1 > self.rate_limit

    def authenticate(self, request: Request, instruction: str, params: Any) -> str:
        """The sub-account a signed request speaks for; ``AuthError`` when it may not."""
        headers = request.headers
        api_key = headers.get("x-api-key")
        if api_key is None:
            raise auth.AuthError("UNAUTHORIZED", "missing X-API-Key header")
        key = self.verify_keys.get(api_key)
        if key is None:
            raise auth.AuthError("UNAUTHORIZED", "unknown API key")
        timestamp, window = auth.check_window(headers.get("x-timestamp"), headers.get("x-window"), wall_ms())
        auth.verify(key, headers.get("x-signature"), instruction, params, timestamp, window)
        if self._rate_limited(api_key):
            raise ApiError(429, "TOO_MANY_REQUESTS", f"more than {self.rate_limit} requests in one second for this key")
        return self.keys[api_key]


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is {declared} bytes; at most {MAX_BODY} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_query(query: str) -> dict[str, Any]:
    """Query parameters; a repeated key becomes a list (``marketType=SPOT&marketType=PERP``)."""
    out: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ApiError(400, "INVALID_CLIENT_REQUEST", f"bad query string: {exc}") from None
    for key, value in pairs:
        if key in out:
            previous = out[key]
            out[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[key] = value
    return out


def parse_body(body: bytes, batch: bool) -> Any:
    """A JSON object (an array of objects for a batch), numbers kept as the text the client signed."""
    if not body.strip():
        return [] if batch else {}
    try:
        data = json.loads(body, parse_int=str, parse_float=str)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "INVALID_CLIENT_REQUEST", f"the body is not valid JSON: {exc}") from None
    if batch:
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ApiError(400, "INVALID_CLIENT_REQUEST", "the body must be a JSON array of order objects")
        for item in data:
            _flat(item)
        return [{k: v for k, v in item.items() if v is not None} for item in data]
    if not isinstance(data, dict):
        raise ApiError(400, "INVALID_CLIENT_REQUEST", f"the body must be a JSON object, found {type(data).__name__}")
    _flat(data)
    return {k: v for k, v in data.items() if v is not None}


def _flat(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            raise ApiError(400, "INVALID_CLIENT_REQUEST", f"{key}: nested objects and arrays are not accepted")


def build_app(gateway: Gateway, websocket: Callable[..., Any] | None = None) -> Starlette:
    session = gateway.session

    async def endpoint(request: Request) -> Response:
        method, path = request.method, request.url.path.rstrip("/") or "/"
        try:
            if not gateway.accepting:
                raise ApiError(503, "SERVICE_UNAVAILABLE", "the simulation is stopping")
            body = await read_body(request)
            if path == "/api/v1/time" and method == "GET":
                return Response(str(wall_ms()), media_type="application/json")
            private = PRIVATE.get((method, path))
            public = PUBLIC.get(path) if method == "GET" else None
            if private is None and public is None:
                known = any(p == path for _, p in PRIVATE) or path in PUBLIC
                raise ApiError(405 if known else 404, "RESOURCE_NOT_FOUND",
                               f"{method} {path} is not a route of this API" if not known
                               else f"{path} does not take {method}")
            if method == "GET":
                params = parse_query(request.url.query)
            else:
                params = parse_body(body, batch=path == "/api/v1/orders" and method == "POST")
            account = None
            if private is not None:
                try:
                    account = gateway.authenticate(request, private.instruction, params)
                except auth.AuthError as exc:
                    raise ApiError(401, exc.code, str(exc)) from None
            result = await session.request(lambda now: dispatch(session, account, method, path, params))
            if gateway.streams is not None:
                gateway.streams.publish()
            return JSONResponse(result)
        except ApiError as exc:
            if not exc.logged:
                session.refuse(method, path, exc.status, exc.code, str(exc))
            return error(exc.status, exc.code, str(exc))
        except Exception as exc:  # a bug of ours: the client gets a clean answer, the operator the cause
            print(f"marginsim serve: {method} {path} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return error(500, "INTERNAL_ERROR", "the server failed on this request; the operator's log has the cause")

    # The web dashboard at / (web/dashboard.py): it plays the session's events as they come.
    from web.dashboard import meta_for, page_routes

    meta = meta_for(session.scenario, session.seed, session.until_ms, live=True)
    routes: list[Any] = [*page_routes(session.events_after, meta=meta),
                         Route("/{path:path}", endpoint, methods=METHODS)]
    if websocket is not None:
        routes.insert(0, WebSocketRoute("/ws", websocket))
    return Starlette(routes=routes)
