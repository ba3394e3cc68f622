"""Python Celery 5.7 side of the side-by-side benchmark: enqueue N no-op tasks with one
apply_async each, then drain them with one prefork worker (-c 2), on the broker in
CELERIAC_INTEROP_BROKER. Prints one JSON line with the rates.

  python bench_celery.py N
"""

import json
import os
import subprocess
import sys
import time

import redis

from pyapp import app, noop


def main():
    n = int(sys.argv[1])
    url = os.environ.get("CELERIAC_INTEROP_BROKER", "redis://127.0.0.1:6379/0")
    r = redis.Redis.from_url(url)
    app.control.purge()

    started = time.perf_counter()
    for _ in range(n):
        noop.apply_async()
    enqueue = n / (time.perf_counter() - started)

    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pyapp", "worker", "-P", "prefork", "-c", "2",
         "-l", "warning", "-Q", "celery", "--without-mingle", "--without-gossip"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        while r.llen("celery") > 0 or r.hlen("unacked") > 0:
            time.sleep(0.01)
        drain = n / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait()
    print(json.dumps({"enqueue_per_s": round(enqueue), "drain_per_s": round(drain)}))


if __name__ == "__main__":
    main()
