"""time_budget: a search ends by its deadline with the candidates it has.

On the session cluster: a grid search ended with whole candidates whose
results are scikit-learn's, one ended before any candidate, a halving search
ended in an iteration, and bad values.
"""

import time
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import GridSearchCV, KFold, ParameterGrid

from sklearn_ipp import (
    IPyParallelGridSearchCV,
    IPyParallelHalvingGridSearchCV,
    TimeBudgetError,
)

N_SPLITS = 3


class SampleSleeper(ClassifierMixin, BaseEstimator):
    """Sleeps ``per_sample`` seconds per training sample; predicts by ``C``."""

    def __init__(self, C=0, per_sample=0.0):
        self.C = C
        self.per_sample = per_sample

    def fit(self, X, y):
        time.sleep(self.per_sample * len(X))
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        # Candidates score differently: C shifts the predicted class.
        return self.classes_[(np.arange(len(X)) + self.C) % len(self.classes_)]


X = np.random.RandomState(0).rand(160, 3)
y = np.arange(160) % 2


def _fit(search):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        start = time.monotonic()
        search.fit(X, y)
        wall = time.monotonic() - start
    said = [str(r.message) for r in records if "time_budget" in str(r.message)]
    return wall, said


@pytest.fixture
def warm(client):
    """Engines that have run a search: the budgets below count no warm-up."""
    IPyParallelGridSearchCV(SampleSleeper(), {"C": [0]}, cv=KFold(N_SPLITS)).fit(X, y)


def test_the_deadline_ends_the_search_with_whole_candidates(warm):
    # 12 candidates of 3 fits of 0.4 s: about 7 s on 2 engines, 3 s allowed.
    grid = {"C": list(range(12))}
    estimator = SampleSleeper(per_sample=0.4 / (160 * 2 / 3))
    search = IPyParallelGridSearchCV(
        estimator, grid, cv=KFold(N_SPLITS), time_budget=3.0
    )
    wall, said = _fit(search)
    n = len(search.cv_results_["params"])
    assert 0 < n < 12
    assert said == [
        f"time_budget=3 s ended the search: {n} of 12 candidates were evaluated "
        "on every split; cv_results_ and best_* come from them."
    ]
    assert wall < 3.0 + 5.0  # the deadline, the refit, the stopped fits' end
    assert search.report().splitlines()[0].endswith(", time_budget ended it")
    # The candidates evaluated are the first ones, in the grid's order, and
    # their results are scikit-learn's.
    kept = list(ParameterGrid(grid))[:n]
    assert search.cv_results_["params"] == kept
    reference = GridSearchCV(
        clone(estimator).set_params(per_sample=0.0),
        {"C": [p["C"] for p in kept]},
        cv=KFold(N_SPLITS),
    ).fit(X, y)
    for key, values in reference.cv_results_.items():
        if "time" not in key:
            assert list(search.cv_results_[key]) == list(values), key
    assert search.best_params_ == reference.best_params_
    assert reference.best_params_["C"] == search.best_estimator_.C


def test_no_candidate_by_the_deadline_is_an_error(warm):
    search = IPyParallelGridSearchCV(
        SampleSleeper(per_sample=0.05),  # 5 s a fit
        {"C": [0, 1]},
        cv=KFold(N_SPLITS),
        time_budget=1.0,
    )
    with pytest.raises(TimeBudgetError) as raised:
        search.fit(X, y)
    assert isinstance(raised.value, TimeoutError)
    assert str(raised.value).startswith(
        "time_budget=1 s ended the search before any of its 2 candidates was "
        "evaluated on every split (no fit had finished)"
    )


def test_a_halving_search_ends_with_the_iteration_that_ran(warm):
    # 8, 4, 2 and 1 candidates on 20, 40, 80 and 160 samples: about 1.2 s an
    # iteration on 2 engines; the deadline comes in the third.
    search = IPyParallelHalvingGridSearchCV(
        SampleSleeper(per_sample=0.1 / (20 * 2 / 3)),
        {"C": list(range(8))},
        cv=KFold(N_SPLITS),
        min_resources=20,
        factor=2,
        time_budget=3.0,
    )
    _, said = _fit(search)
    assert len(said) == 1
    results = search.cv_results_
    reached = search.n_iterations_
    assert 1 <= reached < 4
    assert len(search.n_candidates_) == len(search.n_resources_) == reached
    assert results["iter"].max() == reached - 1
    assert search.n_candidates_[:1] == [8]
    assert search.n_resources_ == [20, 40, 80, 160][:reached]
    # The best comes from the highest iteration reached.
    best = search.best_index_
    assert results["iter"][best] == reached - 1


@pytest.mark.parametrize("value", [0, -1.0, "1", float("nan")])
def test_bad_time_budgets_are_value_errors_naming_it(client, value):
    search = IPyParallelGridSearchCV(SampleSleeper(), {"C": [0]}, time_budget=value)
    with pytest.raises(ValueError, match="'time_budget' parameter"):
        search.fit(X, y)
