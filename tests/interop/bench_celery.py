"""Python Celery 5.7 side of the side-by-side benchmark: enqueue N no-op tasks with one
apply_async each, then drain them with one prefork worker (-c 2), on the broker in
CELERIAC_INTEROP_BROKER (Redis or RabbitMQ; results in CELERIAC_INTEROP_BACKEND). Prints one
JSON line with the rates.

  python bench_celery.py N
"""

import json
import os
import subprocess
import sys
import time

from pyapp import app, noop


def waiting(url):
    """Messages still in the `celery` queue (and, on Redis, held un-acked by workers)."""
    if url.startswith("redis"):
        import redis

        r = redis.Redis.from_url(url)
        return r.llen("celery") + r.hlen("unacked")
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue="celery", passive=True).message_count


def main():
    n = int(sys.argv[1])
    url = os.environ.get("CELERIAC_INTEROP_BROKER", "redis://127.0.0.1:6379/0")
    app.control.purge()

    started = time.perf_counter()
    last = None
    for _ in range(n):
        last = noop.apply_async()
    enqueue = n / (time.perf_counter() - started)

    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pyapp", "worker", "-P", "prefork", "-c", "2",
         "-l", "warning", "-Q", "celery", "--without-mingle", "--without-gossip"],
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        while waiting(url) > 0:
            time.sleep(0.01)
        last.get(timeout=600)
        drain = n / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait()
    print(json.dumps({"enqueue_per_s": round(enqueue), "drain_per_s": round(drain)}))


if __name__ == "__main__":
    main()
