"""plugind-bench peer: the MCP Python SDK's client calling the `echo` tool of server.py over
stdio, with the measurements of plugind's (a) and (b):

  (i)  sequential `call_tool`, one in flight: p50/p99 latency in µs (after a 0.2 s warm-up);
  (ii) 64 and 256 calls in flight, the window kept full (one asyncio task per slot starts its
       next call as soon as the previous one returns): completed calls per second (counted after
       a 0.2 s warm-up).

Usage: python client.py [--seconds S]   (S: measuring time of each measurement, default 1)
Prints one JSON line on stdout: {"p50_us","p99_us","tput64","tput256","calls"}.
"""

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

WARMUP_S = 0.2
ARGS = {"msg": "hello", "n": 42}


async def main(seconds: float) -> None:
    server = StdioServerParameters(command=sys.executable, args=[str(Path(__file__).with_name("server.py"))])
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        calls = 0

        async def call():
            nonlocal calls
            r = await session.call_tool("echo", ARGS)
            calls += 1
            if r.is_error:
                raise RuntimeError(f"echo failed: {r}")
            return r

        # The first answer is checked in full; later ones only for not being errors.
        first = await call()
        if len(first.content) != 1 or first.content[0].type != "text" or json.loads(first.content[0].text) != ARGS:
            raise RuntimeError(f"echo returned {first}")

        # (i) Sequential latencies.
        samples = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            await call()
            t1 = time.perf_counter()
            if t0 - start >= WARMUP_S:
                samples.append((t1 - t0) * 1e6)
            if t1 - start >= WARMUP_S + seconds:
                break
        samples.sort()

        def pct(p: float) -> float:
            return samples[min(len(samples), max(1, math.ceil(p / 100 * len(samples)))) - 1]

        # (ii) Throughput with `depth` calls in flight.
        async def throughput(depth: int) -> float:
            done = 0
            window = None  # (time, done) when the warm-up ended
            rate = None
            begin = time.perf_counter()

            async def loop():
                nonlocal done, window, rate
                while rate is None:
                    await call()
                    done += 1
                    t = time.perf_counter()
                    if window is None:
                        if t - begin >= WARMUP_S:
                            window = (t, done)
                    elif t - window[0] >= seconds and rate is None:
                        rate = (done - window[1]) / (t - window[0])

            await asyncio.gather(*(loop() for _ in range(depth)))
            return rate

        tput64 = await throughput(64)
        tput256 = await throughput(256)
    print(json.dumps({"p50_us": pct(50), "p99_us": pct(99), "tput64": tput64, "tput256": tput256, "calls": calls}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time of each measurement")
    asyncio.run(main(parser.parse_args().seconds))
