"""Unchanged scikit-learn code under ``parallel_backend('ipyparallel')``."""

import os
import re
import textwrap
import threading
import time

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_backend
from sklearn.datasets import make_classification
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    RandomizedSearchCV,
    cross_val_predict,
    cross_validate,
    learning_curve,
    validation_curve,
)

from sklearn_ipp._backend import ClusterBackend

from ._sklearn_compare import assert_same_search
from .conftest import last_json_line, run_python

X, Y = make_classification(n_samples=300, n_features=20, random_state=0)


def _on_loky(function):
    """Return ``function()`` run under loky with 2 workers, the reference."""
    with parallel_backend("loky", n_jobs=2):
        expected = function()
    return expected


def _run_on_cluster(client, function):
    with parallel_backend("ipyparallel", client=client) as (backend, _):
        assert isinstance(backend, ClusterBackend)
        result = function()
        n_tasks = backend.n_tasks_sent
    assert n_tasks > 0  # the work went to the engines
    return result


def test_importing_registers_the_backend():
    factory = joblib.parallel.BACKENDS["ipyparallel"]
    assert isinstance(factory(), ClusterBackend)


@pytest.mark.parametrize(
    "search",
    [
        GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0, 10.0]}, n_jobs=-1),
        RandomizedSearchCV(
            LogisticRegression(), {"C": [0.01, 0.1, 1, 10]}, n_iter=3, random_state=0
        ),
        HalvingGridSearchCV(
            LogisticRegression(), {"C": [0.001, 0.01, 0.1, 1, 10, 100]}, random_state=0
        ),
    ],
    ids=["grid", "randomized", "halving"],
)
def test_sklearn_searches(client, search):
    from sklearn.base import clone

    expected = _on_loky(lambda: clone(search).fit(X, Y))
    ours = _run_on_cluster(client, lambda: clone(search).fit(X, Y))
    assert_same_search(ours, expected, X)


def test_cross_validate_and_cross_val_predict(client):
    estimator = LogisticRegression()

    def run():
        scores = cross_validate(estimator, X, Y, n_jobs=-1, return_train_score=True)
        predictions = cross_val_predict(
            estimator, X, Y, n_jobs=-1, method="predict_proba"
        )
        return scores, predictions

    (expected_scores, expected_predictions) = _on_loky(run)
    scores, predictions = _run_on_cluster(client, run)
    for key in ("test_score", "train_score"):
        np.testing.assert_allclose(scores[key], expected_scores[key], rtol=1e-12)
    np.testing.assert_allclose(predictions, expected_predictions, rtol=1e-12)


def test_learning_and_validation_curves(client):
    def run():
        sizes, train, test = learning_curve(
            LogisticRegression(), X, Y, train_sizes=[0.3, 0.6, 1.0], n_jobs=-1
        )
        v_train, v_test = validation_curve(
            LogisticRegression(),
            X,
            Y,
            param_name="C",
            param_range=[0.01, 1, 100],
            n_jobs=-1,
        )
        return sizes, train, test, v_train, v_test

    for ours, expected in zip(_run_on_cluster(client, run), _on_loky(run), strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_permutation_importance_and_forests(client):
    model = LogisticRegression().fit(X, Y)

    def run():
        importance = permutation_importance(
            model, X, Y, n_repeats=4, random_state=0, n_jobs=-1
        )
        forest = RandomForestClassifier(n_estimators=12, random_state=0, n_jobs=-1).fit(
            X, Y
        )
        trees = ExtraTreesClassifier(n_estimators=12, random_state=0, n_jobs=-1).fit(
            X, Y
        )
        return importance.importances, forest.predict_proba(X), trees.predict_proba(X)

    for ours, expected in zip(_run_on_cluster(client, run), _on_loky(run), strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-12)


def _square(x):
    return x * x


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_return_as(client, return_as):
    def run():
        output = Parallel(n_jobs=-1, return_as=return_as)(
            delayed(_square)(i) for i in range(30)
        )
        return sorted(output) if return_as == "generator_unordered" else list(output)

    assert _run_on_cluster(client, run) == [i * i for i in range(30)]


def _column_sum(array, column):
    return float(np.asarray(array)[:, column].sum())


def _is_read_only_memmap(array):
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)  # a bytes object ends the chain
    return base is not None and not array.flags.writeable


def test_large_arrays_travel_once_per_with_block(client):
    big = np.random.RandomState(0).rand(2000, 200)  # 3.2 MB
    with parallel_backend("ipyparallel", client=client) as (backend, _):
        first = Parallel(n_jobs=-1)(delayed(_column_sum)(big, c) for c in range(20))
        second = Parallel(n_jobs=-1)(
            delayed(_column_sum)(big, c) for c in range(20, 40)
        )
        views = Parallel(n_jobs=-1)(
            delayed(_is_read_only_memmap)(big) for _ in range(4)
        )
        assert backend.store.n_writes == 1
        assert backend.store.bytes_written == big.nbytes
        assert backend.payload_bytes < 40 * 2000  # references, not 3.2 MB each
    np.testing.assert_allclose(first + second, big[:, :40].sum(axis=0))
    assert views == [True] * 4


def _fail_or_sleep(i):
    if i == 0:
        raise KeyError("task 0 fails on purpose")
    time.sleep(0.5)
    return i


def test_remote_errors_keep_type_message_and_traceback_and_abort_the_rest(client):
    start = time.monotonic()
    with (
        parallel_backend("ipyparallel", client=client),
        pytest.raises(KeyError) as info,
    ):
        Parallel(n_jobs=-1)(delayed(_fail_or_sleep)(i) for i in range(40))
    assert "task 0 fails on purpose" in str(info.value)
    cause = str(info.value.__cause__)
    assert "Traceback on the engine" in cause and "_fail_or_sleep" in cause
    # 39 sleeping tasks take 10 s on 2 engines: they were not all run.
    assert time.monotonic() - start < 8


_MAIN_SCRIPT = textwrap.dedent(
    """
    import json
    from joblib import Parallel, delayed, parallel_backend
    import sklearn_ipp

    def cube(x):
        return x ** 3

    with parallel_backend("ipyparallel"):
        out = Parallel(n_jobs=-1)(delayed(cube)(i) for i in range(10))
    print(json.dumps(out))
    """
)


def test_plain_parallel_with_a_function_from_main(cluster):
    completed = run_python("-c", _MAIN_SCRIPT, timeout=120)
    assert last_json_line(completed) == [i**3 for i in range(10)]
    assert not re.search(r"Traceback", completed.stderr)


def _pid_after_sleep(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_engines_joining_mid_run_get_work(cluster, client):
    before = set(client.ids)
    pids_before = set(client[:].apply_sync(os.getpid))
    started = {}

    def add_engine():
        time.sleep(1.0)
        started["set"] = cluster.start_engines_sync(1)

    adder = threading.Thread(target=add_engine)
    try:
        with parallel_backend("ipyparallel", client=client) as (backend, _):
            adder.start()
            pids = Parallel(n_jobs=-1)(
                delayed(_pid_after_sleep)(0.25) for _ in range(120)
            )
            n_engines_seen = backend.effective_n_jobs(-1)
        adder.join()
        new_pids = set(pids) - pids_before
        assert len(new_pids) == 1  # the engine that joined did some of the work
        assert n_engines_seen == len(before) + 1
    finally:
        adder.join()
        if "set" in started:
            cluster.stop_engines_sync(started["set"])
        deadline = time.monotonic() + 60
        while set(client.ids) != before and time.monotonic() < deadline:
            time.sleep(0.2)
    assert set(client.ids) == before


def _frame_summary(frame):
    return float(frame["a"].sum()), list(frame.columns)


def test_arrays_inside_dataframes_travel_as_references(client):
    import pandas as pd

    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"a": rng.rand(200_000), "b": rng.rand(200_000)})  # 3.2 MB
    with parallel_backend("ipyparallel", client=client) as (backend, _):
        out = Parallel(n_jobs=-1)(delayed(_frame_summary)(frame) for _ in range(6))
        assert backend.store.n_writes >= 1
        assert backend.payload_bytes < 6 * 100_000
    assert out == [(float(frame["a"].sum()), ["a", "b"])] * 6


def _fail_after(i, seconds):
    time.sleep(seconds)
    raise ValueError(f"task {i} failed")


def test_the_error_raised_is_the_first_failing_tasks_in_order(client):
    # Task 1 fails after task 3 has failed, and task 5 first of all: a
    # sequential run raises task 1's error, and so must the cluster.
    delays = {1: 1.5, 3: 0.5, 5: 0.0}

    def tasks():
        for i in range(8):
            if i in delays:
                yield delayed(_fail_after)(i, delays[i])
            else:
                yield delayed(time.sleep)(0.05)

    for batch_size in (1, 3):
        with (
            parallel_backend("ipyparallel", client=client),
            pytest.raises(ValueError, match="task 1 failed"),
        ):
            Parallel(n_jobs=-1, batch_size=batch_size)(tasks())


def test_sklearns_error_of_the_first_failing_fit(client):
    # scikit-learn's test_cross_val_predict_decision_function_shape: every
    # fold fails with its own message, and the first fold's is expected.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import KFold
    from sklearn.svm import SVC

    X_digits, y_digits = load_digits(return_X_y=True)
    order = np.argsort(y_digits)
    X_sorted, y_sorted = X_digits[order], y_digits[order]
    estimator = SVC(kernel="linear", decision_function_shape="ovo")
    kwargs = {"cv": KFold(n_splits=3), "method": "decision_function"}
    with pytest.raises(ValueError) as theirs:
        cross_val_predict(estimator, X_sorted, y_sorted, **kwargs)
    with parallel_backend("ipyparallel", client=client):
        for _ in range(3):
            with pytest.raises(ValueError) as ours:
                cross_val_predict(estimator, X_sorted, y_sorted, **kwargs)
            assert str(ours.value) == str(theirs.value)


def test_a_search_inside_a_task_runs_on_its_engine(client):
    from sklearn.svm import SVC

    from sklearn_ipp import IPyParallelGridSearchCV

    # scikit-learn's test_cross_validate_many_jobs: each fold's search runs
    # where its task runs, instead of waiting for engines the outer tasks
    # keep busy.
    search = IPyParallelGridSearchCV(SVC(gamma="auto"), {"C": [1, 10]}, cv=3)
    with parallel_backend("ipyparallel", client=client):
        ours = cross_validate(search, X, Y, cv=3, return_estimator=True)
    reference = cross_validate(search, X, Y, cv=3, return_estimator=True)
    np.testing.assert_array_equal(ours["test_score"], reference["test_score"])
    assert [e.best_params_ for e in ours["estimator"]] == [
        e.best_params_ for e in reference["estimator"]
    ]


class KeywordOnlyError(ValueError):
    def __init__(self, *, reason):
        super().__init__(f"failed because {reason}")
        self.reason = reason


def _raise_keyword_only(i):
    raise KeywordOnlyError(reason=f"task {i} says so")


def test_errors_that_do_not_unpickle_by_their_args_arrive_whole(client):
    with (
        parallel_backend("ipyparallel", client=client),
        pytest.raises(KeywordOnlyError, match="failed because task 0 says so") as info,
    ):
        Parallel(n_jobs=-1)(delayed(_raise_keyword_only)(i) for i in range(2))
    assert info.value.reason == "task 0 says so"
