"""Python Celery's control commands that change a worker, for the interop tests: add a
consumer of EXTRA and run a task there, cancel it, revoke a queued task, terminate a
running one with `app.control.revoke(id, terminate=True)`, then shut the worker down.
Prints one JSON line with what came back.

  python consumers.py NODE QUEUE EXTRA
"""

import json
import sys
import time

from pyapp import app


def wait_until(condition, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def queue_names(inspect, node):
    return [q["name"] for q in (inspect.active_queues() or {}).get(node, [])]


def main():
    node, queue, extra = sys.argv[1], sys.argv[2], sys.argv[3]
    control = app.control
    inspect = control.inspect(timeout=2, destination=[node])
    out = {"add_consumer": control.add_consumer(extra, reply=True, destination=[node])}
    out["extra_result"] = app.send_task("tasks.add", args=[2, 3], queue=extra).get(timeout=30)
    out["queues_after_add"] = queue_names(inspect, node)
    out["cancel_consumer"] = control.cancel_consumer(extra, reply=True, destination=[node])
    out["queues_after_cancel"] = queue_names(inspect, node)

    later = app.send_task("tasks.add", args=[1, 1], queue=queue, countdown=3)
    out["revoke_reply"] = control.revoke(later.id, reply=True, destination=[node])
    out["later"] = {"id": later.id, "state": later.state}

    long = app.send_task("tasks.sleep", args=[30], queue=queue)
    wait_until(lambda: any(t["id"] == long.id for t in (inspect.active() or {}).get(node, [])))
    control.revoke(long.id, terminate=True)
    try:
        long.get(timeout=30)
    except Exception as e:  # REVOKED raises TaskRevokedError
        out["terminated_raises"] = type(e).__name__
    out["terminated"] = {"id": long.id, "state": long.state}
    out["revoked"] = (inspect.revoked() or {}).get(node, [])

    control.broadcast("shutdown", destination=[node])
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
