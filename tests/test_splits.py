"""Every split scikit-learn accepts gives scikit-learn's results on the cluster."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_validate

from sklearn_ipp import IPyParallelGridSearchCV

from ._sklearn_compare import assert_same_search, fit_both

GRID = {"C": [0.1, 1.0]}


def _data(n_samples=40):
    return make_classification(n_samples=n_samples, n_features=5, random_state=0)


def _compare(client, X, y, cv, estimator=None, grid=GRID, **params):
    estimator = estimator or LogisticRegression()
    ours = IPyParallelGridSearchCV(estimator, grid, cv=cv, client=client)
    reference = GridSearchCV(estimator, grid, cv=cv)
    warned = fit_both(ours, reference, X, y, **params)
    assert warned[0] == warned[1]
    assert_same_search(ours, reference, X)
    return ours


def _masks(n_samples):
    mask = np.zeros(n_samples, dtype=bool)
    mask[: n_samples // 2] = True
    return [[mask, ~mask], [~mask, mask]]


def test_boolean_mask_splits(client):
    X, y = _data()
    ours = _compare(client, X, y, _masks(len(X)))
    # Each test set is half the rows, as the masks say.
    GridSearchCV(LogisticRegression(), GRID, cv=_masks(len(X))).fit(X, y)
    assert ours.cv_results_["split0_test_score"].shape == (2,)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.int64, "list"])
def test_index_splits_of_every_integer_type(client, dtype):
    X, y = _data()
    splits = list(KFold(3, shuffle=True, random_state=0).split(X))
    if dtype == "list":
        cv = [(list(train), list(test)) for train, test in splits]
    else:
        cv = [(train.astype(dtype), test.astype(dtype)) for train, test in splits]
    _compare(client, X, y, cv)


def test_a_cv_object_yielding_masks(client):
    class MaskSplitter:
        def split(self, X, y=None, groups=None):
            yield from _masks(len(X))

        def get_n_splits(self, X=None, y=None, groups=None):
            return 2

    X, y = _data()
    _compare(client, X, y, MaskSplitter())


def test_pandas_input_with_a_non_default_index(client):
    X, y = _data()
    index = np.arange(1000, 1000 + 2 * len(X), 2)[::-1]
    frame = pd.DataFrame(X, index=index, columns=[f"f{i}" for i in range(5)])
    _compare(client, frame, pd.Series(y, index=index), 3)
    _compare(client, frame, pd.Series(y, index=index), _masks(len(X)))


class SparseParamClassifier(ClassifierMixin, BaseEstimator):
    """Scores with a sample-aligned fit parameter, which may be sparse."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y, weights=None):
        self.classes_ = np.unique(y)
        dense = np.asarray(weights.todense()).ravel() if sp.issparse(weights) else 0
        self.offset_ = float(np.sum(dense)) * self.C
        return self

    def predict(self, X):
        return np.full(X.shape[0], self.classes_[0])

    def score(self, X, y):
        return self.offset_ + float(np.mean(self.predict(X) == y))


@pytest.mark.parametrize("format", ["csr", "csc", "coo", "lil", "dok", "bsr", "dia"])
def test_sparse_x_and_sparse_fit_parameters_in_every_format(client, format):
    X, y = _data()
    weights = sp.random(len(X), 1, density=0.5, random_state=0, format=format)
    X_sparse = sp.random(len(X), 5, density=0.5, random_state=1, format=format)
    for data in (X, X_sparse):
        _compare(
            client,
            data,
            y,
            3,
            SparseParamClassifier(),
            {"C": [1.0, 2.0]},
            weights=weights,
        )


@pytest.mark.parametrize("format", ["coo", "csc", "dia"])
def test_sparse_fit_parameters_under_the_backend(client, format):
    # cross_validate hands its fit parameters to the tasks as given.
    X, y = _data()
    weights = sp.random(len(X), 1, density=0.5, random_state=0, format=format)
    params = {"weights": weights}
    expected = cross_validate(SparseParamClassifier(), X, y, cv=3, params=params)
    with parallel_config(backend="ipyparallel", client=client):
        actual = cross_validate(SparseParamClassifier(), X, y, cv=3, params=params)
    np.testing.assert_array_equal(actual["test_score"], expected["test_score"])
