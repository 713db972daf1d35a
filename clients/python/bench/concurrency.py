"""Requests per second of N concurrent callers: AsyncCacheClient with N tasks
against CacheClient with N threads, same server, same keys, same mix.

    python bench/concurrency.py [--addr HOST:PORT] [--callers 100] [--seconds 10]

Without ``--addr`` it starts ``$DND_CACHE_SERVER_BIN`` (or
target/release/cache-server) with 2 shards on ephemeral loopback ports.
Each caller loops over random keys (90% get, 10% set, 100-byte values)
until the time is up; the runs alternate sync/async ``--rounds`` times.
Prints requests/s and the client process's CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dnd_cache import AsyncCacheClient, CacheClient, ClientConfig  # noqa: E402


def workload(keys: int, seed: int) -> Callable[[], Tuple[bool, str]]:
    rng = random.Random(seed)

    def next_op() -> Tuple[bool, str]:
        return rng.random() < 0.1, f"bench:{rng.randrange(keys)}"

    return next_op


def run_threads(addr: str, callers: int, seconds: float, keys: int, value: bytes) -> int:
    # One pool slot per thread, so no thread waits for a connection.
    cfg = ClientConfig(pool_max_size=callers)
    done = [0] * callers
    with CacheClient("bench_threads", address=addr, config=cfg) as client:
        client.get("bench:0")  # learn the shard ports
        deadline = time.monotonic() + seconds
        barrier = threading.Barrier(callers)

        def caller(i: int) -> None:
            next_op = workload(keys, i)
            barrier.wait()
            n = 0
            while time.monotonic() < deadline:
                is_set, key = next_op()
                if is_set:
                    client.set(key, value)
                else:
                    client.get(key)
                n += 1
            done[i] = n

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(done)


def run_tasks(addr: str, callers: int, seconds: float, keys: int, value: bytes) -> int:
    async def main() -> int:
        async with AsyncCacheClient("bench_tasks", address=addr) as client:
            await client.get("bench:0")  # learn the shard ports
            deadline = time.monotonic() + seconds

            async def caller(i: int) -> int:
                next_op = workload(keys, i)
                n = 0
                while time.monotonic() < deadline:
                    is_set, key = next_op()
                    if is_set:
                        await client.set(key, value)
                    else:
                        await client.get(key)
                    n += 1
                return n

            return sum(await asyncio.gather(*(caller(i) for i in range(callers))))

    return asyncio.run(main())


def measure(name: str, run: Callable[[], int], seconds: float) -> Tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.monotonic()
    ops = run()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    rate = ops / wall
    print(f"{name:<28} {ops:>9} requests  {rate:>10,.0f} req/s  {cpu / ops * 1e6:>7.1f} µs client CPU/req",
          flush=True)
    return rate, cpu / ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr")
    ap.add_argument("--callers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", type=int, default=10_000)
    args = ap.parse_args()
    value = os.urandom(50).hex().encode()  # 100 bytes

    server = None
    addr = args.addr
    if addr is None:
        from server import Server, require_binary

        server = Server(require_binary()).start()
        addr = server.address
    try:
        with CacheClient("bench_fill", address=addr) as fill:
            fill.set_many({f"bench:{i}": value for i in range(args.keys)})
        print(f"server {addr}, {args.callers} callers, {args.seconds:g} s per run, "
              f"90% get / 10% set, {args.keys} keys, 100-byte values", flush=True)
        results: dict = {"threads": [], "tasks": []}
        for _ in range(args.rounds):
            results["threads"].append(measure(
                f"CacheClient, {args.callers} threads",
                lambda: run_threads(addr, args.callers, args.seconds, args.keys, value), args.seconds))
            results["tasks"].append(measure(
                f"AsyncCacheClient, {args.callers} tasks",
                lambda: run_tasks(addr, args.callers, args.seconds, args.keys, value), args.seconds))
        for name, runs in results.items():
            rates: List[float] = sorted(r for r, _ in runs)
            print(f"{name}: median {rates[len(rates) // 2]:,.0f} req/s "
                  f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f})")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
