"""Benchmark of ``marginsim serve``: N concurrent clients placing and cancelling orders.

    python bench/api.py                      # 8 clients for 10 s
    python bench/api.py --clients 32 --seconds 20

Starts a real server on a free loopback port (a market maker on BTC_USDC_PERP, one funded
sub-account per client), then runs N clients on one asyncio loop, each with its own
keep-alive connection: place a post-only limit bid below the book, cancel it, repeat, until
the time is up. Requests are signed with ED25519 as the clients do. Reports requests/s and
p50/p99 latency per kind, then checks that nothing was lost: every accepted order was
cancelled or rests (each client's open orders are exactly the ones it did not get to cancel),
and, after SIGTERM, that the server's end-of-run invariants (conservation, pools, positions,
balances) hold. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTC_USDC_PERP"
MAX_REQUESTS_PER_CLIENT = 200_000  # a hard bound besides the time


def scenario(clients: int) -> str:
    accounts = "".join(f'\n[[accounts]]\nid = "c{i}"\ndeposits = {{ USDC = 100000 }}\nmarkets = ["{SYMBOL}"]\n'
                       for i in range(clients))
    return f"""
[scenario]
name = "api-bench"
description = "A market maker and {clients} API clients placing and cancelling orders"
duration = 3600
seed = 1

[prices.BTC]
kind = "constant"
price = 100000

[[accounts]]
id = "maker"
deposits = {{ USDC = 10000000 }}
leverage_limit = 20
markets = ["{SYMBOL}"]

[[market_makers]]
name = "mm"
account = "maker"
markets = ["{SYMBOL}"]
size = 0.5
{accounts}"""


class Client:
    def __init__(self, http: str, account: str, keys: dict[str, str]) -> None:
        self.http = http
        self.account = account
        self.api_key = keys["api_key"]
        self.signing = SigningKey(base64.b64decode(keys["secret"]))
        self.latency: dict[str, list[float]] = {"place": [], "cancel": []}
        self.errors: list[str] = []
        self.resting: set[str] = set()

    def headers(self, instruction: str, params: dict[str, Any]) -> dict[str, str]:
        ts = time.time_ns() // 1_000_000
        pairs = "".join(f"&{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(params.items()))
        signed = f"instruction={instruction}{pairs}&timestamp={ts}&window=5000".encode()
        return {"X-API-Key": self.api_key, "X-Signature": base64.b64encode(self.signing.sign(signed).signature).decode(),
                "X-Timestamp": str(ts), "X-Window": "5000", "Content-Type": "application/json"}

    async def call(self, http: aiohttp.ClientSession, kind: str, method: str, path: str, instruction: str,
                   params: dict[str, Any]) -> Any:
        start = time.perf_counter()
        async with http.request(method, self.http + path, data=json.dumps(params),
                                headers=self.headers(instruction, params)) as response:
            body = await response.json()
        self.latency[kind].append(time.perf_counter() - start)
        if response.status != 200:
            self.errors.append(f"{kind} {response.status} {body}")
            return None
        return body

    async def run(self, until: float, index: int) -> None:
        async with aiohttp.ClientSession() as http:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= until:
                    return
                price = str(95000 + (index * 37 + n) % 500)  # below the book: it rests
                order = await self.call(http, "place", "POST", "/api/v1/order", "orderExecute",
                                        {"symbol": SYMBOL, "side": "Bid", "orderType": "Limit", "quantity": "0.001",
                                         "price": price, "postOnly": True})
                if order is None:
                    continue
                self.resting.add(order["id"])
                if time.monotonic() >= until:
                    return  # leave this one resting: the check below expects it
                done = await self.call(http, "cancel", "DELETE", "/api/v1/order", "orderCancel",
                                       {"symbol": SYMBOL, "orderId": order["id"]})
                if done is not None and done["status"] == "Cancelled":
                    self.resting.discard(order["id"])

    async def open_orders(self) -> set[str]:
        async with aiohttp.ClientSession() as http, http.get(
                self.http + "/api/v1/orders", headers=self.headers("orderQueryAll", {})) as response:
            return {o["id"] for o in await response.json()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(http: str, keys: dict[str, Any], clients: int, seconds: float) -> tuple[list[Client], float]:
    crowd = [Client(http, f"c{i}", keys[f"c{i}"]) for i in range(clients)]
    start = time.monotonic()
    await asyncio.gather(*(c.run(start + seconds, i) for i, c in enumerate(crowd)))
    return crowd, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark marginsim serve with concurrent clients on loopback.")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long they trade (default %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(scenario(args.clients))
        keys_path = Path(tmp) / "keys.json"
        server = subprocess.Popen(
            [sys.executable, "-m", "scenarios.cli", "serve", str(path), "--port", "0", "--keys", str(keys_path),
             "--rate-limit", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("serving "):
                print("the server did not start:", line, server.stderr.read() if server.stderr else "")
                return 1
            http = line.split()[1]
            keys = json.loads(keys_path.read_text())
            crowd, elapsed = asyncio.run(drive(http, keys, args.clients, args.seconds))
            lost = []
            for client in crowd:
                still = asyncio.run(client.open_orders())
                if still != client.resting:
                    lost.append(f"{client.account}: server rests {sorted(still)}, client expects {sorted(client.resting)}")
        finally:
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=120)
    requests = sum(len(v) for c in crowd for v in c.latency.values())
    print(f"{args.clients} clients, {elapsed:.1f} s: {requests:,} requests, {requests / elapsed:,.0f} requests/s")
    for kind in ("place", "cancel"):
        values = [x for c in crowd for x in c.latency[kind]]
        if values:
            print(f"  {kind:<6} {len(values):>7,}  p50 {statistics.median(values) * 1000:6.2f} ms  "
                  f"p99 {percentile(values, 0.99) * 1000:6.2f} ms")
    errors = [e for c in crowd for e in c.errors]
    print(f"refused: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print("every accepted order was cancelled or rests" if not lost else "LOST: " + "; ".join(lost[:5]))
    verdict = next((line for line in out.splitlines() if line.startswith("invariants")), "invariants: not reported")
    print(verdict)
    return 0 if not lost and not errors and verdict.startswith("invariants hold") else 1


if __name__ == "__main__":
    sys.exit(main())
