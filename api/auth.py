"""Request signing as Backpack's clients do it: ED25519 over a canonical instruction string.

Every private request carries ``X-API-Key`` (base64 of a 32-byte public key), ``X-Signature``
(base64 of the 64-byte signature), ``X-Timestamp`` (Unix ms) and ``X-Window`` (ms, default
5000, at most 60000). The signed string is ``instruction=<name>&<params sorted by key>&
timestamp=<ts>&window=<window>``; a JSON array body is a batch whose orders each add their own
``instruction=...&...`` chunk. Clients differ only in percent-encoding exotic values (ccxt quotes
them, the SDK does not), so a signature is checked on the raw form first, then the quoted one.

The window is judged against the wall clock, never the simulation's: a client's clock offset
option (ccxt's ``adjustForTimeDifference``) reads ``GET /api/v1/time``, which is wall time too.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping, Sequence
from urllib.parse import quote

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

DEFAULT_WINDOW_MS = 5000
MAX_WINDOW_MS = 60000


class AuthError(Exception):
    """A private request that must not reach the venue: ``code`` is the venue's error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@attrs.frozen
class KeyPair:
    """A sub-account's API credentials as clients take them: base64 public key and seed."""

    api_key: str
    secret: str | None  # None for a key the scenario gave (we never saw its seed)


def generate_key(seed: bytes | None = None) -> KeyPair:
    """A fresh ED25519 key pair (``seed``: 32 bytes, for tests that need a known key)."""
    signing = SigningKey(seed if seed is not None else secrets.token_bytes(32))
    return KeyPair(base64.b64encode(bytes(signing.verify_key)).decode(), base64.b64encode(bytes(signing)).decode())


def public_key(api_key: str) -> VerifyKey:
    """The verify key behind ``api_key``; ``ValueError`` if it is not base64 of 32 bytes."""
    try:
        raw = base64.b64decode(api_key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"api key {api_key!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"api key {api_key!r} decodes to {len(raw)} bytes, not the 32 of an ED25519 public key")
    return VerifyKey(raw)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _pairs(params: Mapping[str, object], encode: bool) -> list[str]:
    out = []
    for key in sorted(params):
        value = params[key]
        if value is None:
            continue
        text = _text(value)
        out.append(f"{key}={quote(text, safe='') if encode else text}")
    return out


def signing_string(instruction: str, params: Mapping[str, object] | Sequence[Mapping[str, object]], timestamp: str,
                   window: str, *, encode: bool = False) -> str:
    """The canonical string a client signs (a list of params is a batch)."""
    chunks: list[str] = []
    batches = params if isinstance(params, Sequence) else [params]
    for one in batches:
        chunks.append(f"instruction={instruction}")
        chunks.extend(_pairs(one, encode))
    chunks += [f"timestamp={timestamp}", f"window={window}"]
    return "&".join(chunks)


def check_window(timestamp: str | None, window: str | None, now_ms: int) -> tuple[str, str]:
    """The timestamp and window as signed; ``AuthError`` unless both are sound and current."""
    if timestamp is None:
        raise AuthError("UNAUTHORIZED", "missing X-Timestamp header")
    window = window if window is not None else str(DEFAULT_WINDOW_MS)
    if not timestamp.isdigit():
        raise AuthError("UNAUTHORIZED", f"X-Timestamp must be Unix milliseconds, got {timestamp!r}")
    if not window.isdigit():
        raise AuthError("UNAUTHORIZED", f"X-Window must be milliseconds, got {window!r}")
    if int(window) > MAX_WINDOW_MS:
        raise AuthError("UNAUTHORIZED", f"X-Window {window} is above the maximum {MAX_WINDOW_MS}")
    skew = now_ms - int(timestamp)
    if abs(skew) > int(window):
        raise AuthError("UNAUTHORIZED", f"X-Timestamp {timestamp} is {skew} ms from the server's clock {now_ms}, "
                        f"outside the window of {window} ms")
    return timestamp, window


def verify(key: VerifyKey, signature: str | None, instruction: str,
           params: Mapping[str, object] | Sequence[Mapping[str, object]], timestamp: str, window: str) -> None:
    """``AuthError("INVALID_SIGNATURE")`` unless ``signature`` signs the request (raw or quoted)."""
    if signature is None:
        raise AuthError("UNAUTHORIZED", "missing X-Signature header")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise AuthError("INVALID_SIGNATURE", "X-Signature is not base64") from None
    for encode in (False, True):
        message = signing_string(instruction, params, timestamp, window, encode=encode).encode()
        try:
            key.verify(message, raw)
            return
        except (BadSignatureError, ValueError):
            continue
    raise AuthError("INVALID_SIGNATURE", f"the signature does not match the request (instruction {instruction})")
