"""Python Celery's remote control against one worker, for the interop tests (not named
inspect.py: that would shadow the standard library module): prints one JSON line with what
`app.control.inspect()` and `app.control.broadcast()` got back.

  python control.py NODE [TIMEOUT]
"""

import json
import sys

from pyapp import app


def main():
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
        "unknown": app.control.broadcast(
            "no_such_command", reply=True, timeout=timeout, destination=[node], limit=1
        ),
        "everyone": app.control.ping(timeout=1.0),
    }
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
