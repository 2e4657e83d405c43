"""joblib ``Parallel`` objects sharing the backend: in turn, nested, interleaved.

joblib gives one backend instance to every ``Parallel`` of a
``parallel_config`` block, and scikit-learn holds one open around a search's
``_run_search`` while whatever runs inside it makes its own. The tests on the
cluster compare every result with scikit-learn's in this process; those
without a cluster drive ``ParallelCalls`` and the scheduler with fake parts.
"""

import collections
import contextlib
import gc
import inspect
import threading
import time
import warnings
import weakref

import numpy as np
import psutil
import pytest
from joblib import Parallel, delayed, parallel_config
from joblib._parallel_backends import FallbackToBackend
from joblib.parallel import get_active_backend
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    RandomizedSearchCV,
    cross_validate,
)
from sklearn.model_selection._search import BaseSearchCV
from sklearn.tree import DecisionTreeRegressor

from sklearn_ipp import (
    BackendStoppedError,
    ClusterNotFoundError,
    IPyParallelHalvingGridSearchCV,
    IPyParallelRandomizedSearchCV,
)
from sklearn_ipp._calls import ParallelCalls

from ._sklearn_compare import assert_same_search
from .test_scheduler import Harness, plain_tasks, wait_for

X, Y = make_classification(n_samples=100, n_informative=4, random_state=0)
# The data of the searches fitted inside others: another size, so that the
# writes of the two can be told apart.
X_INNER, Y_INNER = make_classification(n_samples=120, random_state=1)


def _negated(parallel, numbers):
    return parallel(delayed(abs)(-i) for i in numbers)


def _fail_on(value, bad):
    if value == bad:
        raise ValueError(f"task {value} failed")
    return value


# Parallel objects in every order, nested and in turn ------------------------


def test_a_parallel_used_again_after_a_nested_search_ended(client):
    with parallel_config(backend="ipyparallel", client=client):
        backend, _ = get_active_backend()
        with Parallel(n_jobs=2) as parallel:
            assert _negated(parallel, range(4)) == [0, 1, 2, 3]
            search = GridSearchCV(
                DecisionTreeRegressor(random_state=0), {"max_depth": [1, 2]}
            ).fit(X, Y)
            assert _negated(parallel, range(4, 8)) == [4, 5, 6, 7]
        n_sent = backend.n_tasks_sent
    assert n_sent >= 8 + 2 * 5  # the search's fits went to the engines too
    reference = GridSearchCV(
        DecisionTreeRegressor(random_state=0), {"max_depth": [1, 2]}, n_jobs=1
    ).fit(X, Y)
    assert_same_search(search, reference, X)


def test_parallel_objects_in_turn_nested_and_inside_each_other(client):
    with parallel_config(backend="ipyparallel", client=client):
        with Parallel(n_jobs=2) as first:
            assert _negated(first, range(3)) == [0, 1, 2]
        with Parallel(n_jobs=2) as second:
            assert _negated(second, range(3)) == [0, 1, 2]
            with Parallel(n_jobs=2) as inner:
                assert _negated(inner, range(5, 8)) == [5, 6, 7]
                # The outer one while the inner one is open, then both again.
                assert _negated(second, range(3, 6)) == [3, 4, 5]
                assert _negated(inner, range(8, 10)) == [8, 9]
            assert _negated(second, range(6, 9)) == [6, 7, 8]
            # One used without a with block, inside: configured per call.
            assert _negated(Parallel(n_jobs=2), range(2)) == [0, 1]
            assert _negated(second, range(2)) == [0, 1]
        assert _negated(Parallel(n_jobs=2), range(3)) == [0, 1, 2]


def test_an_error_inside_leaves_the_outer_parallel_working(client):
    with (
        parallel_config(backend="ipyparallel", client=client),
        Parallel(n_jobs=2) as outer,
    ):
        assert _negated(outer, range(3)) == [0, 1, 2]
        with pytest.raises(ValueError, match="task 2 failed"):
            Parallel(n_jobs=2)(delayed(_fail_on)(i, 2) for i in range(6))
        with Parallel(n_jobs=2) as inner, pytest.raises(ValueError, match="3"):
            inner(delayed(_fail_on)(i, 3) for i in range(6))
        assert _negated(outer, range(3, 6)) == [3, 4, 5]


def test_interleaved_generators_each_get_their_results(client):
    with parallel_config(backend="ipyparallel", client=client):
        first = Parallel(n_jobs=2, return_as="generator")(
            delayed(abs)(-i) for i in range(12)
        )
        second = Parallel(n_jobs=2, return_as="generator")(
            delayed(abs)(-i) for i in range(100, 112)
        )
        pairs = list(zip(first, second, strict=True))
        assert [a for a, _ in pairs] == list(range(12))
        assert [b for _, b in pairs] == list(range(100, 112))
        # One left early stops its own tasks; the other goes on to its end.
        left = Parallel(n_jobs=2, return_as="generator")(
            delayed(time.sleep)(0.05) for _ in range(40)
        )
        going_on = Parallel(n_jobs=2, return_as="generator")(
            delayed(abs)(-i) for i in range(20)
        )
        next(left)
        with pytest.warns(UserWarning, match="executed  but not used|cancelled"):
            left.close()  # joblib says what was done for nothing
        assert list(going_on) == list(range(20))


def test_cross_validate_of_a_search_and_searches_in_turn_inside_a_parallel(client):
    search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]})
    expected_scores = cross_validate(search, X, Y, n_jobs=1)["test_score"]
    expected_best = [
        clone(search).set_params(param_grid={"C": [c, 10 * c]}).fit(X, Y).best_score_
        for c in (0.01, 0.1)
    ]
    with (
        parallel_config(backend="ipyparallel", client=client),
        Parallel(n_jobs=2) as parallel,
    ):
        scores = cross_validate(search, X, Y)["test_score"]
        assert _negated(parallel, range(3)) == [0, 1, 2]
        best = [
            clone(search).set_params(param_grid={"C": [c, 10 * c]}).fit(X, Y)
            for c in (0.01, 0.1)
        ]
        assert _negated(parallel, range(3)) == [0, 1, 2]
    best = [search.best_score_ for search in best]
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-12)
    np.testing.assert_allclose(best, expected_best, rtol=1e-12)


def test_parallel_config_blocks_leave_no_connection_or_thread_behind(client):
    def block():
        with parallel_config(backend="ipyparallel"):
            backend, _ = get_active_backend()
            assert _negated(Parallel(n_jobs=2), range(3)) == [0, 1, 2]
            GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}).fit(X, Y)
        return weakref.ref(backend)

    block()
    gc.collect()
    process = psutil.Process()
    n_files, n_threads = process.num_fds(), threading.active_count()
    backends = [block() for _ in range(5)]
    gc.collect()
    # Each block's backend is collected once joblib drops it, and closes the
    # connection it opened: ipyparallel's client (about 20 sockets and a
    # thread) and the threads waiting for the cluster's processes.
    assert [backend() for backend in backends] == [None] * 5
    # zmq closes the sockets' files in its own thread, a moment later.
    wait_for(lambda: process.num_fds() < n_files + 10)
    # Threads waiting for the processes of a cluster loaded again from its
    # file (engines came or went, as after a test that killed one) are told
    # to stop, and end at their next poll, up to 30 s later.
    assert threading.active_count() - _told_to_stop() <= n_threads


def _told_to_stop():
    """Count the threads waiting for a cluster's process that were told to stop."""
    n = 0
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        # ipyparallel 8 runs the launcher's bound method; 9 wraps it in a
        # partial of its own thread class.
        for part in (target, *getattr(target, "args", ())):
            launcher = getattr(part, "__self__", None)
            event = getattr(launcher, "_stop_waiting", None)
            n += isinstance(event, threading.Event) and event.is_set()
    return n


def test_a_backend_collected_on_its_client_io_thread_closes_without_warnings(
    client,
):
    # The cyclic collector runs a dropped backend's finalizer in whatever
    # thread allocates, the backend's own client's IO thread too; the warnings
    # of a client closed there reached whatever the user ran then, such as a
    # catch_warnings block around the next search. They came when messages
    # reached the client as it closed: a few tries, with the engines busy.
    def collect_on_io_thread(its_client):
        collected = threading.Event()
        its_client._io_loop.add_callback(lambda: (gc.collect(), collected.set()))
        assert collected.wait(30)
        wait_for(lambda: its_client._closed)

    caught = []
    for _ in range(6):
        gc.disable()
        try:
            with parallel_config(backend="ipyparallel"):
                backend, _ = get_active_backend()
                assert _negated(Parallel(n_jobs=2), range(3)) == [0, 1, 2]
                its_client = backend.connection.client
            assert backend.connection.owns_client
            del backend
            with warnings.catch_warnings(record=True) as records:
                warnings.simplefilter("always")
                # Every engine's output and state reach every client.
                busy = client[:].apply_async(time.sleep, 0.05)
                collect_on_io_thread(its_client)
                busy.get(timeout=30)
                with parallel_config(backend="ipyparallel"):
                    assert _negated(Parallel(n_jobs=2), range(3)) == [0, 1, 2]
                time.sleep(0.2)
            caught += [f"{w.category.__name__}: {w.message}" for w in records]
        finally:
            gc.enable()
    assert caught == []


def test_a_backend_without_cluster_raises_its_error_as_itself():
    with (
        parallel_config(backend="ipyparallel", client="no-such-profile"),
        pytest.raises(ClusterNotFoundError, match="no-such-profile") as info,
    ):
        Parallel(n_jobs=2)(delayed(abs)(i) for i in range(2))
    # Not "during handling of" joblib's fallback to the Parallel's own calls.
    assert not isinstance(info.value.__context__, FallbackToBackend)


# Searches inside a search's _run_search ---------------------------------------


class _CustomSearchCV(BaseSearchCV):
    """scikit-learn's own test_custom_run_search, keeping what it compares."""

    def __init__(self, estimator, **kwargs):
        super().__init__(estimator, **kwargs)

    def _run_search(self, evaluate_candidates, **kwargs):
        self.first_ = evaluate_candidates([{"max_depth": 1}, {"max_depth": 2}])
        self.inner_ = GridSearchCV(
            DecisionTreeRegressor(random_state=0), {"max_depth": [1, 2]}
        ).fit(X, Y)
        evaluate_candidates([{"min_samples_split": 5}, {"min_samples_split": 10}])


def test_a_custom_run_search_fitting_a_search_between_its_calls(client):
    estimator = DecisionTreeRegressor(random_state=0)
    with parallel_config(backend="ipyparallel", client=client):
        ours = _CustomSearchCV(estimator, return_train_score=True).fit(X, Y)
    with parallel_config(backend="sequential"):
        reference = _CustomSearchCV(estimator, return_train_score=True).fit(X, Y)
    assert_same_search(ours, reference, X)
    assert_same_search(ours.inner_, reference.inner_, X)


def _nested_search_class(base):
    """``base`` with a search of other data fitted after its first call."""

    class WithNestedSearch(base):
        def _with_nested_search(self, evaluate_candidates):
            def evaluate(*args, **kwargs):
                results = evaluate_candidates(*args, **kwargs)
                if not hasattr(self, "inner_"):
                    # More candidates than the outer search has: none of
                    # them may take the outer search's place or order.
                    self.inner_ = GridSearchCV(
                        LogisticRegression(), {"C": np.logspace(-3, 3, 9)}
                    ).fit(X_INNER, Y_INNER)
                return results

            return evaluate

        # scikit-learn >= 1.9 passes its callback context to the
        # _run_search that names it.
        if "callback_ctx" in inspect.signature(base._run_search).parameters:

            def _run_search(self, evaluate_candidates, *, callback_ctx=None):
                super()._run_search(
                    self._with_nested_search(evaluate_candidates),
                    callback_ctx=callback_ctx,
                )

        else:

            def _run_search(self, evaluate_candidates):
                super()._run_search(self._with_nested_search(evaluate_candidates))

    return WithNestedSearch


def test_our_search_with_a_search_inside_keeps_its_stored_data(client, writes):
    grid = {"C": [0.1, 1, 10], "tol": [1e-3, 1e-4]}
    ours = _nested_search_class(IPyParallelHalvingGridSearchCV)(
        LogisticRegression(), grid, random_state=0, client=client
    ).fit(X, Y)
    reference = _nested_search_class(HalvingGridSearchCV)(
        LogisticRegression(), grid, random_state=0
    ).fit(X, Y)
    assert ours.n_iterations_ > 1  # rounds ran after the nested search ended
    assert_same_search(ours, reference, X)
    assert_same_search(ours.inner_, reference.inner_, X_INNER)
    # The outer search's data was stored once, as without the nested search:
    # the nested search's end did not remove it.
    assert writes.count(len(X)) == 2  # X and y, whole


def test_a_search_inside_ours_is_not_in_its_live_results(client):
    distributions = {"C": [0.01, 0.1, 1, 10, 100]}
    ours = _nested_search_class(IPyParallelRandomizedSearchCV)(
        LogisticRegression(), distributions, n_iter=3, random_state=0, client=client
    ).fit(X, Y)
    reference = _nested_search_class(RandomizedSearchCV)(
        LogisticRegression(), distributions, n_iter=3, random_state=0
    ).fit(X, Y)
    assert_same_search(ours, reference, X)
    # What the search showed while it ran: its own candidates only.
    live = ours._run.live.cv_results()
    assert list(live["params"]) == list(reference.cv_results_["params"])


# Calls the backend cannot run fail at once (no cluster) --------------------


class _FakeBackend:
    """What ParallelCalls uses of a ClusterBackend, over a fake scheduler."""

    nesting_level = 0
    inner_max_num_threads = None

    def __init__(self, harness):
        self.harness = harness
        self.folds = harness.folds
        self.held = []

    def effective_n_jobs(self, n_jobs):
        return 2

    def hold(self, calls):
        self.harness.scheduler.start()
        self.held.append(calls)
        return self.harness.scheduler

    def let_go(self, calls):
        self.held.remove(calls)
        if not self.held:
            self.harness.scheduler.pause()

    def tasks_of(self, job, items, calls):
        _, tasks = plain_tasks(len(items), job)
        return tasks, []


class _Batch:
    def __init__(self, n):
        self.items = [(abs, (-i,), {}) for i in range(n)]


def _told():
    told = []
    return told, told.append


def test_a_call_after_shutdown_fails_at_once():
    harness = Harness()
    scheduler = harness.scheduler
    scheduler.start()
    scheduler.shutdown()
    job, tasks = plain_tasks(2)
    started = time.monotonic()
    with pytest.raises(BackendStoppedError, match="shut down"):
        scheduler.submit(tasks, [])
    assert time.monotonic() - started < 1

    # Through a Parallel's calls, which joblib reaches from any thread: the
    # batch fails at once and its callback is told, raising nothing.
    backend = _FakeBackend(Harness())
    calls = ParallelCalls(backend, None)
    calls.configure(n_jobs=2)
    calls.start_call()
    calls.terminate()
    assert backend.held == []
    told, callback = _told()
    job = calls.submit(_Batch(2), callback)
    assert told == [job]
    with pytest.raises(BackendStoppedError, match="no longer holds the backend"):
        job.get(0)

    # Still holding it, after the backend was shut down (closed) under it.
    harness = Harness()
    calls = ParallelCalls(_FakeBackend(harness), None)
    calls.configure(n_jobs=2)
    calls.start_call()
    harness.scheduler.shutdown()
    told, callback = _told()
    job = calls.submit(_Batch(2), callback)
    assert told == [job]
    with pytest.raises(BackendStoppedError, match="shut down"):
        job.get(0)


def test_a_call_after_the_scheduling_thread_failed_fails_with_its_error():
    with Harness() as harness:
        broken = RuntimeError("the roster broke")
        _, tasks = plain_tasks(3)
        harness.roster.error = broken
        wait_for(lambda: not harness.scheduler._thread.is_alive())
        with pytest.raises(RuntimeError, match="roster broke"):
            harness.scheduler.submit(tasks, [])
        # A thread that ended for another reason is refused all the same.
        harness.scheduler._cancelled = None
        with pytest.raises(BackendStoppedError, match="thread has ended"):
            harness.scheduler.submit(tasks, [])


def test_tasks_queued_when_the_thread_fails_fail_with_its_error():
    with Harness() as harness:
        harness.roster.ready = {}  # nothing is sent: the tasks stay queued
        job, tasks = plain_tasks(3)
        harness.submit(tasks)
        harness.roster.error = RuntimeError("the roster broke")
        assert job.done.wait(10)
        with pytest.raises(RuntimeError, match="roster broke"):
            job.get(0)


def test_the_backend_stays_until_the_last_parallel_lets_go():
    harness = Harness()
    backend = _FakeBackend(harness)
    outer, inner = ParallelCalls(backend, None), ParallelCalls(backend, None)
    outer.configure(n_jobs=2)
    inner.configure(n_jobs=2)
    inner.terminate()
    inner.terminate()  # joblib may terminate twice after an abort
    # The outer calls still run.
    outer.start_call()
    told, callback = _told()
    job = outer.submit(_Batch(3), callback)
    with outer.retrieval_context():
        harness.answer_all(until=job.done.is_set)
    assert job.get(0) == [0, 1, 2]
    assert told == [job]
    outer.terminate()
    assert backend.held == []
    # Paused with the last: its tasks stopped, its thread waiting for the
    # next call, which does not start another.
    thread = harness.scheduler._thread
    assert harness.scheduler._paused and thread.is_alive()
    again = ParallelCalls(backend, None)
    again.configure(n_jobs=2)
    assert harness.scheduler._thread is thread and not harness.scheduler._paused
    again.terminate()
    harness.scheduler.shutdown()
    assert not thread.is_alive()


def test_one_parallels_abort_stops_its_tasks_only():
    with Harness(n_engines=1) as harness:
        backend = _FakeBackend(harness)
        aborted, other = ParallelCalls(backend, None), ParallelCalls(backend, None)
        for calls in (aborted, other):
            calls.configure(n_jobs=2)
            calls.start_call()
        harness.roster.ready = {}  # queued until both have submitted
        aborted_job = aborted.submit(_Batch(4), None)
        other_job = other.submit(_Batch(4), None)
        aborted.abort_everything(ensure_ready=True)
        with pytest.raises(BackendStoppedError, match="stopped before it ended"):
            aborted_job.get(0)
        assert not other_job.done.is_set()
        harness.roster.ready = {0: "host"}
        harness.scheduler.release()
        harness.answer_all(until=other_job.done.is_set)
        assert other_job.get(0) == [0, 1, 2, 3]
        # A message carries the tasks of one call.
        for sent in harness.messenger.sent:
            assert len({task.call.number for task in sent}) == 1


def test_folds_are_kept_while_any_parallel_holds_the_backend():
    harness = Harness()
    backend = _FakeBackend(harness)
    cleared = threading.Event()
    clear = harness.folds.clear

    def noting_clear():
        cleared.set()
        clear()

    harness.folds.clear = noting_clear
    outer, inner = ParallelCalls(backend, None), ParallelCalls(backend, None)
    outer.configure(n_jobs=2)
    inner.configure(n_jobs=2)
    inner.terminate()
    assert not cleared.is_set()
    outer.terminate()
    assert cleared.is_set()


class _FakeParallel:
    """What ParallelCalls reads of a joblib ``Parallel`` while it retrieves."""

    def __init__(self, return_generator=False, timeout=None):
        self.return_generator, self.timeout = return_generator, timeout


def _held_calls(harness, parallel):
    calls = ParallelCalls(_FakeBackend(harness), parallel)
    calls.configure(n_jobs=2)
    calls.start_call()
    return calls


def test_a_call_retrieves_once_joblib_was_told_of_every_batch():
    # joblib looks for results every 10 ms, sleeping in between: a small
    # call is over sooner when it looks once, as every batch is told.
    with Harness() as harness:
        calls = _held_calls(harness, _FakeParallel())
        told, callback = _told()
        jobs = [calls.submit(_Batch(1), callback) for _ in range(3)]
        answering = threading.Thread(
            target=harness.answer_all,
            kwargs={"until": lambda: all(job.done.is_set() for job in jobs)},
        )
        answering.start()
        with calls.retrieval_context():
            assert sorted(told, key=jobs.index) == jobs
        answering.join()
        calls.terminate()


def test_a_generator_retrieves_at_its_first_batch_and_a_failure_at_once():
    with Harness() as harness:
        calls = _held_calls(harness, _FakeParallel(return_generator=True))
        told, callback = _told()
        jobs = [calls.submit(_Batch(1), callback) for _ in range(3)]
        calls._scheduler.release()
        handle, sent = harness.next_message()
        harness.reply(handle, [(True, task.args[0]) for task in sent])
        with calls.retrieval_context():
            assert len(told) == 1
        calls.terminate()

    # A list's call retrieves as soon as joblib is told of a failure.
    with Harness() as harness:
        calls = _held_calls(harness, _FakeParallel())
        told, callback = _told()
        jobs = [calls.submit(_Batch(1), callback) for _ in range(3)]
        calls._scheduler.release()
        handle, sent = harness.next_message()
        harness.reply(handle, [(False, ValueError("first"))] * len(sent))
        with calls.retrieval_context():
            assert told == [jobs[0]] and not jobs[1].done.is_set()
        calls.terminate()


def test_a_call_with_a_timeout_retrieves_at_once():
    # joblib counts the timeout from its own first look.
    with Harness() as harness:
        harness.roster.ready = {}  # nothing is sent
        calls = _held_calls(harness, _FakeParallel(timeout=30))
        told, callback = _told()
        calls.submit(_Batch(2), callback)
        with calls.retrieval_context():
            assert told == []
        calls.terminate()


@contextlib.contextmanager
def _messages_sent(client):
    """Count the messages ``client`` sends, by type; ``ids`` of the requests."""
    sent = collections.Counter()
    sent.ids = []
    send = client.session.send

    def counting(stream, msg_or_type, *args, **kwargs):
        msg = send(stream, msg_or_type, *args, **kwargs)
        sent[msg["header"]["msg_type"]] += 1
        sent.ids.append(msg["header"]["msg_id"])
        return msg

    client.session.send = counting
    try:
        yield sent
    finally:
        client.session.send = send


def test_the_calls_of_a_block_send_their_tasks_and_set_up_nothing_again(client):
    n_engines = len(client.ids)
    four = list(range(4))
    with (
        parallel_config(backend="ipyparallel", client=client),
        _messages_sent(client) as sent,
    ):
        backend, _ = get_active_backend()
        # The first call probes the engines and learns how long its tasks
        # take; its scheduling thread serves every later call.
        assert _negated(Parallel(n_jobs=2), four) == four
        thread = backend._scheduler._thread
        per_call = []
        for _ in range(3):
            sent.clear()
            assert _negated(Parallel(n_jobs=2), four) == four
            per_call.append(dict(sent))
        # So does a managed block's, configured once for all its calls.
        with Parallel(n_jobs=2) as parallel:
            for _ in range(3):
                sent.clear()
                assert _negated(parallel, four) == four
                per_call.append(dict(sent))
        # Each call: one message per engine with its share of the 4 short
        # tasks, and nothing else (no probe, no question to the controller).
        assert per_call == [{"apply_request": min(n_engines, 4)}] * 6
        assert backend._scheduler._thread is thread and thread.is_alive()
        # The engines publish nothing of their own for the messages: the
        # client knows which engine runs one from ipyparallel's status.
        time.sleep(0.5)
        assert all(client.metadata[msg_id]["data"] == {} for msg_id in sent.ids)
