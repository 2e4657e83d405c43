"""What runs on the engines: a batch of tasks in, their outcomes out.

Messages are pickled by sklearn_ipp itself with cloudpickle, so classes and
functions defined interactively (in ``__main__``) travel by value, whatever
serialisation the ipyparallel client is set to use.
"""

import pickle
import socket
import time
import traceback

import cloudpickle

from ._pickling import dumps

__all__ = ["UNPICKLING_FAILED", "run_batch"]

# Marks a reply whose tasks could not even be unpickled on the engine, which
# almost always means a module is missing there.
UNPICKLING_FAILED = "unpickling-failed"


def run_batch(payload):
    """Run the pickled ``[(function, args, kwargs), ...]`` of ``payload``.

    Parameters
    ----------
    payload : bytes
        The tasks, pickled by the client with cloudpickle. Data arguments are
        references that unpickle as read-only memory maps of the store.

    Returns
    -------
    reply : bytes
        Pickled ``(outcomes, seconds, hostname)``: one ``(True, result)`` or
        ``(False, exception, traceback_text)`` per task, the time each task
        took, and this engine's hostname; or ``(UNPICKLING_FAILED, exception,
        traceback_text, hostname)`` when the tasks could not be unpickled.
    """
    try:
        tasks = pickle.loads(payload)
    except BaseException as exc:  # reported to the client, which raises it
        return _dumps(
            (UNPICKLING_FAILED, exc, traceback.format_exc(), socket.gethostname())
        )
    outcomes, seconds = [], []
    for function, args, kwargs in tasks:
        start = time.perf_counter()
        try:
            outcomes.append((True, function(*args, **kwargs)))
        except BaseException as exc:  # each task's error goes back on its own
            outcomes.append((False, exc, traceback.format_exc()))
        seconds.append(time.perf_counter() - start)
    # Drop the references to the memory-mapped data before replying, so that a
    # fold file removed by the client frees its memory as soon as possible.
    del tasks
    return _dumps((outcomes, seconds, socket.gethostname()))


def _dumps(reply):
    try:
        return dumps(reply)
    except Exception:
        # An exception or result that cannot be pickled still has to report.
        return cloudpickle.dumps(_picklable_reply(reply))


def _picklable_reply(reply):
    if reply[0] == UNPICKLING_FAILED:
        _, exc, text, hostname = reply
        return (UNPICKLING_FAILED, _describe(exc), text, hostname)
    outcomes, seconds, hostname = reply
    safe = []
    for outcome in outcomes:
        try:
            cloudpickle.dumps(outcome)
            safe.append(outcome)
        except Exception as exc:
            if outcome[0]:
                safe.append((False, _describe(exc), traceback.format_exc()))
            else:
                safe.append((False, _describe(outcome[1]), outcome[2]))
    return safe, seconds, hostname


def _describe(exc):
    return RuntimeError(f"{type(exc).__name__}: {exc} (not picklable)")
