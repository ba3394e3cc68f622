"""Python Celery client for the interop tests: sends a call (or waits on an id) and prints one
JSON line: {"id", "state", "result"} or, for a failed task, {"id", "state", "exc_type",
"exc_message", "traceback"}.

  python client.py call NAME [--args JSON] [--kwargs JSON] [--queue Q] [--countdown S]
                    [--expires S] [--priority P] [--timeout S] [--no-wait]
  python client.py get ID [--timeout S]
"""

import argparse
import json
import sys

from pyapp import app


def outcome(result, timeout):
    try:
        value = result.get(timeout=timeout)
        return {"id": result.id, "state": result.state, "result": value}
    except Exception as exc:  # the remote task's exception, rebuilt by Celery
        return {
            "id": result.id,
            "state": result.state,
            "exc_type": type(exc).__name__,
            "exc_message": str(exc),
            "traceback": result.traceback,
        }


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call")
    call.add_argument("name")
    call.add_argument("--args", default="[]")
    call.add_argument("--kwargs", default="{}")
    call.add_argument("--queue")
    call.add_argument("--countdown", type=float)
    call.add_argument("--expires", type=float)
    call.add_argument("--priority", type=int)
    call.add_argument("--timeout", type=float, default=30)
    call.add_argument("--no-wait", action="store_true")
    get = sub.add_parser("get")
    get.add_argument("id")
    get.add_argument("--timeout", type=float, default=30)
    opts = parser.parse_args()

    if opts.command == "call":
        options = {}
        for key in ("queue", "countdown", "expires", "priority"):
            if getattr(opts, key) is not None:
                options[key] = getattr(opts, key)
        result = app.send_task(
            opts.name, args=json.loads(opts.args), kwargs=json.loads(opts.kwargs), **options
        )
        if opts.no_wait:
            print(json.dumps({"id": result.id}))
        else:
            print(json.dumps(outcome(result, opts.timeout)))
    else:
        print(json.dumps(outcome(app.AsyncResult(opts.id), opts.timeout)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
