"""What runs on the engines: a batch of tasks in, their outcomes out.

Messages are pickled by sklearn_ipp itself with cloudpickle, so classes and
functions defined interactively (in ``__main__``) travel by value, whatever
serialisation the ipyparallel client is set to use.
"""

import contextlib
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback

import cloudpickle

from ._output import captured, engine_warning_filters, keep_callback_listeners
from ._pickling import dumps
from ._threads import limited_threads

__all__ = [
    "NOT_STOPPED",
    "READ_ONLY_HINT",
    "STARTED",
    "STOPPED",
    "STOP_SIGNAL",
    "TIMED_OUT",
    "UNPICKLING_FAILED",
    "install_stop_handler",
    "restore_user_handler",
    "run_batch",
    "running_a_task",
    "with_read_only_hint",
]

# Marks a reply whose tasks could not even be unpickled on the engine, which
# almost always means a module is missing there.
UNPICKLING_FAILED = "unpickling-failed"

# Added to the error of an estimator that writes into its input.
READ_ONLY_HINT = (
    "sklearn_ipp gives estimators read-only, memory-mapped data (as joblib does "
    "for large arrays): an estimator that changes its input in place must copy "
    "it first (X = X.copy())."
)
_READ_ONLY_MESSAGES = ("read-only", "not writeable", "WRITEABLE flag")

# The outcome of a task that a stop signal kept from finishing.
STOPPED = "sklearn_ipp_stopped"

# Published by run_batch once its tasks with time limits run.
STARTED = "sklearn_ipp_started"

# Published by a time limit whose signal the running task did not see within
# NOT_STOPPED_AFTER_SECONDS: the task is in a call of compiled code that
# released the GIL (libsvm's fit does) and does not return to Python. The
# client then fails it at once, rather than after its grace for fits that
# are merely slow to reply (see Messenger.take_overdue). Compiled code that
# holds the GIL keeps this from being published: the grace covers it.
NOT_STOPPED = "sklearn_ipp_not_stopped"
NOT_STOPPED_AFTER_SECONDS = 0.5

# The outcome ``(TIMED_OUT, seconds)`` of a task stopped at the time limit it
# was given, after running ``seconds``.
TIMED_OUT = "sklearn_ipp_timed_out"

# The signal that stops the tasks an engine runs. Not SIGINT: ipykernel sets
# Python's default SIGINT handler around every message it handles, so a SIGINT
# that comes a moment late, as the engine unpacks its next message or replies,
# breaks that message, which then never replies. ipykernel leaves this one
# alone, and the handler below, once installed, stays for the life of the
# engine: a late signal stops at most the tasks of the next message, which
# reply STOPPED and are sent again by their client.
STOP_SIGNAL = "SIGUSR1"

# Whether a task runs now, in _run_stoppable.
_tasks_running = False
# Whether run_batch runs now: a signal that comes between its tasks, or
# before the first, stops the tasks still to run (see _stop_pending).
_batch_running = False
# Whether such a signal came: the next task of the message does not start.
_stop_pending = False
# Whether the signal stopped the running task: some code catches
# KeyboardInterrupt and returns (scikit-learn's MLP ends its training early),
# which must not pass for a finished task.
_task_stopped = False
# Whether the tasks of the message that runs may be stopped: not those that
# stray signals (meant for other messages) have stopped too often already.
_stoppable = True
# A handler of the user's that ours replaced, called for the signals that come
# outside our tasks, and given the signal back after each message.
_user_handler = None
# Whether the next signal is a task's time limit (see _TimeLimit), sent by
# this process to itself: it stops even tasks that may not be stopped, and
# is never the user's.
_limit_signal = False
# Held by a time limit from its decision to signal to the signal's sending,
# and by the task's end: a limit never signals once its task has ended.
_limit_lock = threading.Lock()


class TasksStopped(KeyboardInterrupt):
    """Raised in a task by ``STOP_SIGNAL``."""


def run_batch(payload, thread_limits=None, stoppable=True, time_limits=None):
    """Run the pickled ``[(function, args, kwargs), ...]`` of ``payload``.

    Parameters
    ----------
    payload : bytes
        ``(tasks, warning_filters)`` pickled by the client: the tasks, whose
        data arguments are references that unpickle as read-only memory maps
        of the store, and the caller's ``warnings.filters``, which the tasks
        run under (None: the engine's own).
    thread_limits : dict of str to int or None, default=None
        ``{hostname: n_threads}``: the BLAS and OpenMP pools of this engine
        are limited to its host's number while the tasks run, and restored
        after. None, or a host not in it, leaves them as they are.
    stoppable : bool, default=True
        Whether ``STOP_SIGNAL`` stops the tasks. False for tasks that
        signals meant for other messages stopped too often: they run to
        their end.
    time_limits : list of float or None, default=None
        Seconds each task may run (None: no limit), counted from its start
        here. A task past its limit is stopped as a stop signal stops it,
        comes back ``(TIMED_OUT, seconds)``, and the next task runs.

    Returns
    -------
    reply : bytes
        Pickled ``(outcomes, seconds, hostname, outputs)``: one
        ``(True, result)``, ``(False, exception, traceback_text)``,
        ``(STOPPED,)`` or ``(TIMED_OUT, seconds)`` per task, the time each
        task took, this engine's hostname, and what each task warned,
        printed and told its callbacks (a ``TaskOutput``, or None when it
        said nothing); or
        ``(UNPICKLING_FAILED, exception, traceback_text, hostname)`` when the
        tasks could not be unpickled. A stop signal ends the running task and
        the rest: they all come back ``(STOPPED,)``.
    """
    hostname = socket.gethostname()
    global _stoppable, _batch_running, _stop_pending
    _stoppable, _stop_pending = stoppable, False
    # First of all: the client may signal this engine as soon as ipyparallel
    # tells it that the message started.
    limited = any(limit is not None for limit in time_limits or ())
    shell = _let_stop_signal_stop_tasks(limited)
    _batch_running = True
    try:
        try:
            with keep_callback_listeners():
                tasks, warning_filters = pickle.loads(payload)
        except BaseException as exc:  # reported to the client, which raises it
            return _dumps((UNPICKLING_FAILED, exc, traceback.format_exc(), hostname))
        n_threads = (thread_limits or {}).get(hostname)
        with limited_threads(n_threads):
            outcomes, seconds, outputs = _run_tasks(
                tasks,
                engine_warning_filters(warning_filters),
                time_limits,
                shell,
            )
    finally:
        _batch_running = _stop_pending = False
        _stoppable = True
        restore_user_handler()
    # Drop the references to the memory-mapped data before replying, so that a
    # fold file removed by the client frees its memory as soon as possible.
    del tasks
    return _dumps((outcomes, seconds, hostname, outputs))


def _run_tasks(tasks, warning_filters=None, time_limits=None, shell=None):
    """Return the outcomes of ``tasks``, the seconds each took, their outputs.

    ``shell``: the engine's, where ``STOP_SIGNAL`` stops them (its handler
    installed), which time limits need; None elsewhere.
    """
    outcomes, seconds, outputs = [], [], []
    limits = time_limits or [None] * len(tasks)
    can_stop = shell is not None
    publish = shell.data_pub.publish_data if can_stop else None
    for (function, args, kwargs), limit in zip(tasks, limits, strict=True):
        start = time.perf_counter()
        output = None
        limited = _TimeLimit(limit if can_stop else None, publish)
        try:
            with captured(kwargs.get("caller"), warning_filters) as output, limited:
                result = _run_stoppable(function, args, kwargs)
            outcomes.append((True, with_read_only_hint(result)))
        except TasksStopped:
            if limited.reached:
                # Only this task: the next ones run.
                elapsed = time.perf_counter() - start
                outcomes.append((TIMED_OUT, elapsed))
                seconds.append(elapsed)
                outputs.append(None)  # it runs again, failing at once
                continue
            n_left = len(tasks) - len(outcomes)
            outcomes += [(STOPPED,)] * n_left
            seconds += [time.perf_counter() - start] * n_left
            outputs += [None] * n_left  # they run again
            break
        except BaseException as exc:  # each task's error goes back on its own
            error = _reloadable(with_read_only_hint(exc))
            outcomes.append((False, error, traceback.format_exc()))
        seconds.append(time.perf_counter() - start)
        outputs.append(output or None)
    return outcomes, seconds, outputs


class _TimeLimit:
    """Stop the running task with ``STOP_SIGNAL`` once it has run ``seconds``.

    A timer thread signals this process, whose main thread runs the task:
    the handler raises ``TasksStopped`` there, at the next line of Python,
    which also interrupts a ``sleep`` or a wait. Compiled code that does
    not return to Python sees it only when it returns: the timer thread then
    publishes ``NOT_STOPPED`` with ``publish`` (the engine's data publisher),
    and the client ends such an engine (see ``Messenger``). Does nothing for
    ``seconds=None``.
    """

    def __init__(self, seconds, publish=None):
        self.seconds = seconds
        self.reached = False
        self._ended = False
        self._timer = None
        self._publish = publish

    def __enter__(self):
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._reach)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc_info):
        if self._timer is not None:
            with _limit_lock:
                self._ended = True
            self._timer.cancel()

    def _reach(self):
        global _limit_signal
        with _limit_lock:
            if self._ended:
                return
            self.reached = _limit_signal = True
            os.kill(os.getpid(), getattr(signal, STOP_SIGNAL))
        if self._publish is None:
            return
        time.sleep(NOT_STOPPED_AFTER_SECONDS)
        with _limit_lock:
            # The handler clears the flag when it runs; the task's end sets
            # _ended. Neither: the main thread is in compiled code.
            if self._ended or not _limit_signal:
                return
        with contextlib.suppress(Exception):
            self._publish({NOT_STOPPED: True})


def _let_stop_signal_stop_tasks(limited=False):
    """On an engine that can be signalled, make ``STOP_SIGNAL`` stop tasks.

    Install the handler, which stops only the tasks of ``run_batch``, and
    for ``limited`` tasks publish ``STARTED``: the client ends an engine
    whose task does not stop at its limit. Returns the engine's shell once
    the handler is installed, else None.

    Nothing is published otherwise: the client learns which engine runs a
    message, and that it started, from the status ipyparallel's engine
    publishes anyway (each published message costs the engine's output
    thread milliseconds).
    """
    shell = _engine_shell()
    if shell is None or not install_stop_handler():
        return None  # not on an engine, or on one without the signal
    if limited:
        with contextlib.suppress(Exception):
            shell.data_pub.publish_data({STARTED: True})
    return shell


def install_stop_handler():
    """Make ``STOP_SIGNAL`` stop our tasks, and never end the engine.

    Called when an engine first gets work of ours (the probe) and for every
    message. Python's default action for the signal ends the process: a
    signal meant for a message that has just ended, or sent by another
    client, would kill an idle engine. The handler stops only our running
    tasks; outside them it calls the handler of the user's it replaced, if
    any, or does nothing.

    Returns
    -------
    installed : bool
        False where there is no such signal (Windows) or this is not the
        main thread.
    """
    global _user_handler
    if not hasattr(signal, STOP_SIGNAL):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    signum = getattr(signal, STOP_SIGNAL)
    current = signal.getsignal(signum)
    if current is not _stop_tasks:
        _user_handler = current if callable(current) else None
        signal.signal(signum, _stop_tasks)
    return True


def restore_user_handler():
    """Give ``STOP_SIGNAL`` back to the user's handler that ours replaced.

    Where there was none (the default action, which would end the engine),
    ours stays, doing nothing outside our tasks.
    """
    global _user_handler
    if _user_handler is None or not hasattr(signal, STOP_SIGNAL):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    signum = getattr(signal, STOP_SIGNAL)
    if signal.getsignal(signum) is _stop_tasks:
        signal.signal(signum, _user_handler)
    _user_handler = None


def _run_stoppable(function, args, kwargs):
    """Call ``function``, which ``STOP_SIGNAL`` may stop with ``TasksStopped``.

    The flag is raised only in here, and the caller calls this inside the
    ``try`` that catches ``TasksStopped``, so the stop can never escape
    ``run_batch``: a signal that comes while the caller records an outcome
    or handles an error, or between tasks, is kept (``_stop_pending``) and
    raised here, before the next task starts. A task that caught
    the stop and returned (or raised something else) is stopped all the
    same: what it returns did not run to its end.
    """
    global _tasks_running, _task_stopped, _stop_pending
    _task_stopped = False
    try:
        _tasks_running = True
        if _stop_pending:  # the signal came before the task started
            _stop_pending = False
            _task_stopped = True
            raise TasksStopped
        result = function(*args, **kwargs)
    except BaseException:
        if _task_stopped:
            raise TasksStopped from None
        raise
    finally:
        _tasks_running = False
    if _task_stopped:
        raise TasksStopped
    return result


def _stop_tasks(signum, frame):
    global _task_stopped, _limit_signal, _stop_pending
    by_limit, _limit_signal = _limit_signal, False
    if _tasks_running and (_stoppable or by_limit):
        _task_stopped = True
        raise TasksStopped
    if _batch_running and _stoppable and not by_limit:
        # Between the message's tasks, or before the first: the next one
        # does not start.
        _stop_pending = True
        return
    if _user_handler is not None and not by_limit:
        _user_handler(signum, frame)


def _engine_shell():
    """Return the engine's shell when this runs in its main thread, else None."""
    if not hasattr(signal, STOP_SIGNAL):
        return None  # Windows
    if threading.current_thread() is not threading.main_thread():
        return None
    ipython = sys.modules.get("IPython")  # always loaded on an engine
    shell = ipython.get_ipython() if ipython is not None else None
    if getattr(shell, "data_pub", None) is None:
        return None
    return shell


def with_read_only_hint(outcome):
    """Say why an estimator could not write into its data, and what to do.

    ``outcome`` is an exception, or sklearn's result dict whose ``fit_error``
    holds the traceback of a fit that failed under ``error_score``.
    """
    if isinstance(outcome, ValueError) and len(outcome.args) == 1:
        message = str(outcome.args[0])
        if any(text in message for text in _READ_ONLY_MESSAGES):
            outcome.args = (f"{message}. {READ_ONLY_HINT}",)
    elif isinstance(outcome, dict) and isinstance(outcome.get("fit_error"), str):
        error = outcome["fit_error"]
        if "ValueError" in error and any(t in error for t in _READ_ONLY_MESSAGES):
            outcome["fit_error"] = f"{error.rstrip()}\n{READ_ONLY_HINT}\n"
    return outcome


def running_a_task():
    """Whether this runs inside a task of ``run_batch``, on an engine."""
    return _tasks_running


def _reloadable(exc):
    """Return ``exc``, or what unpickles as it where ``exc`` would not.

    An exception unpickles by calling its class with its ``args``, which
    fails for one whose ``__init__`` takes other arguments (scikit-learn's
    ``UnsetMetadataPassedError`` takes keywords only): the client would
    get a ``TypeError`` instead of the task's error.
    """
    try:
        payload = dumps(exc)
    except Exception:
        return exc  # does not pickle at all: _picklable_reply describes it
    try:
        pickle.loads(payload)
    except Exception:
        return _ExceptionState(exc)
    return exc


class _ExceptionState:
    """Pickles as an exception made from its class, args and attributes."""

    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        exc = self.exc
        return _rebuilt_exception, (type(exc), exc.args, dict(vars(exc)))


def _rebuilt_exception(cls, args, state):
    exc = cls.__new__(cls, *args)
    exc.args = args
    vars(exc).update(state)
    return exc


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
    outcomes, seconds, hostname, outputs = reply
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
    return safe, seconds, hostname, [_picklable_output(o) for o in outputs]


def _picklable_output(output):
    """Return ``output`` with the warnings that do not pickle made text."""
    if output is None:
        return None
    kept = []
    for message, category, filename, lineno in output.warnings:
        try:
            cloudpickle.dumps((message, category))
        except Exception:
            try:
                cloudpickle.dumps(category)
            except Exception:
                category = RuntimeWarning
            message = str(message)
        kept.append((message, category, filename, lineno))
    output.warnings = kept
    return output


def _describe(exc):
    return RuntimeError(f"{type(exc).__name__}: {exc} (not picklable)")
