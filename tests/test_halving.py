"""The successive-halving searches: scikit-learn's results, the data once."""

import numpy as np
from scipy.stats import loguniform
from sklearn.datasets import make_classification
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import (
    HalvingGridSearchCV,
    HalvingRandomSearchCV,
    KFold,
    StratifiedKFold,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sklearn_ipp import (
    IPyParallelHalvingGridSearchCV,
    IPyParallelHalvingRandomSearchCV,
)

from ._sklearn_compare import assert_same_search, fit_both

X, Y = make_classification(n_samples=300, n_features=8, random_state=0)
GRID = {"C": [0.1, 1, 10], "gamma": [0.01, 0.1, 1]}


def test_halving_grid_equals_sklearns_and_stores_the_data_once(client, writes):
    weights = np.linspace(0.5, 1.5, len(X))
    kwargs = {
        "factor": 2,
        "cv": KFold(4, shuffle=True, random_state=1),
        "random_state": 0,
    }
    ours = IPyParallelHalvingGridSearchCV(SVC(), GRID, client=client, **kwargs)
    reference = HalvingGridSearchCV(SVC(), GRID, **kwargs)
    warnings_ours, warnings_reference = fit_both(
        ours, reference, X, Y, sample_weight=weights
    )
    assert warnings_ours == warnings_reference
    assert_same_search(ours, reference, X)
    assert ours.n_iterations_ == reference.n_iterations_ >= 3
    assert list(ours.n_resources_) == list(reference.n_resources_)
    # X, y and the weights once, whole, for every round and every split:
    # each round's tasks carry their subsample's row numbers.
    assert writes == [len(X)] * 3


def test_halving_random_equals_sklearns_in_a_pipeline(client, writes):
    estimator = make_pipeline(StandardScaler(), SVC())
    space = {"svc__C": loguniform(1e-2, 1e2), "svc__gamma": loguniform(1e-3, 1)}
    kwargs = {"cv": StratifiedKFold(3), "random_state": 0, "return_train_score": True}
    ours = IPyParallelHalvingRandomSearchCV(estimator, space, client=client, **kwargs)
    reference = HalvingRandomSearchCV(estimator, space, **kwargs)
    fit_both(ours, reference, X, Y)
    assert_same_search(ours, reference, X)
    assert writes == [len(X)] * 2


def test_halving_on_another_resource_stores_the_data_once(client, writes):
    from sklearn.ensemble import RandomForestClassifier

    grid = {"max_depth": [2, 4, None]}
    kwargs = {
        "resource": "n_estimators",
        "max_resources": 12,
        "cv": 3,
        "random_state": 0,
    }
    ours = IPyParallelHalvingGridSearchCV(
        RandomForestClassifier(random_state=0), grid, client=client, **kwargs
    )
    reference = HalvingGridSearchCV(
        RandomForestClassifier(random_state=0), grid, **kwargs
    )
    fit_both(ours, reference, X, Y)
    assert_same_search(ours, reference, X)
    # The same splits every round, with more trees: stored once for all.
    assert writes == [len(X)] * 2


def test_importing_sklearn_ipp_enables_the_halving_searches():
    import subprocess
    import sys

    code = (
        "import sklearn_ipp\n"
        "from sklearn.model_selection import HalvingGridSearchCV\n"
        "print(issubclass(sklearn_ipp.IPyParallelHalvingGridSearchCV,"
        " HalvingGridSearchCV))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "True"
