"""Python Celery 5.7 canvases across celeriac and Python workers, for the interop tests.
The celeriac worker consumes `rust`, the Python worker `py`; each step names its queue, so
the test can tell from the workers' logs who ran what. Prints one JSON line: each scenario's
result (or the exception it raised) and the task ids the test looks for in the logs.

  python canvas.py
"""

import json
import uuid

from celery import chain, chord, group

from pyapp import add, app, fail, identity, mul, sleep, tsum

WAIT = 30


def on(queue, sig):
    return sig.set(queue=queue)


def outcome(fn):
    try:
        return {"value": fn()}
    except Exception as exc:  # the test asserts on the type and message
        return {"error": type(exc).__name__, "message": str(exc)}


def chain_across_languages(out):
    # add(1, 2) on celeriac, + 10 on Python (after a countdown), * 2 on celeriac.
    steps = chain(
        on("rust", add.s(1, 2)),
        add.s(10).set(queue="py", countdown=0.3),
        on("rust", mul.s(2)),
    )
    r = steps.apply_async()
    out["chain"] = outcome(lambda: r.get(timeout=WAIT))
    out["chain_ids"] = [r.parent.parent.id, r.parent.id, r.id]


def groups_and_chords(out):
    g = group(on("rust", add.s(i, i)) for i in range(5)).apply_async()
    out["group"] = outcome(lambda: g.get(timeout=WAIT))
    out["group_ids"] = [r.id for r in g.results]
    for name, header_q, body_q in [
        ("chord_rust", "rust", "rust"),
        ("chord_py_header_rust_body", "py", "rust"),
        ("chord_rust_header_py_body", "rust", "py"),
    ]:
        r = chord([on(header_q, add.s(i, i)) for i in range(10)], on(body_q, tsum.s())).apply_async()
        out[name] = outcome(lambda: r.get(timeout=WAIT))
        out[name + "_body"] = r.id
    failing = chord([on("rust", add.s(1, 1)), on("rust", fail.s("boom"))], on("rust", tsum.s()))
    r = failing.apply_async()
    # A fresh handle: the one apply_async returned re-raises its header's error first.
    out["chord_fail"] = outcome(lambda: app.AsyncResult(r.id).get(timeout=WAIT))


def nested(out):
    # A group inside a chain inside a chord, all on one side, then all on the other:
    # tsum([tsum([2, 4]), 6]) either way.
    for name, q in [("nested_rust", "rust"), ("nested_py", "py")]:
        inner = chain(group(on(q, add.s(1, 1)), on(q, add.s(2, 2))), on(q, tsum.s()))
        r = chord([inner, on(q, add.s(3, 3))], on(q, tsum.s())).apply_async()
        out[name] = outcome(lambda: app.AsyncResult(r.id).get(timeout=WAIT))


def links(out):
    r = add.apply_async((2, 2), queue="rust", link=on("py", add.s(10)))
    r.get(timeout=WAIT)
    out["link_rust_to_py"] = outcome(lambda: r.children[0].get(timeout=WAIT))
    r = add.apply_async((3, 3), queue="py", link=on("rust", add.s(10)))
    r.get(timeout=WAIT)
    out["link_py_to_rust"] = outcome(lambda: r.children[0].get(timeout=WAIT))
    # identity(value) takes one argument: an old-style errback, sent as a task (a Python
    # worker calls errbacks of more arguments in-process, as (request, exc, traceback)).
    for name, failing_q, errback_q in [("link_error_rust_to_py", "rust", "py"),
                                       ("link_error_py_to_rust", "py", "rust")]:
        errback_id = str(uuid.uuid4())
        r = fail.apply_async(("x",), queue=failing_q,
                             link_error=identity.s().set(queue=errback_q, task_id=errback_id))
        outcome(lambda: r.get(timeout=WAIT))
        out[name] = outcome(lambda: app.AsyncResult(errback_id).get(timeout=WAIT))
        out[name + "_failed"] = r.id


def maps(out):
    out["starmap"] = outcome(lambda: add.starmap([(1, 2), (3, 4)]).set(queue="rust")
                             .apply_async().get(timeout=WAIT))
    out["map"] = outcome(lambda: sleep.map([0.0, 0.01]).set(queue="rust").apply_async().get(timeout=WAIT))
    pairs = list(zip(range(6), range(6)))
    out["chunks"] = outcome(lambda: add.chunks(pairs, 2).apply_async(queue="rust").get(timeout=WAIT))


def main():
    out = {}
    chain_across_languages(out)
    groups_and_chords(out)
    nested(out)
    links(out)
    maps(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
