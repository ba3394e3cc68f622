"""Python Celery's event receiver watching one worker, for the interop tests: starts
`app.events.Receiver`, waits for the worker's first heartbeat, sends tasks.add and tasks.fail
to QUEUE, and prints one JSON line: the events of NODE, and what Celery's own state machine
(`celery.events.state.State`, which Flower uses) makes of them.

  python events.py NODE QUEUE
"""

import json
import sys
import threading
import time

from celery.events.state import State

from pyapp import app

WANTED = {"worker-heartbeat", "task-received", "task-started", "task-succeeded", "task-failed"}


def wait_until(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline and not condition():
        time.sleep(0.05)
    return condition()


def main():
    node, queue = sys.argv[1], sys.argv[2]
    seen = []

    def on_event(event):
        if event.get("hostname") == node:
            seen.append(event)

    def capture():
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": on_event})
            receiver.capture(limit=None, timeout=None, wakeup=False)

    threading.Thread(target=capture, daemon=True).start()
    wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in seen), 20)
    ok = app.send_task("tasks.add", args=[2, 3], queue=queue)
    bad = app.send_task("tasks.fail", args=["boom"], queue=queue)
    ok.get(timeout=20)
    try:
        bad.get(timeout=20)
    except Exception:
        pass
    wait_until(lambda: WANTED <= {e["type"] for e in seen}, 20)
    state = State()
    for event in list(seen):
        state.event(dict(event))
    tasks = {tid: (state.tasks[tid].state if tid in state.tasks else None) for tid in (ok.id, bad.id)}
    worker = state.workers.get(node)
    print(json.dumps({
        "events": seen,
        "ids": [ok.id, bad.id],
        "states": tasks,
        "worker_alive": bool(worker and worker.alive),
        "task_names": {tid: (state.tasks[tid].name if tid in state.tasks else None) for tid in (ok.id, bad.id)},
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
