"""The search both launcher checks run on the engines they started."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import sklearn_ipp


def search_equals_sklearn(client):
    """Whether a digits ``SVC`` grid search on ``client`` equals scikit-learn's.

    Compares the mean test scores of ``cv_results_``, and prints the best
    candidate and the answer.
    """
    X, y = load_digits(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": [1e-3, 1e-4]}
    search = sklearn_ipp.IPyParallelGridSearchCV(SVC(), grid, cv=3, client=client)
    search.fit(X, y)
    reference = GridSearchCV(SVC(), grid, cv=3).fit(X, y)
    equal = np.allclose(
        search.cv_results_["mean_test_score"],
        reference.cv_results_["mean_test_score"],
    )
    print(f"best {search.best_params_} at {search.best_score_:.5f}")
    print(f"cv_results_ equal to scikit-learn's: {equal}")
    return equal
