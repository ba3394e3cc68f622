"""Python Celery's remote control against one worker, for the interop tests (not named
inspect.py: that would shadow the standard library module): prints one JSON line with what
`app.control.inspect()` and `app.control.broadcast()` got back.

  python control.py NODE [TIMEOUT]
  python control.py busy NODE QUEUE   (sends two tasks.sleep(2) to QUEUE, then inspects and
                                       controls while one runs and one waits)
"""

import json
import sys
import time

from pyapp import app


def busy(node, queue):
    calls = [app.send_task("tasks.sleep", args=[2], queue=queue) for _ in range(2)]
    inspect = app.control.inspect(timeout=2, destination=[node])
    deadline = time.time() + 20
    active = None
    while time.time() < deadline:
        active = inspect.active()
        if active and active.get(node):
            break
        time.sleep(0.1)
    control = app.control
    out = {
        "ids": [c.id for c in calls],
        "active": active,
        "active_safe": inspect.active(safe=True),
        "reserved": inspect.reserved(),
        "query_task": inspect.query_task(*[c.id for c in calls]),
        "rate_limit": control.rate_limit("tasks.add", "10/m", reply=True, destination=[node]),
        "rate_limit_off": control.rate_limit("tasks.add", 0, reply=True, destination=[node]),
        "rate_limit_unknown": control.rate_limit("no.such", "1/s", reply=True, destination=[node]),
        "time_limit": control.time_limit("tasks.sleep", soft=10, hard=20, reply=True, destination=[node]),
        "pool_grow": control.pool_grow(1, reply=True, destination=[node]),
        "pool_shrink": control.pool_shrink(1, reply=True, destination=[node]),
        "autoscale": control.autoscale(4, 1, reply=True, destination=[node]),
        "results": [c.get(timeout=30) for c in calls],
    }
    print(json.dumps(out))
    sys.stdout.flush()


def main():
    if sys.argv[1] == "busy":
        return busy(sys.argv[2], sys.argv[3])
    node = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    inspect = app.control.inspect(timeout=timeout, destination=[node])
    out = {
        "ping": inspect.ping(),
        "registered": inspect.registered(),
        "registered_items": inspect.registered("acks_late", "max_retries"),
        "stats": inspect.stats(),
        "clock": inspect.clock(),
        "revoked": inspect.revoked(),
        "active_queues": inspect.active_queues(),
        "unknown": app.control.broadcast(
            "no_such_command", reply=True, timeout=timeout, destination=[node], limit=1
        ),
        "everyone": app.control.ping(timeout=1.0),
    }
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
