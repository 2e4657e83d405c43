"""The calls of one joblib ``Parallel`` on the cluster backend.

joblib keeps one backend instance for a whole ``parallel_config`` block, and
hands it to every ``Parallel`` made inside: a search's own, held open
around its ``_run_search`` (``with parallel:``), and those of whatever runs
inside it (a plain search fitted in ``_run_search``, ``cross_validate``...).
Each ``Parallel`` tells the backend when it starts and ends a call, but not
which ``Parallel`` it is. So that one ending leaves the others working,
``ClusterBackend.configure`` hands each ``Parallel`` a ``ParallelCalls`` of
its own (joblib's ``FallbackToBackend``), which keeps that ``Parallel``'s
state and shares the cluster backend's engines, store, folds and scheduler:
its tasks are the only ones its abort or end stops. What the cluster
backend sets up for its first call (the connection, the engines it probed,
the scheduling thread) serves every later call of the block.
"""

import contextlib
import contextvars
import sys
import threading

from joblib.parallel import ParallelBackendBase

from ._exceptions import BackendStoppedError
from ._output import current_warning_filters
from ._scheduler import MESSAGES_PER_ENGINE, Call, ErrorsInOrder, Job

__all__ = [
    "LOOK_AHEAD_TASKS",
    "MAX_TASKS_HANDED_OVER",
    "TASKS_PER_ENGINE",
    "ClusterCapabilities",
    "ParallelCalls",
]

# The most of a search's fit tasks asked for beyond joblib's window before
# the first is sent (see ParallelCalls._look_ahead); each is a few
# references and the candidate's parameters.
LOOK_AHEAD_TASKS = 100_000

# Tasks per engine that a call with joblib's default window keeps handed over
# (see ParallelCalls._look_ahead): short tasks then share messages (see
# TaskQueues._message_size) instead of going one per message as they come;
# each message costs milliseconds of CPU, on the engines' hosts too. At most
# MAX_TASKS_HANDED_OVER in all, as each task's arguments wait in the client:
# on a large cluster joblib's own window is wide enough.
TASKS_PER_ENGINE = 32
MAX_TASKS_HANDED_OVER = 256


class ClusterCapabilities(ParallelBackendBase):
    """What joblib may ask of the cluster backend, and of each ``Parallel``'s part.

    joblib reads these on the backend it was given and on the
    ``ParallelCalls`` it falls back to: they must say the same.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_timeout = True
    supports_sharedmem = False
    default_n_jobs = -1


class ParallelCalls(ClusterCapabilities):
    """What one joblib ``Parallel`` uses of a ``ClusterBackend``.

    Parameters
    ----------
    backend : ClusterBackend
        Whose engines, store, folds and scheduler the calls use.
    parallel : joblib.Parallel
        The ``Parallel`` whose calls these are.
    """

    def __init__(self, backend, parallel):
        super().__init__(
            nesting_level=backend.nesting_level,
            inner_max_num_threads=backend.inner_max_num_threads,
        )
        self.backend = backend
        self.parallel = parallel
        self._scheduler = None  # while this Parallel holds the backend
        self._call = None  # the running call's
        self._in_order = ErrorsInOrder()
        # The batches of the running call that joblib was not told of yet,
        # and how many it was, failed or not (see _wait_for_results).
        self._told = threading.Condition()
        self._n_untold = self._n_told = self._n_failed = 0

    # joblib's backend API -------------------------------------------------

    def effective_n_jobs(self, n_jobs):
        """Return the cluster backend's number of workers (its engines)."""
        return self.backend.effective_n_jobs(n_jobs)

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Hold the cluster backend until :meth:`terminate`.

        joblib configures a ``Parallel`` used in a ``with`` block once, on
        entering it, and others at every call. Returns how many tasks to
        keep going: ``MESSAGES_PER_ENGINE`` per engine, the messages the
        backend keeps in flight, rather than the number of engines: joblib
        sizes its ``pre_dispatch`` window with it (see also
        :meth:`_look_ahead`).
        """
        if parallel is not None:
            self.parallel = parallel
        if self._scheduler is None:
            self._scheduler = self.backend.hold(self)
        return MESSAGES_PER_ENGINE * self.effective_n_jobs(n_jobs)

    def start_call(self):
        """Open a call; hold sending until joblib has handed over its tasks.

        The tasks run under the warning filters in force here.
        """
        # The batches of an earlier call that was aborted may never finish:
        # each call's errors are ordered among its own batches only.
        self._in_order = ErrorsInOrder()
        with self._told:
            self._n_untold = self._n_told = self._n_failed = 0
        call = Call(self, current_warning_filters())
        if getattr(sys.flags, "context_aware_warnings", False):
            # Warnings filters and catch_warnings blocks live in the caller's
            # context: the tasks' warnings are issued again there.
            call.context = contextvars.copy_context()
        if self._scheduler is not None:
            self._call = self._scheduler.start_call(call)

    def compute_batch_size(self):
        """Return 1: the backend packs tasks into messages itself."""
        return 1

    def submit(self, func, callback=None):
        """Queue a joblib batch; ``callback`` runs when all its tasks are done.

        Never raises: a batch that cannot be queued (the backend was shut
        down or cancelled, its thread ended) fails at once with the reason,
        which joblib raises in the caller's thread, even when it submits
        from a callback.
        """
        items = list(func.items) if hasattr(func, "items") else [(func, (), {})]
        if callback is not None:
            callback = self._counted(callback)
        job = Job(len(items), self._in_order.callback(callback))
        try:
            if self._scheduler is None:
                raise BackendStoppedError(
                    "This Parallel no longer holds the backend: its call or "
                    "its with block has ended."
                )
            tasks, saved = self.backend.tasks_of(job, items, self)
            self._scheduler.submit(tasks, saved, self._call)
        except Exception as exc:
            job.fail(0, exc)
            job.n_remaining = 0
            job.done.set()
            if job.callback is not None:
                job.callback(job)
        return job

    # joblib < 1.5 calls apply_async instead of submit.
    apply_async = submit

    def _counted(self, callback):
        """Return ``callback``, counting the batches joblib is told of."""
        told = self._told
        with told:
            self._n_untold += 1

        def tell(job):
            try:
                # joblib's callback, which submits the next batch first.
                callback(job)
            finally:
                with told:
                    self._n_untold -= 1
                    self._n_told += 1
                    self._n_failed += job.exception is not None
                    told.notify_all()

        return tell

    def retrieve_result_callback(self, out):
        """Return the results of a finished batch, or raise its error."""
        return out.get()

    @contextlib.contextmanager
    def retrieval_context(self):
        """Send tasks only once joblib has handed over its first batches.

        joblib enters this after dispatching what ``pre_dispatch`` allows, so
        the scheduler sees the whole queue and can order it fold by fold.
        For a search, the rest of its fit tasks are asked for first (see
        :meth:`_look_ahead`).
        """
        self._look_ahead()
        if self._scheduler is not None:
            self._scheduler.release()
            self._wait_for_results()
        yield

    def _wait_for_results(self):
        """Wait for the results joblib's retrieval would wait for first.

        joblib looks for finished batches every 10 ms, sleeping in between,
        which is most of the time of a small call. A call that returns a
        list gives nothing before all its batches are done: this waits until
        joblib has been told of every batch submitted so far (and of those
        their callbacks submitted), or of a failure, which joblib then
        raises; a call that returns a generator, until it was told of one.
        Not for a call with a ``timeout``, which joblib counts from its own
        first look.
        """
        parallel = self.parallel
        if parallel is None or getattr(parallel, "timeout", None) is not None:
            return
        one = getattr(parallel, "return_generator", False)
        with self._told:
            while self._n_untold and not self._n_failed and not (one and self._n_told):
                # In steps, so that an interrupt is not held up.
                self._told.wait(0.1)

    def _look_ahead(self):
        """Have joblib hand over more tasks now than its window would.

        scikit-learn's searches keep joblib's default ``pre_dispatch`` of
        ``2*n_jobs``: joblib would hand over a new task only as one ends, in
        candidate order, so that the scheduler would see a few tasks of each
        split at a time and store each large split again for every few
        candidates. A fit task says how many candidates and splits its
        search has; up to ``LOOK_AHEAD_TASKS`` more of them are taken from
        joblib's iterator here, as joblib's own callbacks take them (under
        its lock, while it still iterates), before any is sent. A search's
        tasks carry references to the data, not copies.

        Other calls with joblib's default window get ``TASKS_PER_ENGINE``
        tasks per engine in it, ``MAX_TASKS_HANDED_OVER`` at most: each task
        that ends has joblib hand over the next, so that the window stays
        that wide, and short tasks share messages. A ``pre_dispatch`` of the
        caller's own is kept.
        """
        parallel = self.parallel
        lock = getattr(parallel, "_lock", None)
        if lock is None:
            return
        if self.backend.folds.n_fit_tasks_to_come() > 0:
            n_more = LOOK_AHEAD_TASKS
            more = self.backend.folds.n_fit_tasks_to_come
        elif str(getattr(parallel, "pre_dispatch", "")).replace(" ", "") == "2*n_jobs":
            n_engines = self.backend.effective_n_jobs(None)
            n_tasks = min(TASKS_PER_ENGINE * n_engines, MAX_TASKS_HANDED_OVER)
            n_more = max(0, n_tasks - self._n_untold)
            more = _always
        else:
            return
        for _ in range(n_more):
            if more() <= 0:
                return
            with lock:
                if getattr(parallel, "_original_iterator", None) is None or getattr(
                    parallel, "_aborting", False
                ):
                    return
                parallel.dispatch_next()

    def abort_everything(self, ensure_ready=True):
        """Stop this Parallel's tasks: queued ones dropped, running interrupted.

        Those of other ``Parallel`` objects on the backend go on.
        """
        if self._scheduler is not None:
            self._scheduler.stop(owner=self)
        if not ensure_ready:
            self.terminate()

    def terminate(self):
        """Let the backend go, after stopping whatever of this Parallel runs.

        joblib calls it at the end of every call of a ``Parallel`` not used
        in a ``with`` block, and at the end of the block otherwise. After an
        interrupt or an error in the client, tasks may still be queued or
        running: they are stopped, so that the engines are free for the next
        call. The backend pauses its scheduler, and removes its stored
        folds, when no ``Parallel`` holds it any more.
        """
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.stop(owner=self)
            self.backend.let_go(self)


def _always():
    return 1
