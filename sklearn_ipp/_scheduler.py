"""Which tasks go to the engines when, in how many messages, and again.

joblib's batches become ``Task`` objects waiting in one queue per fold (and
one for tasks without a fold). A scheduling thread stores folds as the fold
policy allows (``FoldIndex.to_store``), packs the first tasks in order among
the stored folds into messages sized to hide the per-message cost, keeps
``MESSAGES_PER_ENGINE`` messages in flight per engine, and turns replies into
finished tasks: sent again when their engine died (up to ``retries`` times)
or a stray stop signal cut them short, failed when no engine is left for
``engine_wait`` seconds. A ``Job`` is joblib's handle on one batch, a
``Call`` one ``Parallel`` call, whose tasks can be stopped without stopping
those of other calls.

Every task submitted ends, with its result or an error: none is dropped
silently, and a scheduler that cannot send tasks (shut down, or its thread
ended) refuses them at once (``BackendStoppedError``), so that no caller
waits for a task that nothing will run.
"""

import functools
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque

from ._exceptions import BackendStoppedError, ControllerLostError
from ._fit_and_score import calling
from ._fit_timeout import fail_fit
from ._messages import ENGINE_LOST, SEND_AGAIN, STOPPED, TIMED_OUT
from ._warm_start import fit_and_score_continued

__all__ = [
    "Call",
    "ErrorsInOrder",
    "Job",
    "PrefixTask",
    "Scheduler",
    "Task",
    "TaskQueues",
]

logger = logging.getLogger("sklearn_ipp")

# Seconds of work to pack into one message once task durations are known:
# long enough to hide the per-message cost (10 to 20 ms through the controller
# and the engine's kernel on a busy host), short enough to balance the load.
# Messages also shrink as the queue empties (see _message_size), so the last
# ones carry one task each whatever this is.
TARGET_MESSAGE_SECONDS = 0.5
# Upper bound on tasks per message.
MAX_TASKS_PER_MESSAGE = 500
# Seconds of work per engine below which the waiting tasks go in one message
# to each idle engine, rather than spread over MESSAGES_PER_ENGINE messages
# per engine: each message costs the client, the controller and the engine
# a few milliseconds of CPU (on a small host, taken from the tasks), more
# than finer messages could balance on so little work. Not more: the last
# tasks of a call, sent to the one idle engine, would keep it busy while
# the others, done soon after, wait.
SHORT_WORK_SECONDS = 0.02
# Messages in flight per engine: one running, one queued, so that no engine
# waits for the client between two messages.
MESSAGES_PER_ENGINE = 2
# The last tasks go longest first, sorted again as more of their durations
# are known: when this many times as many are (see TaskQueues._longest_first).
RESORT_GROWTH = 1.25
# joblib hands over its first batches before it waits for results (see
# ClusterBackend.retrieval_context); should it ever not say so, tasks left
# this long with nothing new submitted are sent anyway.
HOLD_SECONDS = 0.2


class Job:
    """joblib's handle on one submitted batch: done when all its tasks are."""

    def __init__(self, n_tasks, callback):
        self.results = [None] * n_tasks
        self.n_remaining = n_tasks
        self.callback = callback
        self.exception = None  # of its first failed task, in the batch's order
        self._exception_index = n_tasks
        self.done = threading.Event()

    def fail(self, index, exc):
        """Record the error of task ``index``; the batch raises the first's.

        As joblib's batches run in-process: in order, up to the first error.
        """
        if index < self._exception_index:
            self.exception, self._exception_index = exc, index

    def get(self, timeout=None):
        """Return the batch's results, or raise its first error."""
        if not self.done.wait(timeout):
            raise TimeoutError("The task did not finish in time.")
        if self.exception is not None:
            raise self.exception
        return self.results


class Call:
    """One joblib ``Parallel`` call: the number ordering its tasks, their settings.

    Parameters
    ----------
    owner : object or None, default=None
        Whose call it is (the backend's ``ParallelCalls``):
        ``Scheduler.stop(owner=...)`` stops its tasks and no others.
    warning_filters : list or None, default=None
        The caller's ``warnings.filters``, which its tasks run under.
    context : contextvars.Context or None, default=None
        Where its tasks' warnings are issued again, when Python keeps
        warning filters per context (free-threaded builds); None: in the
        thread that reads the reply.
    """

    __slots__ = ("context", "number", "owner", "warning_filters")

    def __init__(self, owner=None, warning_filters=None, context=None):
        self.owner = owner
        self.warning_filters = warning_filters
        self.context = context
        self.number = 0  # given by Scheduler.start_call


class ErrorsInOrder:
    """Tell joblib of a failed batch only once every batch before it is done.

    joblib raises the error of the earliest failed batch it knows of. Tasks
    finish in any order on a cluster, so a later task's error could come
    first, where a sequential run (and scikit-learn's tests) raises the
    error of the first failing task. Finished batches are told at once;
    failed ones wait for those submitted before them, and the earliest
    failure is told first.
    """

    def __init__(self):
        self._lock = threading.Lock()
        # [job, callback, done] of the batches submitted, in their order,
        # until they and every one before them are done.
        self._batches = deque()

    def callback(self, callback):
        """Return what a new batch's ``Job`` calls back instead of ``callback``."""
        if callback is None:
            return None
        entry = [None, callback, False]
        with self._lock:
            self._batches.append(entry)

        def on_done(job):
            if job.exception is None:
                callback(job)
            told = []
            with self._lock:
                entry[0], entry[2] = job, True
                while self._batches and self._batches[0][2]:
                    done_job, done_callback, _ = self._batches.popleft()
                    if done_job.exception is not None:
                        told.append((done_callback, done_job))
            for failed_callback, failed_job in told:
                failed_callback(failed_job)

        return on_done


class Task:
    """One ``(function, args, kwargs)`` of a joblib batch.

    A task of sklearn's ``_fit_and_score`` has its ``arguments`` by name, the
    ``fold`` its data is stored in and the ``split_key`` naming the content
    of its data and split; other tasks have None for all three. One whose
    candidate shares a fitted pipeline prefix has that ``prefix`` too
    (``_prefix.PrefixFold``), and waits in its queue.
    """

    internal = False  # a task of the backend's own, not of a joblib batch

    __slots__ = (
        "args",
        "arguments",
        "attempts",
        "call",
        "checkpoint_key",
        "continued",
        "driven",
        "finished",
        "fold",
        "function",
        "index",
        "job",
        "kwargs",
        "n_stops",
        "on_continued",
        "on_prefix",
        "order",
        "output",
        "position",
        "prefix",
        "rows",
        "saved",
        "split_key",
        "timed_out",
    )

    def __init__(self, job, index, function, args, kwargs):
        self.job, self.index = job, index
        self.function, self.args, self.kwargs = function, args, kwargs
        self.arguments = self.fold = self.split_key = None
        self.rows = None  # its rows of its fold (see Fold.rewrite)
        self.position = 0  # of its candidate in the search's running order
        self.call = None  # the Call that submitted it
        self.order = None  # tasks are sent in this order, fold permitting
        self.attempts = 0  # times sent to an engine that then died
        self.n_stops = 0  # times stopped by a signal meant for another message
        self.saved = False  # its result came from a checkpoint
        self.finished = False  # its job has its outcome
        self.checkpoint_key = None  # see SavedFits
        self.prefix = None  # the PrefixFold it runs on, if any
        self.on_prefix = False  # sent to run on its prefix
        # The ContinuedFit of a halving fit that may continue a saved model.
        self.continued = None
        # What the search driving its fits knows of it (see ClusterBackend.inject):
        # (candidate, level, split) of an asynchronous halving search's fit.
        self.driven = None
        self.on_continued = False  # sent to continue, or to save, a model
        self.output = None  # what an internal task said (a TaskOutput)
        # (FitTimeoutError, seconds) once it ran past fit_timeout: it is then
        # sent again to fail at once (see _fit_timeout).
        self.timed_out = None

    @property
    def key(self):
        """The queue the task waits in: its prefix's, its fold's, or None."""
        if self.prefix is not None:
            return self.prefix.key
        return None if self.fold is None else self.fold.key

    @property
    def owner(self):
        """Whose call submitted the task (see ``Call``), or None."""
        return None if self.call is None else self.call.owner

    @property
    def stored(self):
        """Whether the data the task runs on is stored."""
        return self.fold.stored and (self.prefix is None or self.prefix.stored)

    @property
    def folds(self):
        """The folds the task keeps stored until it is finished."""
        if self.fold is None:
            return ()
        return (self.fold,) if self.prefix is None else (self.fold, self.prefix)

    @property
    def caller(self):
        """The task's ``caller`` argument (scikit-learn's search), or None."""
        if self.arguments is not None:
            return self.arguments.get("caller")
        return self.kwargs.get("caller")

    @property
    def kind(self):
        """Tasks of a kind take about as long: a candidate, on every split."""
        return None if self.arguments is None else id(self.arguments["parameters"])

    @property
    def limited(self):
        """Whether ``fit_timeout`` applies: a fit not yet stopped by it."""
        return self.arguments is not None and self.timed_out is None

    def message_item(self):
        """Return ``(function, args, kwargs)`` as the engine runs it."""
        if self.fold is None:
            args, kwargs = self.args, self.kwargs
        else:
            args, kwargs = self.fold.rewrite(self.arguments, self.rows)
        if self.timed_out is not None:
            # Whole, on its own fold: its scores are those of a failed fit.
            self.on_prefix = self.on_continued = False
            return fail_fit, (self.function, *self.timed_out, *args), kwargs
        if self.continued is not None:
            self.on_continued = True
            run = functools.partial(fit_and_score_continued, self.continued)
            return calling(self.function, run), args, kwargs
        if self.prefix is None or self.fold is None:
            return self.function, args, kwargs
        self.on_prefix = not self.prefix.plain
        return self.prefix.candidate_item(self.function, args, kwargs)

    def take(self, value):
        """Return ``(result, on_prefix)`` from what the task's engine gave back.

        ``on_prefix``: whether its remaining steps ran on its prefix, whose
        share of time its result is then charged.
        """
        if self.on_continued:
            info, value = value
            self.continued.took(info)
            return value, False
        if not self.on_prefix:
            return value, False
        on_prefix, value = value
        if on_prefix:
            self.prefix.charge(value)
        return value, on_prefix


class PrefixTask(Task):
    """The task that fits a pipeline prefix on its split, for its candidates.

    Made from the first of them, whose arguments it runs with; internal: no
    joblib batch waits for it, and its end stores the prefix.
    """

    __slots__ = ("fits",)
    internal = True

    def __init__(self, prefix, candidate):
        super().__init__(None, 0, candidate.function, candidate.args, candidate.kwargs)
        self.fits = prefix
        self.arguments, self.fold, self.rows = (
            candidate.arguments,
            prefix.base,
            prefix.rows,
        )
        self.split_key = candidate.split_key
        number, position, order = candidate.order
        self.call, self.order = candidate.call, (number, position, order - 0.5)

    @property
    def kind(self):
        return ("prefix", id(self.fits))

    def message_item(self):
        args, kwargs = self.fold.rewrite(self.arguments, self.rows)
        return self.fits.prefix_item(self.function, args, kwargs)

    def take(self, value):
        return value, False


class TaskQueues:
    """The tasks waiting to be sent: one queue per fold, and their order.

    Not thread-safe: the scheduler holds its lock around every call.
    Tasks go in the order (call, candidate position, submission) as far as
    their folds allow; a message takes the first tasks among the queues of
    the stored folds, as many as hide the per-message cost given the
    durations measured so far.
    """

    def __init__(self):
        self._waiting = OrderedDict()  # fold key (None: no fold) -> deque
        self._unsorted = set()  # fold keys whose queue is out of order
        # Fold keys whose queue is longest first, with how many durations
        # were known when it was sorted.
        self._by_duration = {}
        self.version = 0  # changes when tasks or queues come or go
        # Whether fits under fit_timeout go one per message: the client then
        # knows when each started (see Messenger.take_overdue).
        self.limited_alone = False
        # Seconds per task, a moving average for each code the tasks run
        # (see _code): tasks of one Parallel call are no guide to another's.
        self._seconds_by_code = {}
        self._seconds_by_kind = {}

    def __bool__(self):
        return any(self._waiting.values())

    def keys(self):
        """Return the keys of the queues with tasks, in the order they came."""
        return [key for key, tasks in self._waiting.items() if tasks]

    def add(self, task):
        self.version += 1
        waiting = self._waiting.setdefault(task.key, deque())
        if waiting and waiting[-1].order > task.order:
            self._unsorted.add(task.key)
        waiting.append(task)

    def requeue(self, tasks):
        """Put tasks back at the front of their queues, in their order."""
        self.version += 1
        for task in reversed(tasks):
            self._waiting.setdefault(task.key, deque()).appendleft(task)
            self._by_duration.pop(task.key, None)

    def first(self, key):
        """Return the first task in order of queue ``key``, or None."""
        waiting = self._waiting.get(key)
        return min(waiting, key=_order) if waiting else None

    def clear(self, owner=None):
        """Take the waiting tasks of ``owner``'s calls (None: all); return them."""
        if owner is None:
            tasks = [task for waiting in self._waiting.values() for task in waiting]
            self._waiting.clear()
        else:
            tasks = []
            for key, waiting in list(self._waiting.items()):
                kept = deque()
                for task in waiting:
                    (tasks if task.owner is owner else kept).append(task)
                if kept:
                    self._waiting[key] = kept
                else:
                    del self._waiting[key]
                    self._by_duration.pop(key, None)
        self.version += 1
        return tasks

    def next_message(self, n_in_flight_max, n_in_flight=0):
        """Take the next message's tasks; none while no fold is stored.

        The first tasks in order among those of all stored folds, which may
        share a message so that short fits fill messages even when each fold
        has few tasks left per engine; then tasks without data. A message
        carries the tasks of one call, which can be stopped alone.
        ``n_in_flight_max``: the messages that may be in flight
        (``MESSAGES_PER_ENGINE`` per engine); ``n_in_flight``: those that are.
        """
        keys = self.keys()
        for key in self._unsorted.intersection(keys):
            self._waiting[key] = deque(sorted(self._waiting[key], key=_order))
            self._by_duration.pop(key, None)
        self._unsorted.clear()
        sendable = [
            key for key in keys if key is not None and self._waiting[key][0].stored
        ]
        if not sendable and None in keys:
            sendable = [None]
        if not sendable:
            return []
        queues = [self._waiting[key] for key in sendable]
        n_waiting = sum(len(waiting) for waiting in queues)
        head = min(queues, key=lambda waiting: waiting[0].order)[0]
        seconds = self._seconds_by_code.get(_code(head.function))
        size = min(
            self._message_size(n_waiting, n_in_flight_max, n_in_flight, seconds),
            n_waiting,
        )
        tasks = []
        # The last tasks, one per message: all of them are in flight soon, and
        # the longest, started first, leave no engine idle at the end.
        last = size == 1 and n_waiting <= n_in_flight_max and self._seconds_by_kind
        for _ in range(size):
            first = min(filter(None, queues), key=lambda waiting: waiting[0].order)
            if tasks and first[0].call is not tasks[0].call:
                break  # queues are in order: the first call has no task left
            if tasks and self.limited_alone and (tasks[0].limited or first[0].limited):
                break
            if last:
                first = self._longest_first(first[0].key)
            tasks.append(first.popleft())
        for key in sendable:
            if not self._waiting[key]:
                del self._waiting[key]
                self._by_duration.pop(key, None)
                self.version += 1
        return tasks

    def _longest_first(self, key):
        """Return queue ``key`` sorted by expected duration, longest first.

        Durations come from the same candidate on earlier folds. The queue
        is sorted again only when a quarter more durations are known than
        when it was last sorted: a few times in all, not once per message or
        per new candidate, which on a long queue (the last tasks of 1,000
        engines) would cost the client its length per task.
        """
        waiting = self._waiting[key]
        n_known = len(self._seconds_by_kind)
        sorted_at = self._by_duration.get(key)
        if sorted_at is None or n_known > RESORT_GROWTH * sorted_at:
            expected = self._seconds_by_kind
            ordered = sorted(
                waiting, key=lambda task: (-expected.get(task.kind, -1.0), task.order)
            )
            waiting.clear()
            waiting.extend(ordered)
            self._by_duration[key] = n_known
        return waiting

    def _message_size(self, n_waiting, n_in_flight_max, n_in_flight, seconds):
        """Tasks per message: enough work to hide the message cost, balanced.

        ``seconds``: how long each of the next tasks takes, None if not known
        yet. Balanced over the messages that may be in flight, or, for short
        work (``SHORT_WORK_SECONDS``), over the engines without a message.
        """
        if seconds is None:
            return 1
        n_idle = max(1, n_in_flight_max // MESSAGES_PER_ENGINE - n_in_flight)
        if n_waiting * seconds <= SHORT_WORK_SECONDS * n_idle:
            balanced = -(-n_waiting // n_idle)
        else:
            balanced = -(-n_waiting // n_in_flight_max)
        by_time = int(TARGET_MESSAGE_SECONDS / max(seconds, 1e-6))
        return max(1, min(balanced, by_time, MAX_TASKS_PER_MESSAGE))

    def record_durations(self, tasks, seconds):
        """Learn how long tasks take from a message's reply."""
        by_code = {}
        for task, duration in zip(tasks, seconds, strict=True):
            if task.kind is not None:
                self._seconds_by_kind[task.kind] = duration
            by_code.setdefault(_code(task.function), []).append(duration)
        for code, durations in by_code.items():
            mean = sum(durations) / len(durations)
            before = self._seconds_by_code.get(code)
            self._seconds_by_code[code] = (
                mean if before is None else 0.7 * before + 0.3 * mean
            )


class Scheduler:
    """Send queued tasks to the engines from a thread of its own.

    Parameters
    ----------
    roster : EngineRoster
        The engines ready for tasks (``refresh()``, ``ready``, ``probing``).
    messenger : Messenger
        Sends messages and reads their replies.
    folds : FoldIndex
        Decides when the folds of waiting tasks are stored, and stores them.
    losses : EngineLosses
        Which tasks of a dead engine are sent again, and how long to wait
        when no engine is left.
    on_done : callable
        ``on_done(task, ok, value)`` before a task's job hears of it; an
        exception it raises fails the task instead.
    on_progress : callable or None
        ``on_progress(n_done, n_submitted)`` after every finished task.
    controller : ControllerWatch or None
        Told of every reply, and asked whether the controller still answers.
    """

    def __init__(
        self,
        roster,
        messenger,
        folds,
        losses,
        *,
        on_done,
        on_progress=None,
        controller=None,
    ):
        self._roster, self._messenger, self._folds = roster, messenger, folds
        self._losses = losses
        self._controller = controller
        self._on_done, self._on_progress = on_done, on_progress
        self.n_submitted = self.n_done = 0
        self.n_retried = 0  # tasks sent again after their engine died
        self.n_stopped = 0  # tasks sent again after a stray stop signal
        self._condition = threading.Condition()
        self._queues = TaskQueues()
        self._queues.limited_alone = getattr(messenger, "fit_timeout", None) is not None
        self._saved = deque()  # (task, result) of checkpointed tasks to hand back
        self._replies = queue.SimpleQueue()
        self._handling = []  # the tasks of the reply being handled
        self._order = itertools.count()
        self._n_calls = 0
        self._call = None  # the running call, the last started
        self._sending = False
        self._nothing_to_store = None  # (queues, folds) versions, see _store_folds
        self._last_submit = time.monotonic()
        self._cancelled = None
        self._open = False  # taking tasks: started, not shut down
        self._stopping = False
        self._pausing = False  # asked to pause (see pause)
        self._paused = False  # paused: no call holds the scheduler
        self._thread = None

    # What the backend calls -------------------------------------------------

    def start(self, thread=True):
        """Take tasks, and send them from a thread of the scheduler's own.

        The thread stays between calls (see :meth:`pause`), until
        :meth:`shutdown`; a thread that ended on an error is replaced.
        ``thread=False``: no thread; whoever calls :meth:`step` sends them
        (``benchmarks/bench_scheduler.py``).
        """
        with self._condition:
            self._cancelled = None  # by a thread that failed before
            self._paused = False
            if self._open and (self._thread is None or self._thread.is_alive()):
                self._condition.notify_all()
                return
            self._open = True
            self._stopping = self._pausing = False
            if thread:
                self._thread = threading.Thread(
                    target=self._run, name="sklearn_ipp-scheduler", daemon=True
                )
                self._thread.start()

    def start_call(self, call=None):
        """Give ``call`` its number; hold sending until its first tasks are in.

        Returns the call (a new one without owner nor settings if None).
        """
        call = Call() if call is None else call
        with self._condition:
            self._sending = False
            self._n_calls += 1
            call.number = self._n_calls
            self._call = call
        return call

    @property
    def n_calls(self):
        """The number of the last call started (0: none)."""
        return self._n_calls

    def release(self):
        """Send the tasks held since ``start_call``."""
        with self._condition:
            self._sending = True
            self._condition.notify_all()

    def submit(self, tasks, saved, call=None):
        """Queue ``tasks`` of ``call``; ``saved`` are ``(task, result)`` not to run.

        ``call`` None: the last call started. Raises, queueing nothing, when
        no task would ever be sent: the scheduler is shut down or cancelled,
        or its thread ended.
        """
        with self._condition:
            self._check_open()
            call = self._call if call is None else call
            for task in itertools.chain(tasks, (task for task, _ in saved)):
                task.call = call
                number = 0 if call is None else call.number
                task.order = (number, task.position, next(self._order))
                for fold in task.folds:
                    fold.n_outstanding += 1  # until _finish
            for task in tasks:
                self._queues.add(task)
            # Handed back by the scheduling thread: joblib's callback must
            # not run inside its own dispatch.
            self._saved.extend(saved)
            self.n_submitted += len(tasks) + len(saved)
            self._last_submit = time.monotonic()
            self._condition.notify_all()

    def message_done(self, handle):
        """Take a message's reply (from any thread) to the scheduling thread."""
        self._replies.put(handle)
        self.wake()

    def wake(self):
        with self._condition:
            self._condition.notify_all()

    def stop(self, exc=None, cancel=False, owner=None):
        """Stop the tasks queued or running of ``owner``'s calls (None: all).

        The one way tasks are stopped (from any thread): messages still
        queued on the cluster are aborted, running ones interrupted. The
        tasks fail with ``exc``, or with ``BackendStoppedError`` if None
        (joblib, which aborted the call, no longer waits for them; anyone
        else would learn why). With ``cancel``, tasks submitted from now on
        fail with ``exc`` too, so that joblib ends the call with it.
        """
        with self._condition:
            if cancel:
                self._cancelled = exc
            dropped = self._queues.clear(owner)
            kept = deque()
            for task, result in self._saved:
                if owner is None or task.owner is owner:
                    dropped.append(task)
                else:
                    kept.append((task, result))
            self._saved = kept
            handles, sent = self._messenger.take_all(owner)
        if exc is None:
            exc = BackendStoppedError(
                "The task was stopped before it ended: its Parallel call was "
                "aborted, or the backend shut down."
            )
        self._finish_all(dropped + sent, exc)
        # A lost controller answers nothing: its engines are not stuck.
        self._messenger.stop(
            handles, end_stuck=not isinstance(exc, ControllerLostError)
        )

    def resume(self):
        """Take tasks again after a ``stop(..., cancel=True)``."""
        with self._condition:
            self._cancelled = None

    def pause(self):
        """Stop every task and remove every stored fold, until the next call.

        The thread stays, idle, for the next :meth:`start`. It does this
        itself, between two steps, so that no fold it is storing is left
        behind.
        """
        with self._condition:
            thread = self._thread
            if (
                thread is not None
                and thread.is_alive()
                and thread is not threading.current_thread()
            ):
                self._pausing = True
                self._condition.notify_all()
                while self._pausing and thread.is_alive():
                    self._condition.wait(HOLD_SECONDS)
                if not self._pausing:
                    return
        self._pause_now()  # no thread, this is it, or it ended meanwhile

    def _pause_now(self):
        try:
            self._stop_everything()
        finally:
            with self._condition:
                # Nothing of the last call is kept: its Parallel, and the
                # backend it holds, go once they are no longer used.
                self._call = None
                self._pausing = False
                self._paused = True
                self._condition.notify_all()

    def shutdown(self):
        """Stop the thread and every task, remove every stored fold.

        Tasks submitted from now on are refused until :meth:`start`.
        """
        with self._condition:
            self._open = False
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self._stop_everything()

    def _stop_everything(self):
        """Stop every task, remove every stored fold: a pause's, a shutdown's."""
        self.stop(
            BackendStoppedError(
                "The backend shut down while the task was queued or running."
            )
        )
        self._folds.clear()

    def _check_open(self):
        """Raise why no task submitted now would be sent (with the lock held)."""
        if self._cancelled is not None:
            raise self._cancelled
        if not self._open:
            raise BackendStoppedError(
                "The backend is shut down: its Parallel call, or the with "
                "block it was made for, has ended. Make the call inside an "
                'open `parallel_config(backend="ipyparallel")` block.'
            )
        if self._thread is not None and not self._thread.is_alive():
            raise BackendStoppedError(
                "The backend's scheduling thread has ended, so no task would "
                "be sent; start a new Parallel call."
            )

    # The scheduling thread --------------------------------------------------

    def _run(self):
        try:
            while True:
                with self._condition:
                    if not (
                        self._stopping
                        or self._pausing
                        or self._can_send()
                        or not self._replies.empty()
                        or self._saved
                    ):
                        # Woken by submissions and replies; the timeout
                        # also notices engines that join or leave, while a
                        # call holds the scheduler.
                        self._condition.wait(None if self._paused else HOLD_SECONDS / 2)
                    if self._stopping:
                        return
                    pausing = self._pausing
                if pausing:
                    self._pause_now()
                else:
                    self.step()
        except BaseException as exc:  # surfaced to joblib through the jobs
            # No thread sends what comes next: every task fails with the
            # error, those taken from the messenger already included, and so
            # does every task submitted until the next start.
            with self._condition:
                handling, self._handling = self._handling, []
            self._finish_all(handling, exc)
            try:
                self.stop(exc, cancel=True)
            except BaseException:
                logger.exception("Stopping the tasks after an error failed.")
                with self._condition:
                    self._cancelled = exc

    def _finish_all(self, tasks, exc):
        """Fail ``tasks``; one whose callback fails does not keep others waiting."""
        for task in tasks:
            try:
                self._finish(task, False, exc)
            except Exception:
                logger.exception("A stopped task's callback failed.")

    def step(self):
        """Do what is to be done now: replies, engines lost, folds, messages.

        The scheduling thread calls it whenever it is woken. A simulation
        (``benchmarks/bench_scheduler.py``) calls it instead, without the
        thread, after each event it makes up.
        """
        self._roster.refresh()
        self._hand_back_saved()
        self._handle_replies()
        self._resend_stranded()
        self._take_overdue()
        self._losses.check_engines_left(self._busy, self.n_done, self.n_submitted)
        if self._controller is not None:
            self._controller.check(self._busy, self.n_done, self.n_submitted)
        self._folds.release_idle()
        self._store_folds()
        self._send_ready()

    def _can_send(self):
        held = not self._sending and time.monotonic() - self._last_submit < HOLD_SECONDS
        return (
            not held
            and bool(self._roster.ready)
            and bool(self._queues)
            and len(self._messenger) < self._max_in_flight()
        )

    def _busy(self):
        with self._condition:
            return bool(self._queues) or bool(len(self._messenger))

    def _max_in_flight(self):
        return MESSAGES_PER_ENGINE * max(1, len(self._roster.ready))

    def _store_folds(self):
        """Store the folds of waiting tasks while the fold policy allows.

        A pipeline prefix chosen is fitted by a task of its own, queued
        before its candidates; it is stored when that task ends.
        """
        while True:
            with self._condition:
                # Asked again only when tasks or folds changed since it said
                # there was nothing to store (checked first: most rounds).
                state = (self._queues.version, self._folds.version)
                if state == self._nothing_to_store or not self._can_send():
                    return
                keys = self._queues.keys()
            fold = self._folds.to_store(keys)
            if fold is None:
                self._nothing_to_store = state
                return
            if getattr(fold, "is_prefix", False):
                with self._condition:
                    first = self._queues.first(fold.key)
                    if first is None:  # its candidates were dropped meanwhile
                        fold.plain = True
                    if not fold.plain:
                        task = PrefixTask(fold, first)
                        for counted in task.folds:
                            counted.n_outstanding += 1
                        self._queues.add(task)
                continue
            # Written outside the lock: ipyparallel's thread takes it too.
            self._folds.store(fold)

    def _send_ready(self):
        while True:
            with self._condition:
                if not self._can_send():
                    return
                tasks = self._queues.next_message(
                    self._max_in_flight(), len(self._messenger)
                )
            if not tasks:
                return
            try:
                sent = self._messenger.send(tasks)
            except BaseException:
                self._requeue(tasks)  # failed with the rest (see _run)
                raise
            if not sent:
                # An engine left since the roster was last refreshed, and
                # ipyparallel no longer knows its id: send again without it.
                self._requeue(tasks)
                self._roster.refresh()
                return

    def _handle_replies(self):
        while True:
            try:
                handle = self._replies.get_nowait()
            except queue.Empty:
                return
            if self._controller is not None:
                self._controller.heard()
            tasks = self._handling = self._messenger.take(handle) or []
            self._handle_reply(handle, tasks)
            # Not kept once handled (when handling fails, the thread's end
            # fails them): nothing of a call stays after it.
            self._handling = []

    def _handle_reply(self, handle, tasks):
        if not tasks:  # dropped by stop()
            return
        try:
            outcomes, seconds = self._messenger.read(handle, tasks)
        except Exception as exc:  # no task may be left without an end
            outcomes, seconds = [(False, exc)] * len(tasks), None
        if outcomes is ENGINE_LOST:
            self._retry(tasks, getattr(handle, "engine_id", None))
            return
        if outcomes is SEND_AGAIN:  # they never ran: no attempt counted
            self._requeue(tasks)
            return
        if seconds is not None:
            with self._condition:
                self._queues.record_durations(tasks, seconds)
        stopped, timed_out = [], []
        for task, outcome in zip(tasks, outcomes, strict=True):
            if outcome is STOPPED:
                stopped.append(task)
            elif outcome is TIMED_OUT:
                timed_out.append(task)
            else:
                self._finish(task, *outcome)
        if timed_out:
            self._requeue(timed_out)  # to fail at once (see _fit_timeout)
        if stopped:
            # A stop signal meant for another message (of another call
            # or client), which had just ended on that engine, stopped
            # them: they did not run to their end, so they run again.
            logger.info(
                "%d task(s) were stopped by a signal meant for another "
                "message; sending them again.",
                len(stopped),
            )
            self.n_stopped += len(stopped)
            for task in stopped:
                task.n_stops += 1
            self._requeue(stopped)

    def _resend_stranded(self):
        """Send again the tasks of messages that only engines now gone could run.

        They never ran: they are sent again without counting an attempt.
        """
        for tasks in self._messenger.take_stranded():
            self._requeue(tasks)

    def _take_overdue(self):
        """Fail the fits whose engines did not stop them at ``fit_timeout``.

        They are sent again to fail at once, as those the engines stopped.
        """
        take_overdue = getattr(self._messenger, "take_overdue", None)
        if take_overdue is None:  # a simulation's messenger
            return
        again, failed = take_overdue()
        if again:
            self._requeue(again)
        for task, outcome in failed:
            self._finish(task, *outcome)

    def _requeue(self, tasks):
        """Put tasks back at the front of their queues, in their order."""
        with self._condition:
            self._queues.requeue(tasks)
            self._condition.notify_all()

    def _retry(self, tasks, engine_id):
        """Queue again the tasks of an engine that died, up to ``retries``."""
        again, lost = self._losses.sort(tasks, engine_id, self.n_done, self.n_submitted)
        self._requeue(again)
        self.n_retried += len(again)
        for task, error in lost:
            self._finish(task, False, error)

    def _hand_back_saved(self):
        while True:
            with self._condition:
                if not self._saved:
                    return
                task, result = self._saved.popleft()
            self._finish(task, True, result)

    def _finish(self, task, ok, value):
        if task.finished:
            return
        task.finished = True
        if task.internal:
            self._finish_prefix(task, ok, value)
            return
        try:
            self._on_done(task, ok, value)
        except Exception as exc:
            ok, value = False, exc
        job = task.job
        with self._condition:
            for fold in task.folds:
                fold.n_outstanding -= 1
            self.n_done += 1
            if ok:
                job.results[task.index] = value
            else:
                job.fail(task.index, value)
            job.n_remaining -= 1
            finished = job.n_remaining == 0
        try:
            if self._on_progress is not None:
                self._on_progress(self.n_done, self.n_submitted)
        finally:
            # A progress display that fails (a raising callback, a broken
            # stream) stops the scheduling thread, which fails the tasks still
            # to come; a job it ended must still be told, or its caller waits
            # for ever.
            if finished:
                job.done.set()
                if job.callback is not None:
                    job.callback(job)

    def _finish_prefix(self, task, ok, value):
        """Store a fitted prefix: its candidates can run.

        If it failed, or its data cannot be stored, they run whole, which
        gives scikit-learn's error, warnings and scores.
        """
        prefix = task.fits
        prefix.output = task.output
        try:
            self._folds.store_prefix(prefix, value if ok else None)
        except Exception:
            logger.info("A pipeline prefix could not be stored.", exc_info=True)
            self._folds.store_prefix(prefix, None)
        with self._condition:
            for fold in task.folds:
                fold.n_outstanding -= 1
            self._condition.notify_all()


def _order(task):
    return task.order


def _code(function):
    """Name the code a task runs: its tasks take about as long as each other.

    Through scikit-learn's ``_FuncWrapper`` and ``functools.partial``, by
    module and qualified name rather than identity, so that a function made
    anew for each call (a lambda in a loop) is known from the last.
    """
    function = getattr(function, "function", function)  # scikit-learn's wrapper
    while isinstance(function, functools.partial):
        function = function.func
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return getattr(function, "__module__", None), name
