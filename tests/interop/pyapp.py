"""The Python twin of celeriac's demo app (examples/demo/lib.rs): same task names and
signatures, so either side can run any call. Used by the interop tests and the side-by-side
benchmark. Configuration comes from the environment:

  CELERIAC_INTEROP_BROKER      broker URL (default redis://127.0.0.1:6379/0); on RabbitMQ it
                               may carry celeriac's `?queue_type=quorum`, which becomes
                               Celery's task_default_queue_type / task_create_missing_queue_type
                               (kombu never sees it), so both sides read one URL
  CELERIAC_INTEROP_BACKEND     result backend URL (default: the broker URL)
  CELERIAC_INTEROP_VISIBILITY  Redis visibility_timeout in seconds (default 3600)
"""

import os
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery


def split_queue_type(url):
    """(url without celeriac's queue_type option, the queue type it named or 'classic')."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    queue_type = dict(query).get("queue_type") or "classic"
    rest = urlencode([(k, v) for k, v in query if k != "queue_type"])
    return urlunsplit(parts._replace(query=rest)), queue_type


broker, queue_type = split_queue_type(
    os.environ.get("CELERIAC_INTEROP_BROKER", "redis://127.0.0.1:6379/0")
)
backend = os.environ.get("CELERIAC_INTEROP_BACKEND", broker)

app = Celery("pyapp", broker=broker, backend=backend)
app.conf.update(
    task_default_queue_type=queue_type,
    task_create_missing_queue_type=queue_type,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("CELERIAC_INTEROP_VISIBILITY", "3600")),
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.identity")
def identity(value):
    return value


@app.task(name="tasks.count")
def count(values):
    return len(values)


@app.task(name="tasks.inc")
def inc(x):
    return x + 1


@app.task(name="tasks.tsum")
def tsum(values):
    return float(sum(values))


@app.task(name="tasks.noop")
def noop():
    return None


@app.task(name="tasks.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="tasks.sleep", acks_late=True)
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.flaky", bind=True, max_retries=10)
def flaky(self, n):
    if self.request.retries < n:
        raise self.retry(countdown=0, exc=KeyError("try again"))
    return self.request.retries
