"""Estimators of other libraries on the engines: their threads, their results.

LightGBM sizes its threads from ``joblib.cpu_count()``, XGBoost from
OpenMP's limit, CatBoost from the host's CPUs (its ``thread_count``). On an
engine the first two get the engine's share of its host's CPUs, as
scikit-learn's own OpenMP and BLAS code does; a thread count the user gave
is kept; CatBoost is left to itself, as its results depend on its thread
count. Every search finds what scikit-learn's in-process search finds.
"""

import os

import numpy as np
from joblib import parallel_config
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV, KFold, cross_validate

from sklearn_ipp import IPyParallelGridSearchCV
from sklearn_ipp._threads import CPU_COUNT_VARIABLE

from ._sklearn_compare import assert_same_search
from .conftest import needs_library, on_engine
from .test_threads import _expected_threads

X, Y = make_classification(n_samples=300, n_features=8, random_state=0)
CV = KFold(3, shuffle=True, random_state=0)


def _share(client):
    """The threads each engine gets: its share of its host's CPUs."""
    shares = _expected_threads(client)
    assert len(shares) == 1, shares
    return shares.pop()


def _split_values(search, name):
    results = search.cv_results_
    return {
        value
        for k in range(CV.get_n_splits())
        for value in results[f"split{k}_test_{name}"]
    }


@on_engine
def __cpu_count_variable():
    import os

    return os.environ.get("LOKY_MAX_CPU_COUNT")


@on_engine
def __set_cpu_count_variable(value):
    """Set the engine's LOKY_MAX_CPU_COUNT; return LightGBM's count under it."""
    import os

    import joblib

    if value is None:
        os.environ.pop("LOKY_MAX_CPU_COUNT", None)
    else:
        os.environ["LOKY_MAX_CPU_COUNT"] = value
    return joblib.cpu_count(only_physical_cores=True)


# LightGBM: the number of threads its fit ran with, as it passed it to its
# library (``num_threads``, from ``n_jobs``).
def _lightgbm_threads(estimator, X, y):
    return estimator.booster_.params["num_threads"]


LIGHTGBM_SCORING = {"accuracy": "accuracy", "threads": _lightgbm_threads}


def _lightgbm(**params):
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=10, deterministic=True, verbose=-1, **params)


def _lightgbm_search(estimator, client):
    return IPyParallelGridSearchCV(
        estimator,
        {"num_leaves": [7, 15]},
        scoring=LIGHTGBM_SCORING,
        refit="accuracy",
        cv=CV,
        client=client,
    )


def test_lightgbm_fits_get_the_engine_share_and_find_sklearn_results(client):
    share = _share(client)
    # The client's own view of the CPUs is not touched.
    assert CPU_COUNT_VARIABLE not in os.environ
    search = _lightgbm_search(_lightgbm(), client)
    reference = GridSearchCV(
        _lightgbm(),
        {"num_leaves": [7, 15]},
        scoring=LIGHTGBM_SCORING,
        refit="accuracy",
        cv=CV,
    )
    search.fit(X, Y)
    reference.fit(X, Y)
    assert _split_values(search, "threads") == {share}
    # In-process, LightGBM takes every core: the scores alone must agree.
    for key in [k for k in reference.cv_results_ if "threads" in k]:
        del search.cv_results_[key], reference.cv_results_[key]
    assert_same_search(search, reference)
    # Between tasks, the engines see the CPUs they saw before.
    assert client[:].apply_sync(__cpu_count_variable) == [None] * len(client.ids)
    assert CPU_COUNT_VARIABLE not in os.environ


def test_lightgbm_keeps_the_user_thread_settings(client):
    # An explicit n_jobs is the user's choice.
    search = _lightgbm_search(_lightgbm(n_jobs=3), client).fit(X, Y)
    assert _split_values(search, "threads") == {3}
    # So is a limit set on the engines themselves (by the user, as a %px
    # would): joblib's count under it, here the host's cores, not the share.
    counts = set(client[:].apply_sync(__set_cpu_count_variable, "64"))
    try:
        search = _lightgbm_search(_lightgbm(), client).fit(X, Y)
    finally:
        client[:].apply_sync(__set_cpu_count_variable, None)
    assert _split_values(search, "threads") == counts


def test_lightgbm_under_the_backend_gets_the_engine_share(client):
    share = _share(client)
    with parallel_config(backend="ipyparallel", client=client):
        scores = cross_validate(_lightgbm(), X, Y, cv=CV, scoring=LIGHTGBM_SCORING)
        explicit = cross_validate(
            _lightgbm(n_jobs=3), X, Y, cv=CV, scoring=LIGHTGBM_SCORING
        )
    assert set(scores["test_threads"]) == {share}
    assert set(explicit["test_threads"]) == {3}


def _xgboost_class():
    """An XGBClassifier that records the OpenMP threads its fit may use."""
    from threadpoolctl import threadpool_info
    from xgboost import XGBClassifier

    class ThreadRecordingXGBClassifier(XGBClassifier):
        def fit(self, X, y, **params):
            # n_jobs=None: XGBoost takes OpenMP's limit. Its booster's own
            # setting: 0 for that default, else the user's n_jobs.
            self.openmp_threads_ = min(
                p["num_threads"]
                for p in threadpool_info()
                if p["internal_api"] == "openmp"
            )
            return super().fit(X, y, **params)

    return ThreadRecordingXGBClassifier


def _xgboost_threads(estimator, X, y):
    import json

    config = json.loads(estimator.get_booster().save_config())
    nthread = int(config["learner"]["generic_param"]["nthread"])
    return nthread or estimator.openmp_threads_


@needs_library("xgboost", "the threads of XGBoost's fits on the engines")
def test_xgboost_fits_get_the_engine_share_and_find_sklearn_results(client):
    share = _share(client)
    estimator_class = _xgboost_class()
    scoring = {"accuracy": "accuracy", "threads": _xgboost_threads}
    params = {"n_estimators": 10, "tree_method": "hist"}
    grid = {"max_depth": [2, 4]}

    def searched(**more):
        return IPyParallelGridSearchCV(
            estimator_class(**params, **more),
            grid,
            scoring=scoring,
            refit="accuracy",
            cv=CV,
            client=client,
        ).fit(X, Y)

    search = searched()
    assert _split_values(search, "threads") == {share}
    reference = GridSearchCV(
        estimator_class(**params), grid, scoring="accuracy", cv=CV
    ).fit(X, Y)
    for k in range(CV.get_n_splits()):
        np.testing.assert_array_equal(
            search.cv_results_[f"split{k}_test_accuracy"],
            reference.cv_results_[f"split{k}_test_score"],
        )
    assert _split_values(searched(n_jobs=3), "threads") == {3}


def _catboost_threads(estimator, X, y):
    # -1, CatBoost's default (every CPU), is not kept in its parameters.
    return estimator.get_params().get("thread_count", -1)


@needs_library("catboost", "CatBoost's threads and results on the engines")
def test_catboost_keeps_its_own_threads_and_finds_sklearn_results(client):
    from catboost import CatBoostClassifier

    scoring = {"accuracy": "accuracy", "threads": _catboost_threads}
    grid = {"depth": [2, 4]}

    def searches(estimator):
        ours = IPyParallelGridSearchCV(
            estimator, grid, scoring=scoring, refit="accuracy", cv=CV, client=client
        )
        reference = GridSearchCV(
            estimator, grid, scoring=scoring, refit="accuracy", cv=CV
        )
        return ours.fit(X, Y), reference.fit(X, Y)

    # Its results depend on its thread count: on the engines it keeps its
    # default, every CPU of the host, as in-process, and finds the same.
    default = CatBoostClassifier(
        iterations=10, random_seed=0, verbose=0, allow_writing_files=False
    )
    ours, reference = searches(default)
    assert _split_values(ours, "threads") == {-1}
    assert_same_search(ours, reference)
    ours, reference = searches(default.set_params(thread_count=1))
    assert _split_values(ours, "threads") == {1}
    assert_same_search(ours, reference)
