"""Reads Flower's HTTP API for the interop tests: waits until Flower lists NODE among its
workers, sends tasks.add to QUEUE, waits until Flower has the task as SUCCESS, and prints
one JSON line with what `/api/workers`, `/api/tasks` and `/api/task/info/<id>` returned.

  python flower_api.py PORT NODE QUEUE
"""

import json
import sys
import time
import urllib.request

from pyapp import app


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read().decode())


def poll(port, path, ok, seconds=40):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            last = get(port, path)
            if ok(last):
                return last
        except OSError:
            pass
        time.sleep(0.25)
    return last


def main():
    port, node, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    workers = poll(port, "/api/workers?refresh=1", lambda w: node in (w or {}))
    result = app.send_task("tasks.add", args=[20, 22], queue=queue)
    result.get(timeout=20)
    info = poll(
        port, f"/api/task/info/{result.id}", lambda t: (t or {}).get("state") == "SUCCESS"
    )
    tasks = get(port, "/api/tasks")
    print(json.dumps({"workers": workers, "task": info, "tasks": tasks, "id": result.id}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
