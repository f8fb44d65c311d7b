"""Guest locks at fleet scale: what holding many free locks costs a flow run.

Run: `.venv/bin/python bench/locks.py [--locks 100] [--rounds 3]` (no lab needed). On a
Prefect test server (SQLite, as `dapx up` runs by default), a flow holds ``--locks`` free
guest locks at once (``locks.holding_free``, as a fleet's quick round does), runs three
trivial tasks at once in its body, then gives the locks back; and the same with one lock. It
prints, per round, how long the body's first tasks took (the holder records are written beside
them) and the whole hold, and the ratio of the whole hold with many locks to one lock.
Never a timed test: numbers, not asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locks", type=int, default=100, help="locks held at once (100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    args = parser.parse_args()
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    from dapx.tasks import locks

    @task
    async def trivial(i: int) -> int:
        return i

    @flow
    async def hold(count: int) -> tuple[float, float]:
        names = [f"bench-lock-{count}-{i}" for i in range(count)]
        started = time.monotonic()
        async with locks.holding_free(names):
            body = time.monotonic()
            await asyncio.gather(*(trivial(i) for i in range(3)))
            first = time.monotonic() - body
        return first, time.monotonic() - started

    with prefect_test_harness(server_startup_timeout=120):
        for count in (1, args.locks):  # the first use creates the records; rounds update them
            asyncio.run(hold(count))
        wholes: dict[int, list[float]] = {1: [], args.locks: []}
        for round_ in range(args.rounds):
            for count in (1, args.locks):
                first, whole = asyncio.run(hold(count))
                wholes[count].append(whole)
                print(f"round {round_}: {count:4d} lock(s): the body's first tasks {first:5.2f} s, "
                      f"the whole hold {whole:5.2f} s", flush=True)
    one, many = (statistics.median(wholes[c]) for c in (1, args.locks))
    print(f"median whole hold: 1 lock {one:.2f} s, {args.locks} locks {many:.2f} s, "
          f"ratio {many / one:.1f}")


if __name__ == "__main__":
    main()
