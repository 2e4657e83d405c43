"""IPyParallelGridSearchCV / RandomizedSearchCV equal sklearn's own searches."""

import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import loguniform, randint
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, make_classification
from sklearn.exceptions import FitFailedWarning
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
from sklearn.metrics import make_scorer
from sklearn.metrics.pairwise import linear_kernel
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    RandomizedSearchCV,
    ShuffleSplit,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from sklearn_ipp import IPyParallelGridSearchCV, IPyParallelRandomizedSearchCV

from ._sklearn_compare import assert_same_search, fit_both

IRIS_X, IRIS_Y = load_iris(return_X_y=True)


def _pair(grid_or_distributions, estimator, client, randomized=False, **params):
    if randomized:
        ours = IPyParallelRandomizedSearchCV(
            estimator, grid_or_distributions, client=client, **params
        )
        reference = RandomizedSearchCV(estimator, grid_or_distributions, **params)
    else:
        ours = IPyParallelGridSearchCV(
            estimator, grid_or_distributions, client=client, **params
        )
        reference = GridSearchCV(estimator, grid_or_distributions, **params)
    return ours, reference


def test_classifier_with_train_scores(client):
    ours, reference = _pair(
        {"C": [0.1, 1, 10], "gamma": [0.01, 0.1]},
        SVC(),
        client,
        return_train_score=True,
    )
    fit_both(ours, reference, IRIS_X, IRIS_Y)
    assert_same_search(ours, reference, IRIS_X)
    assert "split4_train_score" in ours.cv_results_


def test_regressor(client):
    X, y = load_diabetes(return_X_y=True)
    ours, reference = _pair(
        {"alpha": [0.01, 0.1, 1.0, 10.0]},
        Ridge(),
        client,
        scoring="neg_mean_squared_error",
        cv=KFold(4, shuffle=True, random_state=0),
    )
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)


def test_randomized_search(client):
    ours, reference = _pair(
        {"C": loguniform(1e-2, 1e2), "gamma": loguniform(1e-3, 1)},
        SVC(),
        client,
        randomized=True,
        n_iter=7,
        random_state=0,
    )
    fit_both(ours, reference, IRIS_X, IRIS_Y)
    assert_same_search(ours, reference, IRIS_X)


def test_pipeline_inner_parameters_and_estimators_as_parameters(client):
    pipeline = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])
    grid = [
        {"scale": [StandardScaler(), "passthrough"], "clf__C": [0.1, 1.0]},
        {"clf": [SVC(), DecisionTreeClassifier(random_state=0)]},
    ]
    ours, reference = _pair(grid, pipeline, client, cv=3)
    fit_both(ours, reference, IRIS_X, IRIS_Y)
    assert_same_search(ours, reference, IRIS_X)


def _best_low_complexity(cv_results):
    # A callable refit: the candidate with the smallest C among the top two.
    ranks = np.asarray(cv_results["rank_test_accuracy"])
    candidates = np.flatnonzero(ranks <= 2)
    return int(candidates[np.argmin(np.asarray(cv_results["param_C"])[candidates])])


@pytest.mark.parametrize("refit", ["f1", _best_low_complexity])
def test_multimetric_scoring(client, refit):
    X, y = make_classification(n_samples=200, random_state=0)
    ours, reference = _pair(
        {"C": [0.01, 0.1, 1, 10]},
        LogisticRegression(),
        client,
        scoring={"accuracy": "accuracy", "f1": "f1", "mine": make_scorer(_neg_mae)},
        refit=refit,
        return_train_score=True,
    )
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)


def _neg_mae(y_true, y_pred):
    return -np.mean(np.abs(y_true - y_pred))


class FailingClassifier(ClassifierMixin, BaseEstimator):
    """Fails to fit when ``parameter`` is FAIL, else predicts the majority class."""

    FAIL = 2

    def __init__(self, parameter=0):
        self.parameter = parameter

    def fit(self, X, y):
        if self.parameter == self.FAIL:
            raise ValueError("Failing classifier failed as required")
        self.classes_, counts = np.unique(y, return_counts=True)
        self.majority_ = self.classes_[np.argmax(counts)]
        return self

    def predict(self, X):
        return np.full(len(X), self.majority_)


def test_error_score_nan_gives_sklearn_warnings(client):
    ours, reference = _pair(
        {"parameter": [0, 1, FailingClassifier.FAIL]}, FailingClassifier(), client, cv=3
    )
    our_warnings, reference_warnings = fit_both(ours, reference, IRIS_X, IRIS_Y)
    assert_same_search(ours, reference, IRIS_X)
    assert our_warnings == reference_warnings
    categories = {category for category, _ in our_warnings}
    assert FitFailedWarning.__name__ in categories


def test_error_score_raise_raises_the_estimators_error(client):
    ours, reference = _pair(
        {"parameter": [0, FailingClassifier.FAIL]},
        FailingClassifier(),
        client,
        cv=3,
        error_score="raise",
    )
    with pytest.raises(
        ValueError, match="Failing classifier failed as required"
    ) as our:
        ours.fit(IRIS_X, IRIS_Y)
    with pytest.raises(ValueError) as theirs:
        reference.fit(IRIS_X, IRIS_Y)
    assert type(our.value) is type(theirs.value)
    assert str(our.value) == str(theirs.value)
    assert "Traceback on the engine" in str(our.value.__cause__)


def test_groups_with_group_kfold(client):
    X, y = make_classification(n_samples=120, random_state=1)
    groups = np.repeat(np.arange(12), 10)
    ours, reference = _pair(
        {"max_depth": [1, 2, 3]},
        DecisionTreeClassifier(random_state=0),
        client,
        cv=GroupKFold(4),
    )
    fit_both(ours, reference, X, y, groups=groups)
    assert_same_search(ours, reference, X)


def test_sample_weight_is_split_with_the_folds(client):
    X, y = make_classification(n_samples=150, random_state=2)
    weights = np.random.RandomState(0).uniform(0.1, 3, size=len(y))
    ours, reference = _pair(
        {"C": [0.1, 1, 10]},
        SVC(),
        client,
        cv=ShuffleSplit(4, test_size=0.3, random_state=0),
    )
    fit_both(ours, reference, X, y, sample_weight=weights)
    assert_same_search(ours, reference, X)
    # And the weights matter: without them the scores differ.
    unweighted = clone(reference).fit(X, y)
    assert not np.allclose(
        unweighted.cv_results_["mean_test_score"], ours.cv_results_["mean_test_score"]
    )


def test_pandas_dataframe_with_column_names(client):
    X = pd.DataFrame(IRIS_X, columns=["sepal_l", "sepal_w", "petal_l", "petal_w"])
    y = pd.Series(np.asarray(["setosa", "versicolor", "virginica"])[IRIS_Y])
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [("petal", StandardScaler(), ["petal_l", "petal_w"])]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    )
    ours, reference = _pair({"clf__C": [0.01, 1.0]}, pipeline, client, cv=3)
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)
    assert list(ours.feature_names_in_) == list(X.columns)


def test_sparse_csr_input(client):
    X, y = make_classification(n_samples=150, n_features=30, random_state=3)
    X[np.abs(X) < 1] = 0
    X = sp.csr_matrix(X)
    ours, reference = _pair(
        {"alpha": [1e-4, 1e-2]}, SGDClassifier(random_state=0), client
    )
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)


def test_string_labels(client):
    y = np.asarray(["setosa", "versicolor", "virginica"], dtype=object)[IRIS_Y]
    ours, reference = _pair({"C": [0.1, 1]}, LogisticRegression(), client)
    fit_both(ours, reference, IRIS_X, y)
    assert_same_search(ours, reference, IRIS_X)
    assert list(ours.classes_) == ["setosa", "versicolor", "virginica"]


def test_precomputed_kernel(client):
    kernel = linear_kernel(IRIS_X)
    grid = {"C": [0.01, 1, 100]}
    ours, reference = _pair(grid, SVC(kernel="precomputed"), client, cv=4)
    fit_both(ours, reference, kernel, IRIS_Y)
    assert_same_search(ours, reference, kernel)


def test_kernel_chosen_by_the_grid_is_split_as_pairwise(client):
    # Pairwise or not depends on the candidate, not only the base estimator.
    X = linear_kernel(IRIS_X[:120])
    y = IRIS_Y[:120]
    ours, reference = _pair({"kernel": ["precomputed", "rbf"]}, SVC(), client, cv=3)
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)


def test_randomized_integer_distribution_and_refit_false(client):
    ours, reference = _pair(
        {"max_depth": randint(1, 6), "min_samples_leaf": [1, 3]},
        DecisionTreeClassifier(random_state=0),
        client,
        randomized=True,
        n_iter=6,
        random_state=3,
        refit=False,
    )
    fit_both(ours, reference, IRIS_X, IRIS_Y)
    assert_same_search(ours, reference)
    assert not hasattr(ours, "best_estimator_")


def test_get_params_clone_set_params_and_pipeline(client):
    search = IPyParallelGridSearchCV(SVC(), {"C": [1, 10]}, client=client, cv=3)
    params = search.get_params()
    assert params["client"] is client
    assert params["pre_dispatch"] == "all"
    assert params["estimator__C"] == 1.0
    cloned = clone(search)
    assert cloned.client is client
    assert cloned.get_params()["param_grid"] == {"C": [1, 10]}
    assert cloned.set_params(cv=4, estimator__kernel="linear") is cloned
    assert cloned.cv == 4 and cloned.estimator.kernel == "linear"
    pipeline = Pipeline([("scale", StandardScaler()), ("search", search)])
    reference = Pipeline(
        [
            ("scale", StandardScaler()),
            ("search", GridSearchCV(SVC(), {"C": [1, 10]}, cv=3)),
        ]
    )
    pipeline.fit(IRIS_X, IRIS_Y)
    reference.fit(IRIS_X, IRIS_Y)
    np.testing.assert_array_equal(pipeline.predict(IRIS_X), reference.predict(IRIS_X))
    assert_same_search(pipeline.named_steps["search"], reference.named_steps["search"])


def test_fitted_search_pickles_without_its_client(client):
    search = IPyParallelGridSearchCV(SVC(), {"C": [1, 10]}, client=client, cv=3)
    search.fit(IRIS_X, IRIS_Y)
    restored = pickle.loads(pickle.dumps(search))
    assert restored.client is None
    assert search.client is client
    np.testing.assert_array_equal(restored.predict(IRIS_X), search.predict(IRIS_X))
    assert restored.best_params_ == search.best_params_


def test_profile_name_as_client(cluster):
    search = IPyParallelGridSearchCV(SVC(), {"C": [1, 10]}, client="default", cv=3)
    reference = GridSearchCV(SVC(), {"C": [1, 10]}, cv=3)
    fit_both(search, reference, IRIS_X, IRIS_Y)
    assert_same_search(search, reference, IRIS_X)
    assert pickle.loads(pickle.dumps(search)).client == "default"


class NestedParallelClassifier(ClassifierMixin, BaseEstimator):
    """Records the processes its own ``Parallel(n_jobs=None)`` call ran in."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y):
        import os

        from joblib import Parallel, delayed

        self.pids_ = sorted(set(Parallel()(delayed(os.getpid)() for _ in range(4))))
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def test_refit_runs_in_this_process_as_in_sklearn(client):
    import os

    X, y = make_classification(n_samples=60, random_state=0)
    grid = {"C": [1.0, 2.0]}
    reference = GridSearchCV(NestedParallelClassifier(), grid, cv=2).fit(X, y)
    ours = IPyParallelGridSearchCV(
        NestedParallelClassifier(), grid, cv=2, client=client
    ).fit(X, y)
    assert ours.best_estimator_.pids_ == reference.best_estimator_.pids_
    assert reference.best_estimator_.pids_ == [os.getpid()]
