"""The BLAS and OpenMP pools of the engines while they run fits."""

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.model_selection import cross_validate
from threadpoolctl import threadpool_info, threadpool_limits

import sklearn_ipp
from sklearn_ipp import IPyParallelGridSearchCV
from sklearn_ipp._hosts import EngineRoster
from sklearn_ipp._threads import (
    THREAD_VARIABLES,
    thread_environment,
    threads_per_engine,
)

from .conftest import on_engine

X, Y = make_classification(n_samples=60, random_state=0)

# Engines' own limit before and after our tasks: no default would give it.
ENGINE_OWN_THREADS = 3


class ThreadCountingClassifier(ClassifierMixin, BaseEstimator):
    """Records the threads its fit may use, as scikit-learn's code sees them.

    OpenMP as HistGradientBoosting asks (``_openmp_effective_n_threads``),
    BLAS as threadpoolctl reports numpy's library.
    """

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        self.classes_ = np.unique(y)
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        self.threads_ = {"openmp": _openmp_effective_n_threads(), "blas": max(blas)}
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def _openmp_threads(estimator, X, y):
    return estimator.threads_["openmp"]


def _blas_threads(estimator, X, y):
    return estimator.threads_["blas"]


SCORING = {"openmp": _openmp_threads, "blas": _blas_threads}


@on_engine
def __set_engine_threads(limits):
    """Set the engine's pools for good, as a user's %px would; return them all.

    Loads first every library the fits of these tests load, so that the
    pools before and after a search are the same ones.
    """
    import sklearn.ensemble  # noqa: F401  (OpenMP)
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits)
    # Read back in the same call: OpenBLAS was seen to drop a limit set in
    # the call that first loads threadpoolctl when nothing reads it there.
    return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info())


@on_engine
def __engine_pools():
    from threadpoolctl import threadpool_info

    return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info())


@pytest.fixture
def engines_with_own_limits(client):
    """Engines whose pools the user set to ENGINE_OWN_THREADS; yield them."""
    view = client[:]
    original = view.apply_sync(__set_engine_threads, None)  # loads, sets nothing
    pools = view.apply_sync(__set_engine_threads, ENGINE_OWN_THREADS)
    assert all(n == ENGINE_OWN_THREADS for engine in pools for _, n in engine), pools
    yield pools
    # The next tests get the engines' pools as they were.
    for engine_id, engine_pools in zip(client.ids, original, strict=True):
        client[engine_id].apply_sync(__set_engine_threads, dict(engine_pools))


def _expected_threads(client):
    facts = sklearn_ipp.engine_facts(client)
    hosts = [fact["hostname"] for fact in facts.values()]
    return {
        threads_per_engine(fact["n_cpus"], hosts.count(fact["hostname"]))
        for fact in facts.values()
    }


def _search_threads(client):
    search = IPyParallelGridSearchCV(
        ThreadCountingClassifier(),
        {"C": [1.0, 2.0, 3.0]},
        scoring=SCORING,
        refit=False,
        cv=3,
        client=client,
    )
    search.fit(X, Y)
    return {
        api: {
            search.cv_results_[f"split{i}_test_{api}"][j]
            for i in range(3)
            for j in range(3)
        }
        for api in SCORING
    }


def test_search_fits_get_cpus_per_engine_and_engines_keep_their_limits(
    client, engines_with_own_limits
):
    expected = _expected_threads(client)
    assert _search_threads(client) == {"openmp": expected, "blas": expected}
    assert client[:].apply_sync(__engine_pools) == engines_with_own_limits


def test_inner_max_num_threads_sets_the_threads_of_the_fits(
    client, engines_with_own_limits
):
    # As with loky: the caller's parallel_config decides.
    with parallel_config(backend="loky", inner_max_num_threads=2):
        assert _search_threads(client) == {"openmp": {2}, "blas": {2}}
    assert client[:].apply_sync(__engine_pools) == engines_with_own_limits


@pytest.mark.parametrize("inner_max_num_threads", [None, 2])
def test_backend_and_curves_limit_the_threads_too(
    client, engines_with_own_limits, inner_max_num_threads
):
    expected = inner_max_num_threads or _expected_threads(client).pop()
    with parallel_config(
        backend="ipyparallel",
        client=client,
        inner_max_num_threads=inner_max_num_threads,
    ):
        scores = cross_validate(ThreadCountingClassifier(), X, Y, scoring=SCORING)
    assert set(scores["test_openmp"]) == set(scores["test_blas"]) == {expected}
    # The curves take it from the caller's configuration, as the searches.
    with parallel_config(backend="loky", inner_max_num_threads=inner_max_num_threads):
        _, _, test = sklearn_ipp.learning_curve(
            ThreadCountingClassifier(),
            X,
            Y,
            train_sizes=[0.5, 1.0],
            cv=3,
            scoring=_openmp_threads,
            client=client,
        )
    assert set(np.ravel(test)) == {expected}
    assert client[:].apply_sync(__engine_pools) == engines_with_own_limits


def test_threads_per_engine_is_loky_rule():
    assert threads_per_engine(8, 2) == 4
    assert threads_per_engine(8, 3) == 2
    assert threads_per_engine(2, 4) == 1
    assert threads_per_engine(4, 0) == 4


class _FakeProbe:
    def __init__(self, facts):
        self.facts = facts

    def get_dict(self):
        return self.facts


class _FakeConnection:
    def __init__(self, engine_ids):
        self.engine_ids = engine_ids


def _fact(hostname, n_cpus):
    return {"hostname": hostname, "sees_store": True, "n_cpus": n_cpus}


def test_thread_limits_follow_engines_joining_and_leaving():
    connection = _FakeConnection([0, 1, 2])
    roster = EngineRoster(connection, store=None, check_versions=False)
    roster._seen.update(range(6))  # no probe is sent for these
    roster._admit(_FakeProbe({0: _fact("a", 12), 1: _fact("a", 12), 2: _fact("b", 4)}))
    assert roster.thread_limits() == {"a": 6, "b": 4}
    roster._admit(_FakeProbe({3: _fact("a", 12), 4: _fact("b", 4)}))
    connection.engine_ids = [0, 1, 2, 3, 4]
    assert roster.thread_limits() == {"a": 4, "b": 2}
    connection.engine_ids = [0, 2, 3]  # engines 1 and 4 left
    roster.refresh()
    assert roster.thread_limits() == {"a": 6, "b": 4}
    # joblib's inner_max_num_threads, when given, is what every engine gets.
    assert roster.thread_limits(3) == {"a": 3, "b": 3}


def test_thread_environment_keeps_what_the_user_set():
    variables = thread_environment(10**6, environ={"OMP_NUM_THREADS": "5"})
    assert "OMP_NUM_THREADS" not in variables
    others = THREAD_VARIABLES[1:]
    assert {name: variables[name] for name in others} == dict.fromkeys(others, "1")
    assert variables["TBB_ENABLE_IPC"] == "1"
    assert thread_environment(1, environ={"TBB_ENABLE_IPC": "0"}).keys() == set(
        THREAD_VARIABLES
    )


def test_threads_of_the_client_are_untouched():
    # The limits are set on the engines only, never in the calling process.
    with threadpool_limits(ENGINE_OWN_THREADS):
        before = threadpool_info()
        thread_environment(2)
        assert threadpool_info() == before
