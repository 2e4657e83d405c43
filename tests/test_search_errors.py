"""Bad input to the searches gets a clear error, before work is sent."""

import importlib.machinery
import pickle
import re
import sys
import textwrap
import threading

import cloudpickle
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from sklearn_ipp import IPyParallelGridSearchCV, IPyParallelRandomizedSearchCV

from .conftest import last_json_line, run_python

IRIS_X, IRIS_Y = load_iris(return_X_y=True)


class LockHolder(ClassifierMixin, BaseEstimator):
    def __init__(self, lock=None):
        self.lock = lock

    def fit(self, X, y):
        return self


def test_unpicklable_estimator_fails_before_any_task(client):
    n_sent = len(client.history)
    estimator = LockHolder(lock=threading.Lock())
    search = IPyParallelGridSearchCV(estimator, {"lock": [None]}, client=client)
    with pytest.raises(
        pickle.PicklingError,
        match=re.escape(f"The estimator {estimator!r} cannot be pickled"),
    ) as info:
        search.fit(IRIS_X, IRIS_Y)
    assert "_thread.lock" in str(info.value)
    assert len(client.history) == n_sent


def test_unpicklable_grid_value_is_named(client):
    n_sent = len(client.history)
    search = IPyParallelRandomizedSearchCV(
        LockHolder(), {"lock": [None, threading.Lock()]}, n_iter=2, client=client
    )
    with pytest.raises(
        pickle.PicklingError,
        match=re.escape("The value param_distributions['lock'][1]"),
    ):
        search.fit(IRIS_X, IRIS_Y)
    assert len(client.history) == n_sent


def test_compiled_module_missing_on_engines_names_engine_and_module(
    client, tmp_path, monkeypatch
):
    # A package with compiled code cannot be sent by value: it has to be
    # installed where the engines run.
    package = tmp_path / "client_only_compiled"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from sklearn.svm import SVC

            class ClientOnlySVC(SVC):
                pass
            """
        )
    )
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"_speedups{suffix}").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    from client_only_compiled import ClientOnlySVC

    try:
        search = IPyParallelGridSearchCV(
            ClientOnlySVC(), {"C": [1, 10]}, client=client, cv=2
        )
        with pytest.raises(ModuleNotFoundError) as info:
            search.fit(IRIS_X, IRIS_Y)
        message = str(info.value)
        assert re.search(r"could not be loaded on engine \d+ on host ", message)
        assert "module 'client_only_compiled' is not installed there" in message
        assert "client_only_compiled" not in cloudpickle.list_registry_pickle_by_value()
    finally:
        sys.modules.pop("client_only_compiled", None)


def _same_error(ours, reference, X, y):
    with pytest.raises(Exception) as theirs:
        reference.fit(X, y)
    with pytest.raises(type(theirs.value)) as our:
        ours.fit(X, y)
    # sklearn's validation names the class, and lists choices as a set whose
    # order varies between runs.
    ours_text = re.sub(r"IPyParallel(\w+SearchCV)", r"\1", str(our.value))
    assert ours_text.split(" among {")[0] == str(theirs.value).split(" among {")[0]
    return our.value


@pytest.mark.parametrize(
    "case",
    [
        "length mismatch",
        "grid not a list",
        "grid not a dict",
        "empty grid",
        "bad cv",
        "bad scoring",
        "negative n_iter",
    ],
)
def test_sklearns_own_validation_errors(client, case):
    X, y, grid, params = IRIS_X, IRIS_Y, {"C": [1, 10]}, {}
    if case == "length mismatch":
        y = IRIS_Y[:-5]
    elif case == "grid not a dict":
        grid = 5
    elif case == "grid not a list":
        grid = {"C": 1}
    elif case == "empty grid":
        grid = {"C": []}
    elif case == "bad cv":
        params = {"cv": "bad"}
    elif case == "bad scoring":
        params = {"scoring": "no-such-metric"}
    if case == "negative n_iter":
        from sklearn.model_selection import RandomizedSearchCV

        ours = IPyParallelRandomizedSearchCV(SVC(), grid, n_iter=-1, client=client)
        reference = RandomizedSearchCV(SVC(), grid, n_iter=-1)
    else:
        ours = IPyParallelGridSearchCV(SVC(), grid, client=client, **params)
        reference = GridSearchCV(SVC(), grid, **params)
    _same_error(ours, reference, X, y)


_MAIN_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn_ipp import IPyParallelGridSearchCV

    class NearestCentroid(ClassifierMixin, BaseEstimator):
        def __init__(self, shrink=0.0):
            self.shrink = shrink

        def fit(self, X, y):
            self.classes_ = np.unique(y)
            centroids = np.array([X[y == c].mean(axis=0) for c in self.classes_])
            grand_mean = X.mean(axis=0)
            self.centroids_ = (1 - self.shrink) * centroids + self.shrink * grand_mean
            return self

        def predict(self, X):
            distances = ((X[:, None, :] - self.centroids_[None]) ** 2).sum(axis=2)
            return self.classes_[distances.argmin(axis=1)]

    def shrink_penalised_accuracy(estimator, X, y):
        return float(np.mean(estimator.predict(X) == y)) - 0.01 * estimator.shrink

    X, y = load_iris(return_X_y=True)
    grid = {"shrink": [0.0, 0.3, 0.6, 0.9]}
    scoring = shrink_penalised_accuracy
    ours = IPyParallelGridSearchCV(NearestCentroid(), grid, scoring=scoring)
    reference = GridSearchCV(NearestCentroid(), grid, scoring=scoring)
    ours.fit(X, y)
    reference.fit(X, y)
    print(json.dumps({
        "ours": ours.cv_results_["mean_test_score"].tolist(),
        "reference": reference.cv_results_["mean_test_score"].tolist(),
        "best": [int(ours.best_index_), int(reference.best_index_)],
    }))
    """
)


def test_estimator_and_scorer_defined_in_main(cluster):
    # client=None: the session's cluster, found through IPYTHONDIR.
    report = last_json_line(run_python("-c", _MAIN_SCRIPT))
    assert report["ours"] == report["reference"]
    assert report["best"][0] == report["best"][1]
    assert len(set(report["ours"])) > 1


def test_verbose_shows_sklearn_output_and_a_progress_bar(client, capsys):
    search = IPyParallelGridSearchCV(
        SVC(), {"C": [1, 10]}, cv=3, verbose=1, client=client
    )
    search.fit(IRIS_X, IRIS_Y)
    captured = capsys.readouterr()
    assert "Fitting 3 folds for each of 2 candidates, totalling 6 fits" in captured.out
    assert re.search(r"fits: 100%\|.*\| 6/6", captured.err)


def test_progress_bar_in_a_log_is_drawn_a_few_times(client, capsys):
    # stderr is no terminal here, as in a log file: the bar is drawn when it
    # starts and when it ends, not at each of its 90 updates.
    search = IPyParallelGridSearchCV(
        SVC(), {"C": [0.01 * 1.4**k for k in range(30)]}, cv=3, verbose=1, client=client
    )
    search.fit(IRIS_X, IRIS_Y)
    err = capsys.readouterr().err
    assert re.search(r"fits: 100%\|.*\| 90/90", err)
    assert 2 <= err.count("fits: ") <= 3, err


def test_quiet_search_prints_nothing(client, capsys):
    IPyParallelGridSearchCV(SVC(), {"C": [1, 10]}, cv=3, client=client).fit(
        IRIS_X, IRIS_Y
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_version_skew_stops_the_search_before_any_task(client):
    from sklearn_ipp import EngineVersionError

    from .test_engines import _set_engine_version

    engine_id = client.ids[0]
    previous = client[engine_id].apply_sync(_set_engine_version, "numpy", "0.0.1")
    try:
        n_sent = len(client.history)
        search = IPyParallelGridSearchCV(SVC(), {"C": [1, 10]}, client=client)
        with pytest.raises(
            EngineVersionError, match=re.escape(f"engine {engine_id} on host")
        ):
            search.fit(IRIS_X, IRIS_Y)
        # Only the version probe, one message per engine, went out.
        assert len(client.history) - n_sent == len(client.ids)
    finally:
        client[engine_id].apply_sync(_set_engine_version, "numpy", previous)
