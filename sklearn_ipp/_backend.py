"""The joblib backend that runs tasks on an ipyparallel cluster.

``ClusterBackend`` is joblib's adapter, as joblib's own ``_dask.py`` backend
is: joblib hands over batches of ``(function, args, kwargs)``, which become
tasks (``_scheduler.Task``); sklearn's ``_fit_and_score`` tasks are pointed
at their stored fold (``_folds``) and looked up in the checkpoint, and the
``Scheduler`` sends them to the engines (``_messages``, ``_worker``) and
hands results back through joblib's callback. Every other task takes the
*generic path*: numpy arrays of at least ``max_nbytes`` anywhere in it are
written once into the store, keyed by their content, and sent as references
(see ``_pickling.dumps``). Each joblib ``Parallel`` makes its calls through
a ``ParallelCalls`` of its own (``_calls``), so that any number of them,
nested or in turn, share the backend.

``on_cluster`` wires a store, a progress bar and a backend around a block of
scikit-learn code (the searches, the curves and their displays);
``register_backend`` names the backend for ``parallel_backend``.
"""

import contextlib
import numbers
import threading
import weakref

from joblib import parallel_config, register_parallel_backend
from joblib._parallel_backends import FallbackToBackend
from joblib.disk import memstr_to_bytes
from joblib.parallel import get_active_backend

from ._calls import ClusterCapabilities, ParallelCalls
from ._checkpoint import KEPT_RESULTS_NOTE, SavedFits
from ._cluster import DEFAULT_TIMEOUT, resolve_cluster
from ._controller import ControllerWatch
from ._exceptions import BackendStoppedError
from ._fit_and_score import fit_and_score_arguments, split_arguments
from ._fit_timeout import check_fit_timeout
from ._folds import FoldIndex, _without_callbacks
from ._hosts import EngineLosses, EngineRoster
from ._messages import Messenger
from ._prefix import prefix_plan
from ._results import FitProgress
from ._scheduler import Scheduler, Task
from ._store import MMAP_MIN_BYTES, Store
from ._warm_start import Rounds

__all__ = ["DEFAULT_RETRIES", "ClusterBackend", "on_cluster", "register_backend"]

# Times a task is sent again after its engine died.
DEFAULT_RETRIES = 3


class _Count:
    """A count kept by one of the backend's parts; 0 before the part exists."""

    def __init__(self, part, name):
        self.part, self.name = part, name

    def __get__(self, backend, owner=None):
        if backend is None:
            return self
        part = getattr(backend, self.part)
        return 0 if part is None else getattr(part, self.name)


class ClusterBackend(ClusterCapabilities):
    """Run joblib tasks on the engines of an ipyparallel cluster.

    joblib keeps one instance for a ``parallel_config`` block and gives it
    to every ``Parallel`` made there; each makes its calls through a
    ``ParallelCalls`` of its own, and all share this backend's connection,
    store, folds and scheduling thread. Each is made once, when first
    needed, and closed with the backend: when the search or the block it
    was made for ends, or once it is collected.

    Parameters
    ----------
    client : ClusterConnection or anything resolve_cluster accepts, \
            default=None
        Where to run; resolved when joblib first configures the backend.
    store : Store or None, default=None
        Where data is written. None: a store of this backend, made at the
        first write (in ``store_dir``) and removed with the backend, so that
        an array is written once for every Parallel call of a ``with`` block.
    store_dir : str or None, default=None
        Parent directory of the backend's own store.
    max_nbytes : int, str or None, default=1 MB
        Arrays at least this large in tasks that are not sklearn's
        ``_fit_and_score`` are written to the store once and sent as
        references: a number of bytes, or joblib's notation (``"1M"``,
        ``"100K"``); None sends them inside the messages.
    max_live_folds : int, default=1
        How many folds may be stored at once when they take more than
        ``SMALL_FOLDS_BYTES`` together.
    whole_data : bool, default=False
        Store the data of sklearn's ``_fit_and_score`` tasks once, whole,
        rather than split by split, and send each task its row numbers: for
        successive halving, whose splits are new subsamples every round.
    on_progress : callable or None, default=None
        Called as ``on_progress(n_done, n_submitted)`` from the scheduling
        thread when tasks finish.
    on_result : callable or None, default=None
        Called as ``on_result(call, arguments, result)`` from the scheduling
        thread for every successful ``_fit_and_score`` task of the first
        ``Parallel`` to use the backend (a search's own), ``call`` counting
        the backend's Parallel calls. Not for the tasks of other ``Parallel``
        objects, such as a search fitted inside a custom ``_run_search``.
    candidate_position : callable or None, default=None
        ``candidate_position(candidate_index)``: the fits of candidates of
        the first ``Parallel`` to use the backend run in the order of these
        positions (see the randomized search). None: in the order they came.
    retries : int, default=3
        Times a task is sent again after the engine running it died. Errors
        raised by the task itself are never retried.
    checkpoint : DirectoryCheckpoint, MemoryCheckpoint or None, default=None
        Where each result of sklearn's ``_fit_and_score`` is saved as it
        arrives, and looked up before it is sent: a task whose result is
        there is not run again.
    check_versions : bool, default=True
        Whether engines must run the client's versions of Python,
        scikit-learn, numpy, joblib and sklearn_ipp (EngineVersionError).
    engine_wait : float or None, default=None
        Seconds to wait for engines when there are none: for the first one
        to register when the backend is first used (engines of a batch job
        still in the queue), before failing with EngineTimeoutError; and for
        one to come back when every engine was lost during a call, before
        failing with EngineLostError. None means 60.
    reuse_prefixes : bool, default=True
        Fit the leading steps of a searched ``Pipeline`` once per split for
        all the candidates that share them, where that cannot change a
        result (see :ref:`repeated-work`).
    fit_timeout : float or None, default=None
        Seconds each fit of scikit-learn's fit-and-score tasks (the
        searches, ``cross_validate``, the curves) may run on its engine. A
        fit past it is stopped and fails with
        :class:`~sklearn_ipp.FitTimeoutError`, as a fit that raised (see
        :doc:`/budgets`). None: no limit.
    **backend_kwargs
        joblib's: ``inner_max_num_threads``, the BLAS and OpenMP threads of
        each engine while it runs tasks (``parallel_config(backend=...,
        inner_max_num_threads=N)`` sets it). None: the CPUs of the engine's
        host divided by the cluster's engines there, at least 1, as loky
        does for its workers.
    """

    def __init__(
        self,
        client=None,
        store=None,
        *,
        store_dir=None,
        max_nbytes=MMAP_MIN_BYTES,
        max_live_folds=1,
        whole_data=False,
        on_progress=None,
        on_result=None,
        candidate_position=None,
        retries=DEFAULT_RETRIES,
        checkpoint=None,
        check_versions=True,
        engine_wait=None,
        reuse_prefixes=True,
        fit_timeout=None,
        **backend_kwargs,
    ):
        super().__init__(**backend_kwargs)
        self.fit_timeout = check_fit_timeout(fit_timeout)
        self.reuse_prefixes = reuse_prefixes
        # Why a searched pipeline was fitted whole, if the user can change it.
        self.prefix_note = None
        # A halving search's Rounds, once its run calls continue_rounds.
        self.rounds = None
        # What drives a search's fits while it runs, making fits of its own
        # from the first call's (see inject): asynchronous halving, proposals.
        self.driver = None
        self.store_dir = store_dir
        self.max_nbytes = _checked_max_nbytes(max_nbytes)
        self.on_progress = on_progress
        self.on_result = on_result
        self.candidate_position = candidate_position
        self.retries = retries
        self.check_versions = check_versions
        self.engine_wait = DEFAULT_TIMEOUT if engine_wait is None else engine_wait
        self.saved_fits = (
            None if checkpoint is None else SavedFits(checkpoint, self.fit_timeout)
        )
        self._resources = _Resources(client, store, store_dir, self.engine_wait)
        # What the resources lead to (the roster, ipyparallel's replies) calls
        # the backend's parts weakly: the finalizer holds the resources, and
        # a path from them to the backend would keep it from ever being
        # collected, and its connection from being closed, whenever joblib
        # drops it at the end of a parallel_config block.
        weakref.finalize(self, self._resources.close)
        self.folds = FoldIndex(
            # Looked up at each call, so that tests can count the writes.
            _WeakCalls(self).method("_write"),
            self._resources.remove,
            max_live_folds,
            whole_data=whole_data,
        )
        self._scheduler = None  # made with the roster when first held
        self._cancelled = None  # what cancel() was given
        self._messenger = None
        self._lock = threading.Lock()
        self._holders = set()  # the ParallelCalls holding the backend
        self._first_calls = None  # those of the first Parallel, a search's own
        self._closed = False

    @property
    def connection(self):
        """The ClusterConnection, resolved on first use."""
        return self._resources.connection

    @property
    def store(self):
        """The Store data is written to, made on first use if none was given."""
        return self._resources.store

    @property
    def checkpoint_keys(self):
        """Keys of this backend's fit tasks in the checkpoint."""
        return set() if self.saved_fits is None else self.saved_fits.keys

    @property
    def transfers(self):
        """Files and bytes sent to hosts that do not see the client's store.

        ``{hostname: (n_files, n_bytes)}`` for every host seen; hosts that
        read the client's store directly have ``(0, 0)``.
        """
        roster = self._resources.roster
        return {} if roster is None else roster.transfers()

    # What crossed the network and what was stored, for tests and
    # benchmarks: none of it grows with the data but the store's writes.
    n_tasks_sent = _Count("_messenger", "n_tasks_sent")
    n_fold_tasks_sent = _Count("_messenger", "n_fold_tasks_sent")  # fit tasks
    payload_bytes = _Count("_messenger", "payload_bytes")
    max_stored_bytes = _Count("folds", "max_stored_bytes")
    n_prefix_fits = _Count("folds", "n_prefix_fits")  # pipeline prefixes fitted
    n_on_prefix = _Count("_messenger", "n_on_prefix")  # fits that ran on one
    n_retried = _Count("_scheduler", "n_retried")  # after their engine died
    n_stopped = _Count("_scheduler", "n_stopped")  # by a stray stop signal

    # joblib's backend API -------------------------------------------------

    def effective_n_jobs(self, n_jobs):
        """Return the number of engines: the cluster decides the parallelism.

        At least 2: joblib runs the tasks in the calling process when told 1,
        and even a single engine should do the work, not the client.
        """
        return max(2, len(self.connection.engine_ids))

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Hand the ``Parallel`` calls of its own (joblib's fallback).

        joblib then uses that ``ParallelCalls``, which holds this backend
        until joblib terminates it.
        """
        calls = ParallelCalls(self, parallel)
        # Held here, not when joblib configures the fallback inside its
        # handler of FallbackToBackend: an error (no cluster, no engine in
        # time) is raised as itself, not "during handling of" the fallback.
        calls.configure(n_jobs, parallel)
        raise FallbackToBackend(calls)

    def submit(self, func, callback=None):
        """Refuse: joblib submits through the ``ParallelCalls`` of ``configure``."""
        raise RuntimeError(
            "ClusterBackend.configure() hands each Parallel the calls it submits "
            "through; joblib calls it before submitting."
        )

    # joblib < 1.5 requires apply_async.
    apply_async = submit

    def hold(self, calls):
        """Start the scheduling thread for ``calls``, if needed; return it.

        Raises ``BackendStoppedError`` once the backend is closed, and the
        cluster's errors (no cluster, no engine in time) as they come.
        """
        with self._lock:
            if self._closed:
                raise BackendStoppedError(
                    "The backend is closed: the search or with block it was "
                    "made for has ended. Make the call inside an open "
                    '`parallel_config(backend="ipyparallel")` block.'
                )
            if self._scheduler is None:
                self._scheduler = self._make_scheduler()
            self._scheduler.start()
            if self._first_calls is None:
                self._first_calls = calls
            if self._cancelled is not None:
                self._scheduler.stop(self._cancelled, cancel=True)
            self._holders.add(calls)
            return self._scheduler

    def let_go(self, calls):
        """Forget ``calls``; pause the scheduler when nothing holds it.

        Its tasks are stopped and its stored folds removed then; its thread,
        the engines it knows, the store and the connection stay for the
        next call, until :meth:`close` or the backend is collected.
        """
        # Under the lock: a Parallel holding the backend meanwhile would find
        # it paused. The scheduling thread never takes this lock.
        with self._lock:
            self._holders.discard(calls)
            if not self._holders and self._scheduler is not None:
                self._scheduler.pause()

    def tasks_of(self, job, items, calls):
        """Make the tasks of a joblib batch of ``calls``; return them and those saved.

        ``(tasks, saved)``: the tasks to run, and the ``(task, result)`` of
        those whose result the checkpoint has.
        """
        if self._cancelled is not None:
            raise self._cancelled
        ordered = calls is self._first_calls and self.candidate_position is not None
        tasks, saved = [], []
        for index, (function, args, kwargs) in enumerate(items):
            task = self._make_task(job, index, function, args, kwargs, ordered)
            found, result = (False, None)
            if task.split_key is not None and self.saved_fits is not None:
                found, result = self.saved_fits.look_up(task)
            if found:
                task.saved = True
                saved.append((task, result))
            else:
                if task.split_key is not None:
                    self._plan_fit(task)
                tasks.append(task)
        return tasks, saved

    def _make_scheduler(self):
        made = _WeakCalls()  # the scheduler, once made
        roster = self._resources.roster = EngineRoster(
            self.connection,
            self.store,
            self.check_versions,
            on_probe_reply=made.method("wake"),
            # The folds' data was hashed to find them: hosts that get it
            # whole name it by that hash, not by a second one.
            content_key=_WeakCalls(self.folds).method("hash"),
        )
        # The scheduling thread stays between calls: nothing it holds may
        # keep the backend alive, whose finalizer ends it (see _Resources).
        weak = _WeakCalls(self)
        self._messenger = Messenger(
            self.connection,
            roster,
            self.inner_max_num_threads,
            persist=weak.method("_persist"),
            max_nbytes=self.max_nbytes,
            on_reply=made.method("message_done"),
            fit_timeout=self.fit_timeout,
        )
        note = "" if self.saved_fits is None else KEPT_RESULTS_NOTE
        scheduler = Scheduler(
            roster,
            self._messenger,
            self.folds,
            EngineLosses(roster, self.retries, self.engine_wait, note),
            on_done=weak.method("_task_done"),
            on_progress=self.on_progress,
            controller=ControllerWatch(self.connection, note),
        )
        made.set(scheduler)
        self._resources.scheduler = scheduler
        # Probed now, the engines import scikit-learn and report their
        # versions while the client prepares the first data. Only now: the
        # probe's reply wakes the scheduler, which must exist by then.
        roster.refresh()
        return scheduler

    def abort_everything(self, ensure_ready=True):
        """Stop the tasks of every call; without ``ensure_ready``, terminate."""
        if not ensure_ready:
            self.terminate()
        elif self._scheduler is not None:
            self._scheduler.stop()

    def cancel(self, exc):
        """Fail the running call with ``exc`` now, from any thread.

        Queued tasks are dropped, running ones interrupted, and every task
        submitted from now on fails with ``exc`` too, so that joblib stops
        the call and raises it.
        """
        self._cancelled = exc  # for a call joblib has not configured yet
        if self._scheduler is not None:
            self._scheduler.stop(exc, cancel=True)

    def resume_calls(self):
        """Let calls run again after :meth:`cancel`."""
        self._cancelled = None
        if self._scheduler is not None:
            self._scheduler.resume()

    @property
    def last_call_number(self):
        """The number of the last ``Parallel`` call started (0: none)."""
        scheduler = self._scheduler
        return 0 if scheduler is None else scheduler.n_calls

    def terminate(self):
        """Shut the scheduler down whoever holds it, remove every stored fold.

        The tasks of every call still queued or running fail with
        ``BackendStoppedError``, as do the calls of ``Parallel`` objects
        that still held the backend; later ones start it again. joblib
        terminates each ``Parallel``'s ``ParallelCalls`` instead.
        """
        with self._lock:
            self._holders.clear()
            if self._scheduler is not None:
                self._scheduler.shutdown()

    def close(self):
        """Terminate, then close what this backend opened.

        That is the copies of the store on hosts without the client's
        filesystem, and the store and connection unless they were given.
        Otherwise done when the backend is garbage collected. Calls made
        after it fail at once with ``BackendStoppedError``.
        """
        with self._lock:
            self._closed = True
        self.terminate()
        self._resources.close()

    # Tasks -----------------------------------------------------------------

    def _make_task(self, job, index, function, args, kwargs, ordered):
        task = Task(job, index, function, args, kwargs)
        arguments = fit_and_score_arguments(function, args, kwargs)
        if arguments is not None:
            task.arguments = arguments
            task.split_key, task.fold, task.rows = self.folds.fold_of(arguments)
            candidate = arguments.get("candidate_progress")
            if ordered and candidate is not None:
                task.position = self.candidate_position(candidate[0])
            if ordered and self.driver is not None:
                self.driver.first_call_task(task)
        return task

    def inject(self, template, arguments, driven, job, position):
        """Queue a fit made from one of the first call's: a promotion, a proposal.

        The search's ``driver`` makes them as the first call's fits end:
        asynchronous halving a promoted candidate's fits at the next level,
        proposals a new candidate's. They are tasks of the first call, with
        ``template``'s function, run in the order of ``position`` among its
        tasks; ``driven`` is what the driver is told of each as it ends. The
        result may be in the checkpoint.
        """
        args, kwargs = split_arguments(arguments)
        task = self._make_task(job, 0, template.function, args, kwargs, False)
        task.driven = driven
        task.position = position
        found, result = False, None
        if self.saved_fits is not None:
            found, result = self.saved_fits.look_up(task)
        if found:
            task.saved = True
            tasks, saved = [], [(task, result)]
        else:
            self._plan_fit(task)
            tasks, saved = [task], []
        self._scheduler.submit(tasks, saved, template.call)

    def continue_rounds(self, estimator, resource, mode):
        """Let a halving search's fits continue the models of the round before.

        Returns the ``Rounds`` (see ``_warm_start``) that its run tells each
        new round.
        """
        self.rounds = Rounds(
            estimator, resource, mode, self.store, self._resources.remove
        )
        return self.rounds

    def _plan_fit(self, task):
        """Point a fit task at the model it continues, or at its pipeline prefix.

        A fit that continues (or saves) a model runs its pipeline whole.
        """
        if self.rounds is not None:
            context = task.arguments.get("callback_ctx")
            if context is None or _without_callbacks(task.arguments):
                task.continued = self.rounds.spec(task)
                if task.continued is not None:
                    return
        if self.reuse_prefixes:
            self._share_prefix(task)

    def _share_prefix(self, task):
        """Point a fit task at the pipeline prefix its candidate shares, if any."""
        if task.fold.pairwise:
            return
        context = task.arguments.get("callback_ctx")
        if context is not None and not _without_callbacks(task.arguments):
            return  # callbacks see every step fitted, as in scikit-learn
        plan, reason = prefix_plan(task.arguments)
        if reason is not None and self.prefix_note is None:
            self.prefix_note = reason
        if plan is not None:
            task.prefix = self.folds.prefix_of(
                task.split_key, task.fold, task.rows, plan, task.arguments
            )

    def _task_done(self, task, ok, value):
        if ok and task.arguments is not None:
            if self.saved_fits is not None and not task.saved:
                self.saved_fits.save(task, value)
            if self.on_result is not None and task.owner is self._first_calls:
                # An asynchronous halving search's fits of a level are
                # recorded as the call of that level its search makes at
                # the end.
                number = task.call.number
                driver = self.driver
                if task.driven is not None and driver is not None:
                    number += driver.call_offset(task)
                self.on_result(number, task.arguments, value)
        # Saved first: once its last fit is told, the search reads them all.
        driver = self.driver
        if task.driven is not None and driver is not None:
            driver.done(task, ok, value)

    def _write(self, obj, rows=None, columns=None):
        return self._resources.write(obj, rows, columns)

    def _persist(self, array):
        return self._resources.persist(array, self.folds.hash(array))


class _WeakCalls:
    """Calls to an object's methods that do not keep the object alive.

    Parameters
    ----------
    obj : object or None, default=None
        The object; None: one given later to :meth:`set`. Calls made while
        there is none, or once it is gone, do nothing and return None.
    """

    def __init__(self, obj=None):
        self._ref = lambda: None
        if obj is not None:
            self.set(obj)

    def set(self, obj):
        self._ref = weakref.ref(obj)

    def method(self, name):
        """Return a function calling the object's method ``name``."""

        def call(*args):
            obj = self._ref()
            return None if obj is None else getattr(obj, name)(*args)

        return call


class _Resources:
    """A backend's connection, store, roster and scheduler; closes what it opened.

    A connection or store given is used as is and left open; the ones made
    here are made on first use and closed with the backend (joblib keeps one
    backend instance for a whole ``with parallel_backend`` block), after its
    scheduling thread is shut down.
    """

    def __init__(self, client, store, store_dir, engine_wait):
        self._client, self._given_store, self._store_dir = client, store, store_dir
        self._engine_wait = engine_wait
        self._connection = self._store = self.roster = self.scheduler = None
        self._persisted = {}  # content hash -> StoredData, for the generic path

    @property
    def connection(self):
        if self._connection is None:
            self._connection = resolve_cluster(self._client, timeout=self._engine_wait)
        return self._connection

    @property
    def store(self):
        if self._given_store is not None:
            return self._given_store
        if self._store is None:
            self._store = Store(self._store_dir)
        return self._store

    def write(self, obj, rows=None, columns=None):
        """Store data and make it available on every host."""
        ref = self.store.write(obj, rows, columns)
        self.roster.add(ref, obj, rows, columns)
        return ref

    def remove(self, ref):
        self.store.remove(ref)
        self.roster.remove(ref)

    def persist(self, array, key):
        """Store a large array of a task once (by content ``key``)."""
        ref = self._persisted.get(key)
        if ref is None:
            ref = self._persisted[key] = self.write(array)
        return ref

    def close(self):
        if self.scheduler is not None:
            self.scheduler.shutdown()
        if self.roster is not None:
            self.roster.close()
        if self._store is not None:
            self._store.close()
        if self._connection is not None:
            self._connection.close()


# Wiring and registration ---------------------------------------------------


def _checked_max_nbytes(value):
    """Return ``max_nbytes`` in bytes, or None (arrays go in the messages).

    As joblib takes it: a number of bytes, a string such as ``"1M"``,
    ``"100K"`` or ``"1G"``, or None.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return memstr_to_bytes(value)
        except (ValueError, IndexError):  # IndexError: the empty string
            pass
    elif (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= 0
    ):
        return int(value)
    raise ValueError(
        f"max_nbytes={value!r} is not a size: give a number of bytes (an int, "
        "0 or more), joblib's notation such as '1M', '100K' or '1G', or None "
        "to send arrays inside the messages."
    )


@contextlib.contextmanager
def on_cluster(
    client,
    X,
    *,
    store_dir=None,
    retries=DEFAULT_RETRIES,
    verbose=0,
    checkpoint=None,
    on_progress=None,
    on_result=None,
    candidate_position=None,
    caller_backend=None,
    whole_data=False,
    reuse_prefixes=True,
    engine_wait=DEFAULT_TIMEOUT,
    delayed_bar=True,
    fit_timeout=None,
):
    """Run the ``Parallel`` calls of the block on the cluster.

    The one place where a store, a progress bar and a backend are put
    together, for the searches, the curves and their displays; they are
    closed in the reverse order when the block ends.

    Parameters
    ----------
    client : anything :func:`sklearn_ipp.resolve_cluster` accepts
        Where to run; a connection given is borrowed, not closed.
    X : array-like
        The data, to choose a store location with room for it.
    store_dir : str, path or None, default=None
        Parent directory of the store (see the searches' ``store_dir``).
    retries : int, default=3
        Times a fit is sent again when its engine dies.
    verbose : int, default=0
        Above 0 a progress bar shows at once, else after 10 s (see
        ``delayed_bar``).
    checkpoint, on_progress, on_result, candidate_position
        As in :class:`ClusterBackend`; ``on_progress`` is called besides
        the progress bar.
    caller_backend : ParallelBackendBase or None, default=None
        The backend active where the work was asked for, whose
        ``inner_max_num_threads`` applies, as with loky; None: the one
        active in this thread.
    whole_data, reuse_prefixes : bool
        As in :class:`ClusterBackend`.
    engine_wait : float, default=60
        Seconds to wait for engines when there are none, at the start and
        during the calls, as in :class:`ClusterBackend`.
    delayed_bar : bool, default=True
        Whether the bar shows after 10 s without ``verbose``. False for a
        search fitting in the background, whose bar would appear in
        whatever output is current by then: a later cell of a notebook, or
        the prompt of a terminal.
    fit_timeout : float or None, default=None
        As in :class:`ClusterBackend`.

    Yields
    ------
    backend : ClusterBackend
    """
    if caller_backend is None:
        caller_backend, _ = get_active_backend()
    progress = FitProgress(verbose, delayed=delayed_bar)

    def report_progress(n_done, n_submitted):
        if on_progress is not None:
            on_progress(n_done, n_submitted)
        progress.update(n_done, n_submitted)

    with (
        resolve_cluster(client, timeout=engine_wait) as connection,
        contextlib.closing(
            Store(store_dir, expected_nbytes=getattr(X, "nbytes", 0))
        ) as store,
        contextlib.closing(progress),
    ):
        backend = ClusterBackend(
            connection,
            store,
            on_progress=report_progress,
            on_result=on_result,
            candidate_position=candidate_position,
            whole_data=whole_data,
            reuse_prefixes=reuse_prefixes,
            retries=retries,
            engine_wait=engine_wait,
            checkpoint=checkpoint,
            fit_timeout=fit_timeout,
            inner_max_num_threads=getattr(
                caller_backend, "inner_max_num_threads", None
            ),
        )
        try:
            with parallel_config(backend=backend):
                yield backend
        finally:
            backend.close()


def register_backend(name="ipyparallel", client=None, make_default=False, **options):
    """Register sklearn_ipp's joblib backend under ``name``.

    Importing sklearn_ipp registers it as ``'ipyparallel'``, replacing
    ipyparallel's own backend of that name, which sends the data with every
    task. Inside ``with parallel_backend('ipyparallel'):`` or
    ``parallel_config(backend='ipyparallel')``, unchanged scikit-learn code
    runs on the cluster: arrays of at least ``max_nbytes`` in the tasks are
    written once per ``with`` block into a private store that the engines
    memory-map read-only, and sklearn's cross-validation tasks use the fold
    store of :class:`IPyParallelGridSearchCV`.

    Parameters
    ----------
    name : str, default="ipyparallel"
        The name to use in ``parallel_backend(name)``.
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as in :func:`sklearn_ipp.resolve_cluster`, resolved when
        the backend is first used. A backend this package connected or
        started is closed with it; a cluster it did not start is never
        stopped.
    make_default : bool, default=False
        Make it joblib's default backend.
    **options
        Options of the backend, which ``parallel_backend(name, ...)`` and
        ``parallel_config(backend=name, ...)`` can pass too (see
        :class:`sklearn_ipp._backend.ClusterBackend`):

        - ``engine_wait`` (float, default 60): seconds to wait for engines
          when there are none, for the first one to register (a batch job
          still queued) and when all were lost during a call;
        - ``retries`` (int, default 3): times a task is sent again when the
          engine running it dies;
        - ``fit_timeout`` (float or None): seconds each fit of
          scikit-learn's fit-and-score tasks may run before it is stopped
          and fails (see :doc:`/budgets`);
        - ``reuse_prefixes`` (bool, default True): fit the leading steps of
          a searched ``Pipeline`` once per split (see :ref:`repeated-work`);
        - ``store_dir`` (str or None): where the private store is made;
        - ``max_nbytes`` (int, str or None, default ``"1M"``): arrays at
          least this large are stored once and memory-mapped;
        - ``max_live_folds`` (int, default 1): large folds stored at once;
        - ``check_versions`` (bool, default True): engines must run the
          client's versions (:class:`~sklearn_ipp.EngineVersionError`);
        - ``inner_max_num_threads`` (int or None): BLAS and OpenMP threads
          per engine while it runs tasks; None divides each host's CPUs
          among its engines.

    Examples
    --------
    >>> from joblib import parallel_backend
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.svm import SVC
    >>> import sklearn_ipp  # registers 'ipyparallel'
    >>> X, y = load_iris(return_X_y=True)
    >>> with parallel_backend("ipyparallel"):  # doctest: +SKIP
    ...     cross_val_score(SVC(), X, y, n_jobs=-1)
    """
    defaults = {"client": client, **options}

    def factory(**backend_params):
        # parallel_backend(name, client=...) overrides what was registered.
        return ClusterBackend(**{**defaults, **backend_params})

    register_parallel_backend(name, factory, make_default=make_default)
