"""The joblib backend that runs tasks on an ipyparallel cluster.

joblib hands over batches of ``(function, args, kwargs)``; this backend splits
them into tasks, packs several tasks into each message to the engines (a
message costs about 5 ms, a tiny fit far less) and hands results back through
joblib's callback.

Tasks that are sklearn's ``_fit_and_score`` take the *fold path*: the data of
their cross-validation split is written once into the store as
``[train rows | test rows]`` and the task carries a reference to it plus
``train=np.arange(n_train), test=np.arange(n_train, n)``, which the stored
arrays answer with zero-copy memory-mapped views. A task whose ``train`` is
a prefix of a stored split's (learning curves) uses that split's files too.
Small folds are all stored at once and tasks run in the order they came, so
that candidates finish one after another; larger data is stored fold by
fold, and a fold's files are removed as soon as its last task is done, so that
at most ``max_live_folds`` folds take memory at a time.

Every other task takes the *generic path*: numpy arrays of at least
``max_nbytes`` anywhere in it are written once into the store, keyed by their
content, and sent as references (see ``_pickling.dumps``).

Messages go to the engines that ``_hosts.EngineRoster`` has admitted: engines
joining during a call get tasks once probed (and their host holds the data);
tasks of an engine that dies are sent again, up to ``retries`` times.

``on_cluster`` wires a store, a progress bar and a backend around a block of
scikit-learn code (the curves and their displays); ``register_backend``
names the backend for ``parallel_backend``.
"""

import contextlib
import inspect
import itertools
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict, deque
from contextlib import contextmanager

import cloudpickle
import numpy as np
from ipyparallel import error as ipp_error
from joblib import parallel_config, register_parallel_backend
from joblib.parallel import ParallelBackendBase, get_active_backend
from sklearn.model_selection import _validation
from sklearn.utils.validation import _num_samples

from ._checkpoint import fit_key
from ._cluster import resolve_cluster
from ._exceptions import EngineLostError
from ._hosts import EngineRoster
from ._pickling import dumps
from ._progress import FitProgress
from ._store import MMAP_MIN_BYTES, RowRange, Store, content_hash
from ._worker import (
    INTERRUPTIBLE,
    STOP_SIGNAL,
    STOPPED,
    UNPICKLING_FAILED,
    run_batch,
)

__all__ = ["ClusterBackend", "on_cluster", "register_backend"]

logger = logging.getLogger("sklearn_ipp")

# Seconds of work to pack into one message once task durations are known:
# long enough to hide the per-message cost (10 to 20 ms through the controller
# and the engine's kernel on a busy host), short enough to balance the load.
# Messages also shrink as the queue empties (see _message_size), so the last
# ones carry one task each whatever this is.
TARGET_MESSAGE_SECONDS = 0.5
# Upper bound on tasks per message.
MAX_TASKS_PER_MESSAGE = 500
# Messages in flight per engine: one running, one queued, so that no engine
# waits for the client between two messages.
MESSAGES_PER_ENGINE = 2
# joblib hands over its first batches before it waits for results (see
# retrieval_context); should it ever not say so, tasks left this long with
# nothing new submitted are sent anyway.
HOLD_SECONDS = 0.2
# Folds are stored together while they take at most this many bytes; larger
# data is stored one fold at a time (or ``max_live_folds``), which keeps the
# memory of a big search near one copy of the data while small searches
# never wait for a fold to be written.
SMALL_FOLDS_BYTES = 256 * 2**20
# How long a call waits for engines when the cluster has none left, before
# it fails (the finished results are kept, see EngineLostError).
ENGINE_WAIT_SECONDS = 60.0
# Times a task is sent again after its engine died.
DEFAULT_RETRIES = 3
# How long stopping waits for messages that have just reached their engines
# to become interruptible, and for queued ones to come back aborted.
STOP_WAIT_SECONDS = 2.0

_FIT_AND_SCORE = _validation._fit_and_score
_FIT_AND_SCORE_SIGNATURE = inspect.signature(_FIT_AND_SCORE)


class _Job:
    """joblib's handle on one submitted batch: done when all its tasks are."""

    def __init__(self, n_tasks, callback):
        self.results = [None] * n_tasks
        self.n_remaining = n_tasks
        self.callback = callback
        self.exception = None
        self.done = threading.Event()

    def get(self, timeout=None):
        if not self.done.wait(timeout):
            raise TimeoutError("The task did not finish in time.")
        if self.exception is not None:
            raise self.exception
        return self.results


class _Task:
    __slots__ = (
        "args",
        "arguments",
        "attempts",
        "call",
        "checkpoint_key",
        "data_names",
        "fold",
        "function",
        "index",
        "job",
        "kind",
        "kwargs",
        "n_train",
        "order",
        "split_key",
    )

    def __init__(self, job, index, function, args, kwargs):
        self.job = job
        self.index = index
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.arguments = None  # _fit_and_score's arguments by name
        self.call = 0  # which Parallel call of the backend submitted it
        self.order = None  # tasks are sent in this order, fold permitting
        self.fold = None
        self.n_train = None  # the fold's first rows this task trains on
        self.kind = None  # tasks of a kind take about as long as each other
        self.attempts = 0  # times sent to an engine that then died
        self.split_key = None  # content of the data and split (_fit_and_score)
        self.data_names = None  # arguments that split_key stands for
        self.checkpoint_key = None  # see ClusterBackend._checkpoint_key

    @property
    def key(self):
        """The queue the task waits in: its fold's, or None (no fold)."""
        return self.fold.key if self.fold is not None else None


class _Fold:
    """One cross-validation split of one dataset, and its stored files."""

    def __init__(self, key, sequence, X, y, aligned_params, train, test, pairwise):
        self.key = key  # content hashes of the data and the first split seen
        self.sequence = sequence  # folds are stored in the order they came
        self.X, self.y, self.aligned_params = X, y, aligned_params
        self.test, self.pairwise = test, pairwise
        self.refs = None  # name -> StoredData, while the fold is stored
        self.n_outstanding = 0  # tasks queued or running
        self.set_train(train)

    def set_train(self, train):
        """Train on ``train``; before it is stored, a longer one may replace it."""
        self.train = train
        n_rows = len(train) + len(self.test)
        self.nbytes = _nbytes(self.X, n_rows, n_rows if self.pairwise else None)

    def train_prefix_of(self, train):
        """How the split's train rows relate to ``train``.

        "prefix" when ``train`` is a prefix of them, "extends" when they are a
        prefix of ``train``, else None.
        """
        n_own, n_other = len(self.train), len(train)
        if n_other <= n_own and np.array_equal(self.train[:n_other], train):
            return "prefix"
        if n_other > n_own and np.array_equal(train[:n_own], self.train):
            return "extends"
        return None

    def materialise(self, write):
        """Store the fold with ``write(obj, rows=None, columns=None)``."""
        rows = np.concatenate([self.train, self.test])
        # A precomputed kernel stays square, as sklearn checks it is.
        columns = rows if self.pairwise else None
        refs = {"X": write(self.X, rows, columns)}
        if self.y is not None:
            refs["y"] = write(self.y, rows)
        for name, value in self.aligned_params.items():
            refs["param:" + name] = write(value, rows)
        self.refs = refs

    def release(self, remove):
        for ref in self.refs.values():
            remove(ref)
        self.refs = None

    def rewrite(self, task):
        """Point a ``_fit_and_score`` task at the stored fold."""
        arguments = dict(task.arguments)
        n_train, n_total = task.n_train, len(self.train) + len(self.test)
        arguments["X"] = self.refs["X"]
        if self.y is not None:
            arguments["y"] = self.refs["y"]
        # Contiguous ranges, which stored arrays answer with views; sent as
        # two numbers, not as n_samples indices.
        arguments["train"] = RowRange(0, n_train)
        arguments["test"] = RowRange(len(self.train), n_total)
        if not getattr(arguments.get("callback_ctx"), "_callbacks", True):
            # scikit-learn >= 1.9 gives every task a callback context and the
            # whole search (fitted attributes included) for its callbacks;
            # with no callback registered both do nothing, so they stay here
            # instead of being pickled into every message.
            arguments["callback_ctx"] = None
            arguments["caller"] = None
        for group in ("fit_params", "score_params"):
            params = arguments.get(group)
            if params:
                arguments[group] = {
                    name: self.refs.get("param:" + name, value)
                    for name, value in params.items()
                }
        return _split_arguments(arguments)


class ClusterBackend(ParallelBackendBase):
    """Run joblib tasks on the engines of an ipyparallel cluster.

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
    max_nbytes : int, default=1 MB
        Arrays at least this large in tasks that are not sklearn's
        ``_fit_and_score`` are written to the store once and sent as
        references.
    max_live_folds : int, default=1
        How many folds may be stored at once when they take more than
        ``SMALL_FOLDS_BYTES`` together.
    on_progress : callable or None, default=None
        Called as ``on_progress(n_done, n_submitted)`` from the scheduling
        thread when tasks finish.
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
        Seconds to wait for an engine when the cluster has none left before
        failing with EngineLostError; None means ``ENGINE_WAIT_SECONDS``
        (60).
    **backend_kwargs
        joblib's: ``inner_max_num_threads``, the BLAS and OpenMP threads of
        each engine while it runs tasks (``parallel_config(backend=...,
        inner_max_num_threads=N)`` sets it). None: the CPUs of the engine's
        host divided by the cluster's engines there, at least 1, as loky
        does for its workers.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_timeout = True
    supports_sharedmem = False
    default_n_jobs = -1

    def __init__(
        self,
        client=None,
        store=None,
        *,
        store_dir=None,
        max_nbytes=MMAP_MIN_BYTES,
        max_live_folds=1,
        on_progress=None,
        retries=DEFAULT_RETRIES,
        checkpoint=None,
        check_versions=True,
        engine_wait=None,
        **backend_kwargs,
    ):
        super().__init__(**backend_kwargs)
        self._client = client
        self._given_store = store
        self.store_dir = store_dir
        self.max_nbytes = max_nbytes
        # What this backend opened itself, closed when it is garbage collected
        # (joblib keeps one instance for a whole ``with parallel_backend``).
        self._owned = _OwnedResources()
        weakref.finalize(self, self._owned.close)
        self.max_live_folds = max_live_folds
        self.on_progress = on_progress
        self.retries = retries
        self.checkpoint = checkpoint
        self.check_versions = check_versions
        self.engine_wait = ENGINE_WAIT_SECONDS if engine_wait is None else engine_wait
        # What crossed the network and what was stored, for tests and
        # benchmarks: none of it grows with the data but the store's writes.
        self.n_messages = 0
        self.n_tasks_sent = 0
        self.n_fold_tasks_sent = 0  # of which sklearn's _fit_and_score
        self.payload_bytes = 0
        self.max_stored_bytes = 0
        self.n_submitted = 0
        self.n_done = 0
        self.n_retried = 0  # tasks sent again after their engine died
        self.n_stopped = 0  # tasks sent again after a stray stop signal
        self.checkpoint_keys = set()  # keys of this backend's fit tasks
        # Whether a fit task's key is computed when it is submitted, to look
        # for a saved result, or only once it is done, to save it: decided at
        # the first fit task, by whether the checkpoint holds anything.
        self._lookup_saved = None
        self._condition = threading.Condition()
        self._completions = queue.SimpleQueue()
        self._waiting = OrderedDict()  # fold key (None: no fold) -> deque of tasks
        self._folds = {}  # fold key -> _Fold
        # Content of a task's split -> its fold; several when train sets are
        # prefixes of one another (learning curves).
        self._fold_of_split = {}
        self._folds_by_data = {}  # everything but train -> [_Fold]
        self._task_order = itertools.count()
        self._n_calls = 0
        self._unsorted = set()  # fold keys whose queue is out of order
        self._cancelled = None  # the exception that cancel() fails tasks with
        # Set by a search: candidate index -> position in the order in which
        # candidates are run (see _run_search of the randomized search).
        self.candidate_positions = None
        # Called as on_result(call, arguments, result) from the scheduling
        # thread for every successful _fit_and_score task.
        self.on_result = None
        # message id -> (AsyncResult, tasks, the engines it may run on)
        self._in_flight = {}
        self._hashes = {}  # id(array) -> (array, content hash)
        self._persisted = {}  # content hash -> StoredData, for the generic path
        self._fold_sequence = itertools.count()
        self._seconds_per_task = None
        self._seconds_by_kind = {}
        self._sending = False
        self._last_submit = time.monotonic()
        self._stopping = False
        self._thread = None
        self._view = None
        self._roster = None
        self._from_checkpoint = deque()  # (task, result) to hand back
        self._no_engines_since = None

    @property
    def connection(self):
        """The ClusterConnection, resolved on first use."""
        if self._owned.connection is None:
            self._owned.connection = resolve_cluster(self._client)
        return self._owned.connection

    @property
    def transfers(self):
        """Files and bytes sent to hosts that do not see the client's store.

        ``{hostname: (n_files, n_bytes)}`` for every host seen; hosts that
        read the client's store directly have ``(0, 0)``.
        """
        return {} if self._roster is None else self._roster.transfers()

    @property
    def store(self):
        """The Store data is written to, made on first use if none was given."""
        if self._given_store is not None:
            return self._given_store
        if self._owned.store is None:
            self._owned.store = Store(self.store_dir)
        return self._owned.store

    # joblib's backend API -------------------------------------------------

    def effective_n_jobs(self, n_jobs):
        """Return the number of engines: the cluster decides the parallelism.

        At least 2: joblib runs the tasks in the calling process when told 1,
        and even a single engine should do the work, not the client.
        """
        return max(2, self._n_engines())

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Start the scheduling thread; return how many tasks to keep going.

        That is ``MESSAGES_PER_ENGINE`` per engine, the messages this backend
        keeps in flight, rather than the number of engines: joblib sizes its
        ``pre_dispatch`` window with it, and the larger window lets the
        scheduler see tasks of the same split together.
        """
        self.parallel = parallel
        if self._roster is None:
            # Probed now, the engines import scikit-learn and report their
            # versions while the client prepares the first data.
            self._roster = self._owned.roster = EngineRoster(
                self.connection,
                self.store,
                self.check_versions,
                on_probe_reply=self._wake_scheduler,
            )
            self._roster.refresh()
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._schedule, name="sklearn_ipp-scheduler", daemon=True
            )
            self._thread.start()
        return MESSAGES_PER_ENGINE * self.effective_n_jobs(n_jobs)

    def start_call(self):
        """Hold sending until joblib has handed over this call's first tasks."""
        with self._condition:
            self._sending = False
            self._n_calls += 1

    def compute_batch_size(self):
        """Return 1: this backend packs tasks into messages itself."""
        return 1

    def submit(self, func, callback=None):
        """Queue a joblib batch; ``callback`` runs when all its tasks are done."""
        if self._cancelled is not None:
            raise self._cancelled
        items = list(func.items) if hasattr(func, "items") else [(func, (), {})]
        job = _Job(len(items), callback)
        tasks = [
            self._make_task(job, index, function, args, kwargs)
            for index, (function, args, kwargs) in enumerate(items)
        ]
        saved = [self._saved_result(task) for task in tasks]
        with self._condition:
            for task, (found, result) in zip(tasks, saved, strict=True):
                if task.fold is not None:
                    task.fold.n_outstanding += 1  # until _finish
                if found:
                    # Handed back by the scheduling thread: joblib's callback
                    # must not run inside its own dispatch.
                    self._from_checkpoint.append((task, result))
                    continue
                waiting = self._waiting.setdefault(task.key, deque())
                if waiting and waiting[-1].order > task.order:
                    self._unsorted.add(task.key)
                waiting.append(task)
            self.n_submitted += len(tasks)
            self._last_submit = time.monotonic()
            self._condition.notify_all()
        return job

    # joblib < 1.5 calls apply_async instead of submit.
    apply_async = submit

    def retrieve_result_callback(self, out):
        """Return the results of a finished batch, or raise its error."""
        return out.get()

    @contextmanager
    def retrieval_context(self):
        """Send tasks only once joblib has handed over its first batches.

        joblib enters this after dispatching what ``pre_dispatch`` allows, so
        the scheduler sees the whole queue and can order it fold by fold.
        """
        with self._condition:
            self._sending = True
            self._condition.notify_all()
        yield

    def abort_everything(self, ensure_ready=True):
        """Drop queued tasks, abort queued messages, interrupt running ones."""
        with self._condition:
            dropped = [task for tasks in self._waiting.values() for task in tasks]
            dropped += [task for task, _ in self._from_checkpoint]
            self._waiting.clear()
            self._from_checkpoint.clear()
            in_flight = list(self._in_flight.values())
            self._in_flight.clear()
            for task in dropped + [t for _, tasks, _ in in_flight for t in tasks]:
                if task.fold is not None:
                    task.fold.n_outstanding -= 1
        _stop_messages([async_result for async_result, _, _ in in_flight])
        # The scheduling thread removes the folds left without tasks.
        if not ensure_ready:
            self.terminate()

    def cancel(self, exc):
        """Fail the running call with ``exc`` now, from any thread.

        Queued tasks are dropped, running ones interrupted, and every task
        submitted from now on fails with ``exc`` too, so that joblib stops
        the call and raises it.
        """
        with self._condition:
            self._cancelled = exc
            in_flight = [ar for ar, _, _ in self._in_flight.values()]
        self._fail_everything(exc)
        _stop_messages(in_flight)

    def terminate(self):
        """Stop everything still running, remove every stored fold.

        Called at the end of every call; after an interrupt or an error in
        the client, tasks may still be queued or running: they are aborted
        and interrupted, so that the engines are free for the next call.
        """
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self.abort_everything()
        for fold in self._folds.values():
            if fold.refs is not None:
                fold.release(self._remove)
        self._folds.clear()
        self._fold_of_split.clear()
        self._folds_by_data.clear()
        self._hashes.clear()

    def close(self):
        """Terminate, then close what this backend opened.

        That is the copies of the store on hosts without the client's
        filesystem, and the store and connection unless they were given.
        Otherwise done when the backend is garbage collected.
        """
        self.terminate()
        self._owned.close()

    # Tasks -----------------------------------------------------------------

    def _make_task(self, job, index, function, args, kwargs):
        task = _Task(job, index, function, args, kwargs)
        task.call = self._n_calls
        position = 0
        target = getattr(function, "function", function)  # sklearn's _FuncWrapper
        if target is _FIT_AND_SCORE:
            task.arguments = _FIT_AND_SCORE_SIGNATURE.bind(*args, **kwargs).arguments
            split_key, task.fold, task.n_train = self._fold_of(task.arguments)
            # A candidate takes about as long on every split.
            task.kind = id(task.arguments["parameters"])
            candidate = task.arguments.get("candidate_progress")
            if self.candidate_positions is not None and candidate is not None:
                position = self.candidate_positions[candidate[0]]
            if self.checkpoint is not None:
                task.split_key = split_key
                task.data_names = {"X", "y", "train", "test", *task.fold.aligned_params}
                if self._lookup_saved is None:
                    self._lookup_saved = len(self.checkpoint) > 0
                if self._lookup_saved:
                    self._checkpoint_key(task)
        task.order = (task.call, position, next(self._task_order))
        return task

    def _checkpoint_key(self, task):
        """Return the key of a fit task's result, computed once.

        Hashing a task's arguments takes about as long as preparing the rest
        of it: left for when the task is done unless a saved result may exist,
        it does not delay the first messages of a search.
        """
        if task.checkpoint_key is None:
            task.checkpoint_key = fit_key(
                task.split_key, task.arguments, task.data_names
            )
            self.checkpoint_keys.add(task.checkpoint_key)
        return task.checkpoint_key

    def _saved_result(self, task):
        if task.checkpoint_key is None:
            return False, None
        return self.checkpoint.get(task.checkpoint_key)

    def _fold_of(self, arguments):
        X, y = arguments["X"], arguments["y"]
        train = np.asarray(arguments["train"])
        test = np.asarray(arguments["test"])
        n_samples = _num_samples(X)
        aligned = {}
        for group in ("fit_params", "score_params"):
            for name, value in (arguments.get(group) or {}).items():
                if _is_sample_aligned(value, n_samples):
                    aligned[name] = value
        pairwise = _is_pairwise(arguments["estimator"], arguments["parameters"], X)
        data_key = (
            self._hash(X),
            None if y is None else self._hash(y),
            tuple((name, self._hash(value)) for name, value in sorted(aligned.items())),
            self._hash(test),
            pairwise,
        )
        split_key = (*data_key, self._hash(train))
        with self._condition:  # the scheduling thread reads the folds too
            fold = self._fold_of_split.get(split_key)
            if fold is None and not pairwise:
                fold = self._fold_sharing_rows(data_key, train)
            if fold is None:
                sequence = next(self._fold_sequence)
                fold = _Fold(split_key, sequence, X, y, aligned, train, test, pairwise)
                self._folds[split_key] = fold
                self._folds_by_data.setdefault(data_key, []).append(fold)
            self._fold_of_split[split_key] = fold
        return split_key, fold, len(train)

    def _fold_sharing_rows(self, data_key, train):
        """Return a fold whose train rows start with ``train``, or may grow to.

        sklearn's learning curves train on prefixes of each split's train
        set: they all use one stored fold, the longest, instead of a copy of
        the data per train size.
        """
        for fold in self._folds_by_data.get(data_key, ()):
            relation = fold.train_prefix_of(train)
            if relation == "prefix":
                return fold
            if relation == "extends" and fold.refs is None:
                fold.set_train(train)
                return fold
        return None

    def _persist(self, array):
        """Store a large array of a task once; return its reference."""
        key = self._hash(array)
        ref = self._persisted.get(key)
        if ref is None:
            ref = self._persisted[key] = self._write(array)
        return ref

    def _write(self, obj, rows=None, columns=None):
        """Store data and make it available on every host."""
        ref = self.store.write(obj, rows, columns)
        self._roster.add(ref)
        return ref

    def _remove(self, ref):
        self.store.remove(ref)
        self._roster.remove(ref)

    def _hash(self, obj):
        # The same objects come back in every task of a search: hash them once.
        cached = self._hashes.get(id(obj))
        if cached is None or cached[0] is not obj:
            cached = self._hashes[id(obj)] = (obj, content_hash(obj))
        return cached[1]

    # Scheduling thread -----------------------------------------------------

    def _schedule(self):
        try:
            while True:
                with self._condition:
                    if (
                        not self._stopping
                        and not self._can_send()
                        and self._completions.empty()
                        and not self._from_checkpoint
                    ):
                        # Woken by submissions and replies; the timeout
                        # also notices engines that join or leave.
                        self._condition.wait(HOLD_SECONDS / 2)
                    if self._stopping:
                        return
                self._roster.refresh()
                self._hand_back_saved_results()
                self._handle_completions()
                self._resend_stranded()
                self._check_engines_left()
                self._release_idle_folds()
                self._send_ready()
        except BaseException as exc:  # surfaced to joblib through the jobs
            self._fail_everything(exc)

    def _can_send(self):
        held = not self._sending and time.monotonic() - self._last_submit < HOLD_SECONDS
        return (
            not held
            and self._roster is not None
            and bool(self._roster.ready)
            and any(self._waiting.values())
            and len(self._in_flight) < self._max_in_flight()
        )

    def _n_engines(self):
        return max(1, len(self.connection.engine_ids))

    def _max_in_flight(self):
        return MESSAGES_PER_ENGINE * max(1, len(self._roster.ready))

    def _check_engines_left(self):
        """Fail the call when no engine has been there for ``engine_wait`` s."""
        if self._roster.ready or self._roster.probing:
            self._no_engines_since = None
            return
        with self._condition:
            busy = any(self._waiting.values()) or self._in_flight
        if not busy:
            return
        now = time.monotonic()
        if self._no_engines_since is None:
            self._no_engines_since = now
            logger.warning(
                "No engine left; waiting up to %.0f s for engines.", self.engine_wait
            )
        if now - self._no_engines_since >= self.engine_wait:
            raise EngineLostError(
                f"Every engine of the cluster is gone, and none came back within "
                f"{self.engine_wait:.0f} s: {self.n_done} of {self.n_submitted} "
                "tasks finished. Start engines (for example `ipcluster engines "
                "--n=4` or cluster.start_engines()) and run the call again."
                + self._kept_results_note(),
                n_done=self.n_done,
                n_submitted=self.n_submitted,
            )

    def _kept_results_note(self):
        if self.checkpoint is None:
            return ""
        return (
            " The results of the fits that finished are kept, so running it "
            "again with the same data and parameters runs only the rest."
        )

    def _send_ready(self):
        while True:
            with self._condition:
                if not self._can_send():
                    return
                choice = self._choose()
            if choice is None:
                return
            if isinstance(choice, _Fold):
                # Written outside the lock: ipyparallel's thread takes it too.
                choice.materialise(self._write)
                stored = sum(f.nbytes for f in self._stored_folds())
                self.max_stored_bytes = max(self.max_stored_bytes, stored)
                continue
            self._send(choice)

    def _send(self, tasks):
        items = [self._message_item(task) for task in tasks]
        payload = dumps(items, persist=self._persist, min_nbytes=self.max_nbytes)
        if self._view is None:
            self._view = self.connection.load_balanced_view()
        # Only to engines whose host holds the data, which excludes engines
        # that joined but are not probed yet.
        targets = sorted(self._roster.ready)
        limits = self._roster.thread_limits(self.inner_max_num_threads)
        try:
            with self._view.temp_flags(targets=targets):
                async_result = self._view.apply_async(run_batch, payload, limits)
        except KeyError:
            # An engine left since the roster was last refreshed, and
            # ipyparallel no longer knows its id: send again without it.
            self._requeue(tasks)
            self._roster.refresh()
            return
        self.n_messages += 1
        self.n_tasks_sent += len(tasks)
        self.n_fold_tasks_sent += sum(task.fold is not None for task in tasks)
        self.payload_bytes += len(payload)
        with self._condition:
            self._in_flight[async_result.msg_ids[0]] = (async_result, tasks, targets)
        async_result.add_done_callback(self._on_message_done)

    def _choose(self):
        """Return the next message's tasks, a fold to store first, or None.

        A fold waiting to be stored comes first if there is room for it (see
        ``_may_store``); then the first tasks in order among those of all
        stored folds, then tasks without data.
        """
        keys = [key for key, tasks in self._waiting.items() if tasks]
        for key in self._unsorted.intersection(keys):
            self._waiting[key] = deque(sorted(self._waiting[key], key=_order))
        self._unsorted.clear()
        unstored = [self._folds[k] for k in keys if k is not None]
        unstored = [fold for fold in unstored if fold.refs is None]
        if unstored:
            # Stored while there is room, so that tasks can run in their
            # order across folds (a candidate's splits one after another).
            fold = min(unstored, key=lambda f: f.sequence)
            if self._may_store(fold):
                return fold
        # Tasks of all stored folds may share a message, so that short fits
        # fill messages even when each fold has few tasks left per engine.
        sendable = [
            k for k in keys if k is not None and self._folds[k].refs is not None
        ]
        if not sendable and None in keys:
            sendable = [None]
        if not sendable:
            return None
        queues = [self._waiting[key] for key in sendable]
        n_waiting = sum(len(waiting) for waiting in queues)
        size = min(self._message_size(n_waiting), n_waiting)
        tasks = []
        for _ in range(size):
            first = min(filter(None, queues), key=lambda waiting: waiting[0].order)
            if size == 1 and self._seconds_by_kind:
                self._longest_first(first)
            tasks.append(first.popleft())
        for key in sendable:
            if not self._waiting[key]:
                del self._waiting[key]
        return tasks

    def _stored_folds(self):
        return [fold for fold in self._folds.values() if fold.refs is not None]

    def _may_store(self, fold):
        stored = self._stored_folds()
        if not stored:
            return True
        if sum(f.nbytes for f in stored) + fold.nbytes <= SMALL_FOLDS_BYTES:
            return True
        return len(stored) < self.max_live_folds

    def _longest_first(self, waiting):
        """Move the task expected to take longest to the front.

        Started first, long tasks do not leave the other engines idle at the
        end of a fold; durations come from the same candidate on earlier folds.
        """
        expected = [self._seconds_by_kind.get(task.kind, -1.0) for task in waiting]
        longest = int(np.argmax(expected))
        if longest:
            waiting.rotate(-longest)
            task = waiting.popleft()
            waiting.rotate(longest)
            waiting.appendleft(task)

    def _message_size(self, n_waiting):
        """Tasks per message: enough work to hide the message cost, balanced."""
        balanced = -(-n_waiting // self._max_in_flight())
        if self._seconds_per_task is None:
            return 1
        by_time = int(TARGET_MESSAGE_SECONDS / max(self._seconds_per_task, 1e-6))
        return max(1, min(balanced, by_time, MAX_TASKS_PER_MESSAGE))

    def _message_item(self, task):
        if task.fold is None:
            return task.function, task.args, task.kwargs
        args, kwargs = task.fold.rewrite(task)
        return task.function, args, kwargs

    def _on_message_done(self, async_result):
        # Runs in ipyparallel's thread: hand over to the scheduling thread.
        self._completions.put(async_result)
        self._wake_scheduler()

    def _wake_scheduler(self):
        with self._condition:
            self._condition.notify_all()

    def _handle_completions(self):
        while True:
            try:
                async_result = self._completions.get_nowait()
            except queue.Empty:
                return
            with self._condition:
                entry = self._in_flight.pop(async_result.msg_ids[0], None)
            if entry is None:  # aborted
                continue
            _, tasks, _ = entry
            outcomes = self._outcomes(async_result, tasks)
            if outcomes is None:
                self._retry(tasks, async_result)
                continue
            stopped = []
            for task, outcome in zip(tasks, outcomes, strict=True):
                if outcome is STOPPED:
                    stopped.append(task)
                else:
                    self._finish(task, outcome)
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
                self._requeue(stopped)

    def _resend_stranded(self):
        """Send again the messages that only engines now gone could run.

        A message waits in ipyparallel's scheduler until one of its target
        engines is free; if they all died before it started, ipyparallel
        neither runs nor fails it. Its tasks never ran: they are sent again
        without counting an attempt.
        """
        alive = set(self.connection.engine_ids)
        with self._condition:
            stranded = [
                msg_id
                for msg_id, (_, _, targets) in self._in_flight.items()
                if not alive.intersection(targets)
            ]
            stranded = [self._in_flight.pop(msg_id) for msg_id in stranded]
        for _, tasks, _ in stranded:
            logger.info(
                "The engines a message was sent to are gone; sending its %d "
                "task(s) again.",
                len(tasks),
            )
            self._requeue(tasks)

    def _requeue(self, tasks):
        """Put tasks back at the front of their queues, in their order."""
        with self._condition:
            for task in reversed(tasks):
                self._waiting.setdefault(task.key, deque()).appendleft(task)
            self._condition.notify_all()

    def _retry(self, tasks, async_result):
        """Queue again the tasks of an engine that died, up to ``retries``."""
        engine_id = getattr(async_result, "engine_id", None)
        logger.warning(
            "Engine %s died while running %d task(s); sending them again.",
            engine_id,
            len(tasks),
        )
        for task in tasks:
            task.attempts += 1
        lost = [task for task in tasks if task.attempts > self.retries]
        again = [task for task in tasks if task.attempts <= self.retries]
        self._requeue(again)
        self.n_retried += len(again)
        for task in lost:
            error = EngineLostError(
                f"A task was running on an engine that died, {task.attempts} "
                f"times (retries={self.retries}), the last time engine "
                f"{engine_id}. The task itself may be what kills its engine, "
                "for example by running out of memory: check the engines' "
                "logs and memory (sklearn_ipp.hosts_free_memory())."
                + self._kept_results_note(),
                n_done=self.n_done,
                n_submitted=self.n_submitted,
            )
            self._finish(task, (False, error))

    def _outcomes(self, async_result, tasks):
        """Turn a reply into one ``(ok, result_or_exception)`` per task.

        ``STOPPED`` for the tasks a stop signal ended, and None when the
        engine died (or left) before replying.
        """
        try:
            reply = cloudpickle.loads(async_result.get())
        except BaseException as exc:  # the engine died or the message failed
            if _is_engine_loss(exc):
                return None
            return [(False, exc)] * len(tasks)
        if reply[0] == UNPICKLING_FAILED:
            _, exc, text, hostname = reply
            error = _unloadable_task_error(exc, text, async_result, hostname)
            return [(False, error)] * len(tasks)
        outcomes, seconds, _ = reply
        if STOPPED not in (outcome[0] for outcome in outcomes):
            self._record_durations(tasks, seconds)
        return [
            STOPPED
            if outcome[0] == STOPPED
            else (True, outcome[1])
            if outcome[0] is True
            else (False, _with_remote_traceback(outcome[1], outcome[2]))
            for outcome in outcomes
        ]

    def _record_durations(self, tasks, seconds):
        for task, duration in zip(tasks, seconds, strict=True):
            if task.kind is not None:
                self._seconds_by_kind[task.kind] = duration
        mean = sum(seconds) / len(seconds)
        if self._seconds_per_task is None:
            self._seconds_per_task = mean
        else:
            self._seconds_per_task = 0.7 * self._seconds_per_task + 0.3 * mean

    def _hand_back_saved_results(self):
        while True:
            with self._condition:
                if not self._from_checkpoint:
                    return
                task, result = self._from_checkpoint.popleft()
            self._finish(task, (True, result), save=False)

    def _finish(self, task, outcome, save=True):
        job = task.job
        ok, value = outcome
        # Failed fits (fit_error) run again next time: the failure may not be
        # the candidate's, such as an engine out of memory.
        if (
            ok
            and save
            and task.split_key is not None
            and not (isinstance(value, dict) and value.get("fit_error"))
        ):
            self.checkpoint.put(self._checkpoint_key(task), value)
        if ok and task.arguments is not None and self.on_result is not None:
            self.on_result(task.call, task.arguments, value)
        with self._condition:
            if task.fold is not None:
                task.fold.n_outstanding -= 1
            self.n_done += 1
            if ok:
                job.results[task.index] = value
            elif job.exception is None:
                job.exception = value
            job.n_remaining -= 1
            finished = job.n_remaining == 0
        if self.on_progress is not None:
            self.on_progress(self.n_done, self.n_submitted)
        if finished:
            job.done.set()
            if job.callback is not None:
                job.callback(job)

    def _release_idle_folds(self):
        with self._condition:
            idle = [fold for fold in self._stored_folds() if fold.n_outstanding == 0]
        for fold in idle:
            fold.release(self._remove)

    def _fail_everything(self, exc):
        with self._condition:
            tasks = [task for waiting in self._waiting.values() for task in waiting]
            tasks += [task for _, sent, _ in self._in_flight.values() for task in sent]
            self._waiting.clear()
            self._in_flight.clear()
        for task in tasks:
            self._finish(task, (False, exc))


# Wiring and registration ---------------------------------------------------


@contextlib.contextmanager
def on_cluster(client, store_dir, retries, X, sklearn_kwargs):
    """Run the ``Parallel`` calls of the block on the cluster.

    Parameters
    ----------
    client : anything :func:`sklearn_ipp.resolve_cluster` accepts
        Where to run.
    store_dir : str, path or None
        Parent directory of the store (see the searches' ``store_dir``).
    retries : int
        Times a fit is sent again when its engine dies.
    X : array-like
        The data, to choose a store location with room for it.
    sklearn_kwargs : dict
        The keyword arguments for the scikit-learn function run in the
        block. Their ``verbose`` above 0 shows a progress bar at once (else
        after 10 s); ``n_jobs`` is removed from them, since the engines
        decide the parallelism.

    Yields
    ------
    backend : ClusterBackend
    """
    sklearn_kwargs.pop("n_jobs", None)
    caller_backend, _ = get_active_backend()
    with resolve_cluster(client) as connection:
        store = Store(store_dir, expected_nbytes=getattr(X, "nbytes", 0))
        progress = FitProgress(sklearn_kwargs.get("verbose", 0))
        backend = ClusterBackend(
            connection,
            store,
            on_progress=progress.update,
            retries=retries,
            # parallel_config(inner_max_num_threads=N) applies, as with loky.
            inner_max_num_threads=getattr(
                caller_backend, "inner_max_num_threads", None
            ),
        )
        try:
            with parallel_config(backend=backend):
                yield backend
        finally:
            backend.close()
            progress.close()
            store.close()


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
        ``store_dir`` and ``max_nbytes`` of the backend (see
        :class:`sklearn_ipp._backend.ClusterBackend`); ``parallel_backend``
        can pass them too.

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


def _order(task):
    return task.order


class _OwnedResources:
    """What a backend opened itself, to close when it is garbage collected."""

    def __init__(self):
        self.connection = None
        self.store = None
        self.roster = None

    def close(self):
        if self.roster is not None:
            self.roster.close()
        if self.store is not None:
            self.store.close()
        if self.connection is not None:
            self.connection.close()


def _stop_messages(async_results):
    """Abort messages still queued; stop the tasks of those running.

    The engines known to run one of the messages get ``STOP_SIGNAL``, which
    stops the tasks they run (see ``run_batch``). The engine of a message is
    known once the message has published ``INTERRUPTIBLE``: one that has just
    reached its engine does so within milliseconds, so stopping waits up to
    ``STOP_WAIT_SECONDS`` for the messages neither finished nor signalled,
    which also lets the queued ones come back aborted. It waits for the
    signals to be sent, so that no task of these messages ends once it
    returns.
    """
    pending = [
        async_result for async_result in async_results if not async_result.done()
    ]
    if not pending:
        return
    client = pending[0]._client
    # Engines that are gone, or messages just finished: nothing left to stop.
    with contextlib.suppress(Exception):
        client.abort(pending, block=False)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while pending:
        running = [ar for ar in pending if _is_interruptible(ar)]
        engines = sorted({ar.engine_id for ar in running})
        if engines:
            with contextlib.suppress(Exception):
                sent = client.send_signal(STOP_SIGNAL, targets=engines, block=False)
                sent.result(timeout=max(deadline - time.monotonic(), 0.1))
        pending = [ar for ar in pending if ar not in running and not ar.done()]
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)


def _is_interruptible(async_result):
    """Whether a message runs its tasks, on an engine the client knows."""
    try:
        data, engine_id = async_result.data, async_result.engine_id
    except Exception:  # metadata of a message the client no longer tracks
        return False
    return bool(data.get(INTERRUPTIBLE)) and engine_id is not None


def _is_engine_loss(exc):
    """Whether a message failed because its engine died or left."""
    if isinstance(exc, ipp_error.EngineError):
        return True
    return isinstance(exc, ipp_error.RemoteError) and exc.ename == "EngineError"


def _split_arguments(arguments):
    """``_fit_and_score``'s arguments by name, back to ``(args, kwargs)``."""
    args, kwargs = [], {}
    for name, parameter in _FIT_AND_SCORE_SIGNATURE.parameters.items():
        if name not in arguments:
            continue
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
            args.append(arguments[name])
        elif parameter.kind is parameter.VAR_KEYWORD:
            kwargs.update(arguments[name])
        else:
            kwargs[name] = arguments[name]
    return tuple(args), kwargs


def _nbytes(X, n_rows, n_columns=None):
    """Bytes a fold of ``n_rows`` rows of X takes (an estimate for non-arrays)."""
    shape = getattr(X, "shape", None)
    itemsize = getattr(getattr(X, "dtype", None), "itemsize", 8)
    if shape is None or len(shape) == 0 or not shape[0]:
        return 0
    row_items = n_columns if n_columns is not None else int(np.prod(shape[1:]))
    if hasattr(X, "nnz"):  # sparse: stored entries only
        return int(X.nnz / shape[0] * n_rows * (itemsize + 4))
    return int(n_rows * row_items * itemsize)


def _is_sample_aligned(value, n_samples):
    # The rule sklearn's _check_method_params uses to split fit parameters.
    if not hasattr(value, "__len__") and not hasattr(value, "shape"):
        return False
    if np.isscalar(value) or isinstance(value, (str, bytes, dict)):
        return False
    try:
        return _num_samples(value) == n_samples
    except TypeError:
        return False


def _is_pairwise(estimator, parameters, X):
    """Whether sklearn will index X as a precomputed kernel for this task."""
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        return False  # only a square X can be pairwise: skip the clone below
    candidate = estimator
    if parameters:
        from sklearn.base import clone

        candidate = clone(estimator).set_params(**clone(parameters, safe=False))
    try:
        from sklearn.utils import get_tags  # scikit-learn >= 1.6
    except ImportError:
        from sklearn.utils._tags import _safe_tags

        return bool(_safe_tags(candidate, key="pairwise"))
    return bool(get_tags(candidate).input_tags.pairwise)


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
