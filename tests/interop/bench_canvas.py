"""Python Celery 5.7 side of the canvas benchmark (`compare-with-celery.sh --canvas`): with
one prefork worker (-c 2) on CELERIAC_INTEROP_BROKER (results in CELERIAC_INTEROP_BACKEND),
times a group of N no-ops (send to every result), a chord of N no-ops into a count (send to
the body's result) and a chain of STEPS increments. Prints one JSON line.

  python bench_canvas.py N STEPS
"""

import json
import os
import subprocess
import sys
import time

from celery import chain, chord, group

from pyapp import app, count, inc, noop


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main():
    n, steps = int(sys.argv[1]), int(sys.argv[2])
    app.control.purge()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pyapp", "worker", "-P", "prefork", "-c", "2",
         "-l", "warning", "-Q", "celery", "--without-mingle", "--without-gossip"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        noop.delay().get(timeout=60)
        _, group_s = timed(lambda: group(noop.s() for _ in range(n)).apply_async().get(timeout=600))
        counted, chord_s = timed(
            lambda: chord([noop.s() for _ in range(n)], count.s()).apply_async().get(timeout=600))
        assert counted == n, counted
        sig = chain(inc.s(0), *[inc.s() for _ in range(steps - 1)])
        reached, chain_s = timed(lambda: sig.apply_async().get(timeout=600))
        assert reached == steps, reached
    finally:
        worker.terminate()
        worker.wait()
    print(json.dumps({"group_s": round(group_s, 3), "chord_s": round(chord_s, 3),
                      "chain_steps_per_s": round(steps / chain_s)}))


if __name__ == "__main__":
    main()
