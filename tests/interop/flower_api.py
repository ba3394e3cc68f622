"""Reads and drives Flower's HTTP API for the interop tests: waits until Flower lists NODE
among its workers, sends tasks.add to QUEUE, waits until Flower has the task as SUCCESS,
then acts on the worker through Flower's control endpoints (pool grow/shrink, add and
cancel a consumer of EXTRA, rate limit, revoke with terminate of a running task), and prints
one JSON line with what every call returned.

  python flower_api.py PORT NODE QUEUE EXTRA
"""

import json
import sys
import time
import urllib.error
import urllib.request

from pyapp import app


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read().decode())


def post(port, path):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return {"status": r.status, "body": r.read().decode()}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode()}


def wait_until(condition, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def control(port, node, extra):
    out = {
        "grow": post(port, f"/api/worker/pool/grow/{node}?n=1"),
        "shrink": post(port, f"/api/worker/pool/shrink/{node}?n=1"),
        "add_consumer": post(port, f"/api/worker/queue/add-consumer/{node}?queue={extra}"),
    }
    out["extra_result"] = app.send_task("tasks.add", args=[1, 2], queue=extra).get(timeout=30)
    out["cancel_consumer"] = post(port, f"/api/worker/queue/cancel-consumer/{node}?queue={extra}")
    out["rate_limit"] = post(
        port, f"/api/task/rate-limit/tasks.add?workername={node}&ratelimit=100/s"
    )
    return out


def revoke(port, node, queue):
    long = app.send_task("tasks.sleep", args=[30], queue=queue)
    inspect = app.control.inspect(timeout=1, destination=[node])
    wait_until(lambda: any(t["id"] == long.id for t in (inspect.active() or {}).get(node, [])))
    response = post(port, f"/api/task/revoke/{long.id}?terminate=true&signal=SIGKILL")
    try:
        long.get(timeout=30)
        state = "finished"
    except Exception as e:  # the REVOKED task raises TaskRevokedError
        state = type(e).__name__
    return {"revoke": response, "revoked_state": long.state, "revoked_raises": state}


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
    port, node, queue, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    workers = poll(port, "/api/workers?refresh=1", lambda w: node in (w or {}))
    result = app.send_task("tasks.add", args=[20, 22], queue=queue)
    result.get(timeout=20)
    info = poll(
        port, f"/api/task/info/{result.id}", lambda t: (t or {}).get("state") == "SUCCESS"
    )
    tasks = get(port, "/api/tasks")
    out = {"workers": workers, "task": info, "tasks": tasks, "id": result.id}
    out.update(control(port, node, extra))
    out.update(revoke(port, node, queue))
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
