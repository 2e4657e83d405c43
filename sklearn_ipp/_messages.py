"""The client side of the wire: messages of tasks out, outcomes back.

A message is one ``run_batch`` call on a load-balanced view, carrying the
tasks pickled by sklearn_ipp itself (see ``_pickling.dumps``, which writes
large arrays to the store and sends references); its reply is one outcome per
task. ``Messenger`` keeps the messages in flight, reads their replies into
``(ok, result_or_exception)`` outcomes with the engine's traceback attached,
finds the messages left without an engine, and stops messages: queued ones
are aborted, running ones get ``STOP_SIGNAL``.
"""

import contextlib
import logging
import threading
import time

import cloudpickle

from ._cluster import end_stuck_engines
from ._fit_timeout import fit_timeout_error
from ._pickling import by_value_generation, dumps, send_by_value
from ._worker import (
    NOT_STOPPED,
    STARTED,
    STOP_SIGNAL,
    STOPPED,
    TIMED_OUT,
    UNPICKLING_FAILED,
    run_batch,
)

__all__ = [
    "ENGINE_LOST",
    "MAX_STOPS",
    "SEND_AGAIN",
    "STOPPED",
    "TIMED_OUT",
    "Messenger",
    "RemoteTraceback",
]

logger = logging.getLogger("sklearn_ipp")

# How long stopping waits for messages that have just reached their engines
# to be seen running, and for queued ones to come back aborted.
STOP_WAIT_SECONDS = 2.0

# Times a task may be stopped by stop signals meant for other messages (of
# another call or client) before it is sent in a message that signals do not
# stop: stray signals cannot keep a task from ever finishing.
MAX_STOPS = 3

# Seconds that the engine of a stopped message gets to free itself before it
# is ended (when it belongs to the local cluster started by this process).
STUCK_GRACE_SECONDS = 30.0

# For a fit stopped at fit_timeout: one more fit_timeout, within these bounds.
# Ending an engine and starting another costs seconds of CPU; a fit a little
# slower than its limit, in compiled code, is done sooner.
LIMIT_STUCK_GRACE_SECONDS = (5.0, STUCK_GRACE_SECONDS)

# Seconds past its fit_timeout after which a fit that its engine has not
# stopped (compiled code that does not return to Python, which the engine's
# signal waits for) is failed by the client, and the engine ended: this, plus
# a tenth of the limit, for a slow reply.
OVERDUE_GRACE_SECONDS = 2.0

# What reading a reply gives when the message's engine died or left.
ENGINE_LOST = "sklearn_ipp_engine_lost"

# What reading a reply gives when its tasks did not run but will load if sent
# again: the engine lacked a module of the client's, now sent by value.
SEND_AGAIN = "sklearn_ipp_send_again"


class Messenger:
    """Send tasks to the ready engines and read what comes back.

    Parameters
    ----------
    connection : ClusterConnection
        Whose load-balanced view carries the messages.
    roster : EngineRoster
        The engines ready for tasks, the only ones messages may go to, and
        the thread limits of their hosts.
    n_threads : int or None
        The BLAS and OpenMP threads of every engine while it runs tasks;
        None: its host's CPUs divided by its engines there.
    persist : callable
        ``persist(array) -> StoredData``: how large arrays of a task are
        stored, to be sent as references.
    max_nbytes : int or None
        Arrays at least this large are persisted; None: none is.
    on_reply : callable
        Called with a message's handle, in ipyparallel's thread, when its
        reply (or failure) arrives.
    fit_timeout : float or None, default=None
        Seconds each fit of scikit-learn's ``_fit_and_score`` may run on its
        engine; None: no limit.
    """

    def __init__(
        self,
        connection,
        roster,
        n_threads,
        persist,
        max_nbytes,
        on_reply,
        fit_timeout=None,
    ):
        self.fit_timeout = fit_timeout
        # message id -> when the client saw its limited fit start
        self._started = {}
        self._connection = connection
        self._roster = roster
        self._n_threads = n_threads
        self._persist = persist
        self._max_nbytes = max_nbytes
        self._on_reply = on_reply
        self._view = None
        self._lock = threading.Lock()
        # message id -> (AsyncResult, tasks, the engines it may run on,
        # by_value_generation() when it was pickled)
        self._in_flight = {}
        # The generations of messages taken but not read yet.
        self._generations = {}
        # Ids of the messages in flight whose tasks the stop signal may not
        # stop (see MAX_STOPS): their engines are not signalled.
        self._unstoppable = set()
        # What crossed the network, for tests and benchmarks: none of it
        # grows with the data.
        self.n_tasks_sent = 0
        self.n_fold_tasks_sent = 0  # of which sklearn's _fit_and_score
        self.payload_bytes = 0
        self.n_on_prefix = 0  # fit tasks that ran on a fitted pipeline prefix

    def __len__(self):
        """Messages in flight."""
        return len(self._in_flight)

    def send(self, tasks):
        """Send one message of ``tasks``, of one call, to one of the ready engines.

        They run under the warning filters of their call (``Call``). Returns
        False, sending nothing, when a ready engine is already unknown to
        ipyparallel (it left since the roster was refreshed).
        """
        # Only to engines whose host holds the data, which excludes engines
        # that joined but are not probed yet.
        targets = sorted(self._roster.ready)
        thread_limits = self._roster.thread_limits(self._n_threads)
        items = [task.message_item() for task in tasks]
        limits = None
        if self.fit_timeout is not None and any(task.limited for task in tasks):
            limits = [self.fit_timeout if task.limited else None for task in tasks]
        generation = by_value_generation()
        call = tasks[0].call
        payload = dumps(
            (items, None if call is None else call.warning_filters),
            persist=None if self._max_nbytes is None else self._persist,
            min_nbytes=self._max_nbytes or 0,
        )
        if self._view is None:
            self._view = self._connection.load_balanced_view()
        stoppable = all(task.n_stops < MAX_STOPS for task in tasks)
        try:
            with self._view.temp_flags(targets=targets):
                async_result = self._view.apply_async(
                    run_batch, payload, thread_limits, stoppable, limits
                )
        except KeyError:
            return False
        self.n_tasks_sent += len(tasks)
        self.n_fold_tasks_sent += sum(task.fold is not None for task in tasks)
        self.payload_bytes += len(payload)
        with self._lock:
            self._in_flight[async_result.msg_ids[0]] = (
                async_result,
                tasks,
                targets,
                generation,
            )
            if limits is not None:
                self._started[async_result.msg_ids[0]] = None
            if not stoppable:
                self._unstoppable.add(async_result.msg_ids[0])
        async_result.add_done_callback(self._on_reply)
        return True

    def take(self, async_result):
        """Return the tasks of a message that replied; None if it was dropped."""
        msg_id = async_result.msg_ids[0]
        with self._lock:
            entry = self._in_flight.pop(msg_id, None)
            self._started.pop(msg_id, None)
            self._unstoppable.discard(msg_id)
            if entry is None:
                return None
            self._generations[msg_id] = entry[3]
        return entry[1]

    def take_stranded(self):
        """Return the task lists of the messages no living engine may run.

        A message waits in ipyparallel's scheduler until one of its target
        engines is free; if they all died before it started, ipyparallel
        neither runs nor fails it.
        """
        alive = set(self._connection.engine_ids)
        with self._lock:
            stranded = [
                msg_id
                for msg_id, (_, _, targets, _) in self._in_flight.items()
                if not alive.intersection(targets)
            ]
            for msg_id in stranded:
                self._started.pop(msg_id, None)
                self._unstoppable.discard(msg_id)
            stranded = [self._in_flight.pop(msg_id)[1] for msg_id in stranded]
        for tasks in stranded:
            logger.info(
                "The engines a message was sent to are gone; sending its %d "
                "task(s) again.",
                len(tasks),
            )
        return stranded

    def take_all(self, owner=None):
        """Forget the messages in flight of ``owner``'s calls (None: all).

        Returns their handles and tasks.
        """
        with self._lock:
            taken = [
                msg_id
                for msg_id, entry in self._in_flight.items()
                if owner is None or entry[1][0].owner is owner
            ]
            for msg_id in taken:
                self._started.pop(msg_id, None)
            entries = [self._in_flight.pop(msg_id) for msg_id in taken]
        return [entry[0] for entry in entries], [
            task for entry in entries for task in entry[1]
        ]

    def read(self, async_result, tasks):
        """Turn the reply of a message ``take`` gave into ``(outcomes, seconds)``.

        One outcome per task: ``(ok, result_or_exception)``, or ``STOPPED``
        for a task a stop signal ended. ``(ENGINE_LOST, None)`` when the
        engine died (or left) before replying; ``(SEND_AGAIN, None)`` when
        it lacked a module that is now sent by value; ``seconds``, the
        tasks' durations, is None when they are not known.
        """
        with self._lock:
            generation = self._generations.pop(async_result.msg_ids[0], None)
        try:
            reply = cloudpickle.loads(async_result.get())
        except BaseException as exc:  # the engine died or the message failed
            if _is_engine_loss(exc):
                return ENGINE_LOST, None
            return [(False, exc)] * len(tasks), None
        if reply[0] == UNPICKLING_FAILED:
            _, exc, text, hostname = reply
            # The module is sent by value now, by this reply or by one that
            # came before it, of a message pickled after this one.
            if isinstance(exc, ImportError) and (
                send_by_value(exc.name)
                or (generation is not None and generation < by_value_generation())
            ):
                return SEND_AGAIN, None
            error = _unloadable_task_error(exc, text, async_result, hostname)
            return [(False, error)] * len(tasks), None
        outcomes, seconds, hostname, outputs = reply
        if STOPPED in (outcome[0] for outcome in outcomes):
            seconds = None  # cut short: not how long the tasks take
        read = []
        for task, outcome, output in zip(tasks, outcomes, outputs, strict=True):
            if outcome[0] == STOPPED:
                read.append(STOPPED)
                continue
            if outcome[0] == TIMED_OUT:
                error = fit_timeout_error(
                    self.fit_timeout, async_result.engine_id, hostname
                )
                read.append(_timed_out(task, error, outcome[1]))
                continue
            said_before = None
            if outcome[0] is True:
                value, on_prefix = task.take(outcome[1])
                outcome = (True, value)
                if on_prefix:
                    self.n_on_prefix += 1
                    said_before = task.prefix.output  # as the prefix's fit did
            else:
                outcome = (False, _with_remote_traceback(outcome[1], outcome[2]))
            if task.internal:
                # A prefix's: said again by each candidate that runs on it.
                task.output = output
                read.append(outcome)
                continue
            try:
                for said in (said_before, output):
                    if said is not None:
                        _replay(said, task)
            except Exception as exc:  # a warning the user's filters make an error
                outcome = (False, exc)
            read.append(outcome)
        return read, seconds

    def take_overdue(self):
        """Take the limited fits that their engines did not stop in time.

        A fit that started more than ``fit_timeout`` plus a grace ago and has
        not replied runs compiled code that does not see the engine's signal;
        so does a fit whose engine said so (``NOT_STOPPED``), without the
        grace.
        Returns ``(again, failed)``: its task, to be sent again to fail at
        once as those the engines stopped, with the tasks of the messages
        queued behind it on its engine; and ``(task, outcome)`` of a
        pipeline prefix's fit, which fails. That engine gets the stop
        signal, and is ended and replaced if it still runs the fit one more
        ``fit_timeout`` later (``LIMIT_STUCK_GRACE_SECONDS``) and this process
        started it; the search goes on with the other engines without
        waiting for it.
        """
        if not self._started:
            return [], []
        now = time.monotonic()
        limit = self.fit_timeout + OVERDUE_GRACE_SECONDS + 0.1 * self.fit_timeout
        with self._lock:
            overdue = {}  # message id -> seconds its fit has run
            for msg_id, started in self._started.items():
                if started is None:
                    if _has_started(self._in_flight[msg_id][0]):
                        self._started[msg_id] = now
                elif now - started > limit or _not_stopped(self._in_flight[msg_id][0]):
                    overdue[msg_id] = now - started
            if not overdue:
                return [], []
            stuck = {_engine_of(self._in_flight[msg_id][0]) for msg_id in overdue}
            stuck.discard(None)
            taken = [
                msg_id
                for msg_id, entry in self._in_flight.items()
                if msg_id in overdue or _engine_of(entry[0]) in stuck
            ]
            entries = {msg_id: self._in_flight.pop(msg_id) for msg_id in taken}
            for msg_id in taken:
                self._started.pop(msg_id, None)
        again, failed = [], []
        for msg_id, (async_result, tasks, *_) in entries.items():
            if msg_id not in overdue:
                again += tasks  # queued behind: they never ran
                continue
            engine_id = _engine_of(async_result)
            hostname = self._roster.ready.get(engine_id, "unknown")
            error = fit_timeout_error(self.fit_timeout, engine_id, hostname)
            for task in tasks:
                outcome = _timed_out(task, error, overdue[msg_id])
                if outcome is TIMED_OUT:
                    again.append(task)
                else:
                    failed.append((task, outcome))
        # The engine's own signal came at the limit.
        shortest, longest = LIMIT_STUCK_GRACE_SECONDS
        self.stop(
            [entry[0] for entry in entries.values()],
            stuck_grace=min(max(self.fit_timeout, shortest), longest),
            signalled_ago=max(overdue.values()) - self.fit_timeout,
        )
        return again, failed

    def stop(
        self,
        async_results,
        end_stuck=True,
        stuck_grace=None,
        signalled_ago=0.0,
    ):
        """Abort messages still queued; stop the tasks of those running.

        The engines known to run one of the messages get ``STOP_SIGNAL``,
        which stops the tasks they run (see ``run_batch``), unless the
        message's tasks may not be stopped (``MAX_STOPS``) or the engine
        cannot take the signal. ipyparallel tells the client which engine
        runs a message once the engine says it is busy with it, within
        milliseconds of its start, so stopping waits up to
        ``STOP_WAIT_SECONDS`` for the messages neither finished nor
        signalled, which also lets the queued ones come back aborted. It
        waits for the signals to be sent, so that no task of these messages
        ends once it returns.

        A task inside a long call of compiled code sees the signal only when
        the call returns. An engine still running a signalled message
        ``STUCK_GRACE_SECONDS`` later is ended, and another started in its
        place, when it belongs to the local cluster this process started;
        on other clusters it takes new tasks once the call returns. Not
        with ``end_stuck=False``: when the controller is lost, no reply can
        come, and the engines are not stuck. ``stuck_grace``, if not None,
        replaces ``STUCK_GRACE_SECONDS``, for engines already signalled
        ``signalled_ago`` seconds ago.
        """
        if stuck_grace is None:
            stuck_grace = STUCK_GRACE_SECONDS
        with self._lock:
            ids = {ar.msg_ids[0] for ar in async_results}
            unstoppable = ids & self._unstoppable
            self._unstoppable -= ids
        pending = [ar for ar in async_results if not ar.done()]
        if not pending:
            return
        client = pending[0]._client
        # Engines that are gone, or messages just finished: nothing to stop.
        with contextlib.suppress(Exception):
            client.abort(pending, block=False)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        signalled = []
        while pending:
            running = [ar for ar in pending if self._running(ar, unstoppable)]
            engines = sorted({ar.engine_id for ar in running})
            if engines:
                with contextlib.suppress(Exception):
                    sent = client.send_signal(STOP_SIGNAL, targets=engines, block=False)
                    sent.result(timeout=max(deadline - time.monotonic(), 0.1))
                signalled += running
            pending = [ar for ar in pending if ar not in running and not ar.done()]
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if signalled and end_stuck:
            pids = dict(self._roster.pids)
            timer = threading.Timer(
                stuck_grace,
                _end_stuck_engines,
                (signalled, pids, self._connection, stuck_grace + signalled_ago),
            )
            timer.daemon = True
            timer.name = "sklearn_ipp-stuck-engines"
            timer.start()

    def _running(self, async_result, unstoppable):
        """Whether a message runs, on an engine that the stop signal stops.

        Not if its id is in ``unstoppable``.
        """
        if async_result.msg_ids[0] in unstoppable:
            return False
        engine_id = _engine_of(async_result)
        return engine_id is not None and engine_id in self._roster.stoppable


def _replay(output, task):
    """Say what a task said on its engine here, before its result is used.

    In its call's context, when Python keeps warning filters per context.
    """
    context = None if task.call is None else task.call.context
    if context is None:
        output.replay(task.caller)
    else:
        context.run(output.replay, task.caller)


def _end_stuck_engines(signalled, pids, connection, grace):
    """End the engines that a stop signal did not free, where this process may."""
    client = connection.client
    try:
        stuck = sorted({ar.engine_id for ar in signalled if not ar.done()})
        stuck = [engine_id for engine_id in stuck if engine_id in client.ids]
        if not stuck:
            return
        ended = end_stuck_engines(
            [pids.get(e) for e in stuck], client, connection.cluster
        )
    except Exception as exc:  # in a timer thread: say it, do not raise it
        logger.warning("Could not end the engines of stopped tasks: %s", exc)
        return
    for engine_id in stuck:
        if pids.get(engine_id) in ended:
            logger.warning(
                "Engine %s still ran a stopped task %.0f s after the stop signal "
                "(a call of compiled code that does not return): it was ended, "
                "and a new engine started in its place.",
                engine_id,
                grace,
            )
        else:
            logger.warning(
                "Engine %s still runs a stopped task %.0f s after the stop "
                "signal (a call of compiled code that does not return); it takes "
                "new tasks once that call returns. Restart it to free it sooner.",
                engine_id,
                grace,
            )


def _timed_out(task, error, seconds):
    """Mark ``task`` stopped at ``fit_timeout``; return its outcome.

    ``TIMED_OUT``: it is sent again to fail at once with ``error`` (see
    ``_fit_timeout``). A pipeline prefix's fit fails with it, and its
    candidates run whole.
    """
    if task.internal:
        return (False, error)
    task.timed_out = (error, seconds)
    return TIMED_OUT


def _engine_of(async_result):
    """Return the id of the engine a message went to; None if not known yet."""
    try:
        return async_result.engine_id
    except Exception:  # metadata of a message the client no longer tracks
        return None


def _has_started(async_result):
    """Whether a message's limited fits have started on their engine."""
    try:
        return bool(async_result.data.get(STARTED))
    except Exception:  # metadata of a message the client no longer tracks
        return False


def _not_stopped(async_result):
    """Whether a message's engine said its limited fit ignored the signal."""
    try:
        return bool(async_result.data.get(NOT_STOPPED))
    except Exception:  # metadata of a message the client no longer tracks
        return False


def _is_engine_loss(exc):
    """Whether a message failed because its engine died or left."""
    from ipyparallel import error as ipp_error

    if isinstance(exc, ipp_error.EngineError):
        return True
    return isinstance(exc, ipp_error.RemoteError) and exc.ename == "EngineError"


class RemoteTraceback(Exception):
    """The traceback of an exception raised on an engine."""

    def __str__(self):
        return self.args[0]


def _with_remote_traceback(exc, text):
    exc.__cause__ = RemoteTraceback(f"\n\nTraceback on the engine:\n{text}")
    return exc


def _unloadable_task_error(exc, text, async_result, hostname):
    engine = getattr(async_result, "engine_id", None)
    where = f"engine {engine} on host {hostname!r}"
    if isinstance(exc, ImportError):
        module = getattr(exc, "name", None) or str(exc)
        error = ModuleNotFoundError(
            f"The task could not be loaded on {where}: module {module!r} is not "
            f"installed there ({exc}). Install it on that host (`pip install "
            "...`) in the environment the engines run in, then restart them.",
            name=getattr(exc, "name", None),
        )
    elif isinstance(exc, FileNotFoundError) and "sklearn_ipp-" in str(exc):
        error = FileNotFoundError(
            exc.errno,
            f"The data store is not visible on {where}: {exc.filename} does not "
            "exist there. Engines must see the client's store directory: pass "
            "store_dir= a directory on a filesystem that every engine host "
            "mounts at the same path (such as NFS).",
            exc.filename,
        )
    else:
        error = RuntimeError(
            f"The task could not be loaded on {where}: {type(exc).__name__}: {exc}"
        )
    return _with_remote_traceback(error, text)
