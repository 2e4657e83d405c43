"""Halving rounds that continue the models of the round before.

Continued fits must give scikit-learn's own halving results; the trees and
iterations the engines fitted are counted from their replies, as the
verbose summary prints them.
"""

import os
import re
import signal
import time
import types

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import (
    HalvingGridSearchCV,
    HalvingRandomSearchCV,
    KFold,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_ipp import (
    IPyParallelHalvingGridSearchCV,
    IPyParallelHalvingRandomSearchCV,
)
from sklearn_ipp._warm_start import Rounds, continuation_plan

from ._sklearn_compare import assert_same_search, fit_both
from .test_failures import _restore_engines

X, Y = make_classification(n_samples=400, n_features=8, random_state=0)
CV = KFold(3, shuffle=True, random_state=0)
SUMMARY = re.compile(
    r"Continued (\d+) of (\d+) fits from the models of the round before: "
    r"(\d+) \S+ fitted instead of (\d+)"
)

CASES = {
    "forest": (
        RandomForestClassifier(max_depth=4, random_state=0),
        {"max_features": [0.3, 0.6, 1.0], "min_samples_leaf": [1, 5, 10]},
        "n_estimators",
        {},
    ),
    "gradient boosting, subsampled": (
        GradientBoostingClassifier(subsample=0.7, max_features=0.5, random_state=0),
        {"learning_rate": [0.03, 0.1, 0.3], "max_depth": [2, 3, 4]},
        "n_estimators",
        {},
    ),
    "hist gradient boosting, weighted, in a pipeline": (
        make_pipeline(StandardScaler(), HistGradientBoostingClassifier(random_state=0)),
        {
            "histgradientboostingclassifier__learning_rate": [0.03, 0.1, 0.3],
            "histgradientboostingclassifier__max_leaf_nodes": [4, 8, 31],
        },
        "histgradientboostingclassifier__max_iter",
        {"histgradientboostingclassifier__sample_weight": np.linspace(0.5, 1.5, 400)},
    ),
}


def _summary(output):
    """``(n_continued, n_fits, units_fitted, units_planned)`` printed, or None."""
    match = SUMMARY.search(output)
    return None if match is None else tuple(int(group) for group in match.groups())


def _expected_units(search):
    """Trees fitted from scratch, and when every promoted fit continues."""
    n_splits = search.n_splits_
    scratch = continued = 0
    previous = 0
    for n_candidates, n_resources in zip(
        search.n_candidates_, search.n_resources_, strict=True
    ):
        scratch += n_candidates * n_splits * n_resources
        continued += n_candidates * n_splits * (n_resources - previous)
        previous = n_resources
    return scratch, continued


@pytest.mark.parametrize("case", list(CASES))
def test_continued_rounds_equal_sklearns_halving(client, capsys, case):
    estimator, grid, resource, params = CASES[case]
    kwargs = {
        "resource": resource,
        "max_resources": 45,
        "min_resources": 5,
        "cv": CV,
        "random_state": 0,
    }
    ours = IPyParallelHalvingGridSearchCV(
        estimator, grid, client=client, verbose=1, **kwargs
    )
    reference = HalvingGridSearchCV(estimator, grid, **kwargs)
    warnings_ours, warnings_reference = fit_both(ours, reference, X, Y, **params)
    assert warnings_ours == warnings_reference
    assert_same_search(ours, reference, X, rtol=1e-9)
    assert list(ours.n_resources_) == list(reference.n_resources_) == [5, 15, 45]
    # Every promoted fit continued its model: the engines fitted only the
    # trees the models lacked.
    n_continued, n_fits, fitted, planned = _summary(capsys.readouterr().out)
    scratch, continued = _expected_units(ours)
    assert n_fits == sum(ours.n_candidates_) * ours.n_splits_
    assert n_continued == sum(ours.n_candidates_[1:]) * ours.n_splits_
    assert (planned, fitted) == (scratch, continued)
    # A fit time is its model's whole training time: the round before's too.
    results = ours.cv_results_
    searched = [
        {k: v for k, v in params.items() if k != resource}
        for params in results["params"]
    ]
    (last,) = np.flatnonzero(results["iter"] == 2)
    (before,) = [
        i for i in np.flatnonzero(results["iter"] == 1) if searched[i] == searched[last]
    ]
    assert results["mean_fit_time"][last] > results["mean_fit_time"][before]


def test_continued_random_search_equals_sklearns_on_a_regressor(client, capsys):
    X_r, y_r = make_regression(n_samples=300, n_features=6, random_state=0)
    estimator = ExtraTreesRegressor(bootstrap=True, oob_score=True, random_state=3)
    space = {"max_features": [0.2, 0.5, 0.8, 1.0], "min_samples_split": [2, 4, 8]}
    kwargs = {
        "resource": "n_estimators",
        "max_resources": 40,
        "min_resources": 10,
        "factor": 2,
        "n_candidates": 8,
        "cv": 3,
        "random_state": 0,
    }
    ours = IPyParallelHalvingRandomSearchCV(
        estimator, space, client=client, verbose=1, **kwargs
    )
    reference = HalvingRandomSearchCV(estimator, space, **kwargs)
    warnings_ours, warnings_reference = fit_both(ours, reference, X_r, y_r)
    assert warnings_ours == warnings_reference
    assert_same_search(ours, reference, X_r, rtol=1e-9)
    n_continued, _, fitted, planned = _summary(capsys.readouterr().out)
    assert n_continued > 0
    assert (planned, fitted) == _expected_units(ours)


def test_early_stopped_boosting_is_continued_only_where_exact(client, capsys):
    # Early stopping ends some fits before their max_iter.
    estimator = HistGradientBoostingClassifier(
        early_stopping=True,
        n_iter_no_change=2,
        validation_fraction=0.3,
        random_state=0,
    )
    grid = {"learning_rate": [0.05, 0.3, 1.0], "max_leaf_nodes": [3, 15, 31]}
    kwargs = {"resource": "max_iter", "max_resources": 60, "min_resources": 6}
    kwargs.update(factor=3, cv=CV, random_state=0)
    ours = IPyParallelHalvingGridSearchCV(
        estimator, grid, client=client, verbose=1, **kwargs
    )
    reference = HalvingGridSearchCV(estimator, grid, **kwargs)
    fit_both(ours, reference, X, Y)
    assert_same_search(ours, reference, X, rtol=1e-9)
    # Fits that early stopping ended are taken as they are: a fit from
    # scratch with more iterations stops at the same one.
    n_continued, _, fitted, _ = _summary(capsys.readouterr().out)
    assert n_continued == sum(ours.n_candidates_[1:]) * ours.n_splits_
    assert fitted < _expected_units(ours)[1]


@pytest.mark.parametrize(
    "estimator, reason",
    [
        (SGDClassifier(random_state=0), "SGDClassifier is not known to fit"),
        (
            RandomForestClassifier(random_state=np.random.RandomState(0)),
            "is a RandomState instance",
        ),
    ],
    ids=["not on the list", "a RandomState instance"],
)
def test_fits_run_from_scratch_where_continuing_may_change_a_result(
    client, capsys, estimator, reason
):
    if isinstance(estimator, SGDClassifier):
        resource, grid = "max_iter", {"alpha": [1e-4, 1e-3, 1e-2]}
    else:
        resource, grid = "n_estimators", {"min_samples_leaf": [1, 2, 4]}
    kwargs = {"resource": resource, "max_resources": 18, "min_resources": 6}
    kwargs.update(cv=3, random_state=0)
    ours = IPyParallelHalvingGridSearchCV(
        estimator, grid, client=client, verbose=1, **kwargs
    )
    reference = HalvingGridSearchCV(estimator, grid, **kwargs)
    warnings_ours, warnings_reference = fit_both(ours, reference, X, Y)
    output = capsys.readouterr().out
    assert _summary(output) is None
    assert "Fitted every halving round from scratch: " in output
    assert reason in output
    assert warnings_ours == warnings_reference
    assert_same_search(ours, reference, X)


def test_warm_start_rounds_false_and_always(client, capsys):
    grid = {"alpha": [1e-4, 1e-3, 1e-2]}
    kwargs = {"resource": "max_iter", "max_resources": 18, "min_resources": 6}
    kwargs.update(cv=3, random_state=0, verbose=1, client=client)
    estimator = SGDClassifier(tol=None, random_state=0)
    IPyParallelHalvingGridSearchCV(
        estimator, grid, warm_start_rounds="always", **kwargs
    ).fit(X, Y)
    n_continued, _, _, _ = _summary(capsys.readouterr().out)
    assert n_continued == 3  # the candidate of the second round, on 3 splits
    forest = RandomForestClassifier(random_state=0)
    kwargs["resource"] = "n_estimators"
    IPyParallelHalvingGridSearchCV(
        forest, {"max_depth": [2, 4, 8]}, warm_start_rounds=False, **kwargs
    ).fit(X, Y)
    output = capsys.readouterr().out
    assert _summary(output) is None
    assert "from scratch" not in output


# The client's bookkeeping, without a cluster --------------------------------


@pytest.mark.parametrize(
    "estimator, resource, reason",
    [
        (RandomForestClassifier(), "n_samples", "other samples"),
        (
            make_pipeline(RandomForestClassifier(), StandardScaler()),
            "randomforestclassifier__n_estimators",
            "neither the estimator nor the last step",
        ),
        (RandomForestClassifier(), "max_depth", "max_depth does not count"),
        (
            RandomForestClassifier(class_weight="balanced"),
            "n_estimators",
            "warns when continued",
        ),
        (
            GradientBoostingClassifier(n_iter_no_change=3),
            "n_estimators",
            "starts over",
        ),
    ],
    ids=["n_samples", "not the last step", "not the counter", "balanced", "early"],
)
def test_continuation_plan_says_why_a_fit_runs_from_scratch(
    estimator, resource, reason
):
    path, said = continuation_plan(estimator, resource, True)
    assert path is None
    assert reason in said
    assert continuation_plan(estimator, resource, False) == (None, None)


def test_continuation_plan_follows_pipelines_and_candidate_parameters():
    pipeline = make_pipeline(StandardScaler(), RandomForestClassifier())
    resource = "randomforestclassifier__n_estimators"
    assert continuation_plan(pipeline, resource, True) == (
        ("randomforestclassifier",),
        None,
    )
    balanced = {"randomforestclassifier__class_weight": "balanced"}
    assert continuation_plan(pipeline, resource, True, balanced)[0] is None
    assert continuation_plan(SGDClassifier(), "max_iter", "always") == ((), None)
    # Parameters the estimator does not take: its fit fails as in scikit-learn.
    assert continuation_plan(pipeline, resource, True, {"no_such": 1}) == (None, None)


class _FakeStore:
    path = "/store"
    host_dirs = {}


def _task(parameters, split="split-0"):
    return types.SimpleNamespace(
        arguments={"parameters": parameters, "fit_params": {}}, split_key=split
    )


def test_rounds_continue_saved_models_and_drop_those_of_eliminated_candidates():
    removed = []
    rounds = Rounds(
        RandomForestClassifier(), "n_estimators", True, _FakeStore(), removed.append
    )
    first = [{"max_depth": depth, "n_estimators": 10} for depth in (2, 4, 8)]
    rounds.new_round(first, last=False)
    specs = [rounds.spec(_task(params)) for params in first]
    assert all(spec.load is None and spec.save for spec in specs)
    for spec in specs:
        spec.took((False, True, 10))
    # max_depth=2 is eliminated: its model goes; the others continue theirs.
    second = [{"max_depth": depth, "n_estimators": 30} for depth in (4, 8)]
    rounds.new_round(second, last=True)
    assert [model.name for model in removed] == [specs[0].save]
    continued = [rounds.spec(_task(params)) for params in second]
    assert [spec.load for spec in continued] == [spec.save for spec in specs[1:]]
    assert all(spec.save is None for spec in continued)  # the last round
    # Another split has no model: nothing to load, nothing to save.
    assert rounds.spec(_task(second[0], split="split-1")) is None
    for spec in continued:
        spec.took((True, False, 20))
    assert [model.name for model in removed[1:]] == [spec.save for spec in specs[1:]]
    assert (rounds.n_continued, rounds.units_fitted) == (2, 70)


def test_an_engine_killed_while_it_holds_models_changes_no_result(cluster, client):
    estimator = RandomForestClassifier(max_depth=6, random_state=0)
    grid = {"max_features": [0.3, 0.6, 1.0], "min_samples_leaf": [1, 5, 10]}
    kwargs = {"resource": "n_estimators", "max_resources": 270, "min_resources": 30}
    kwargs.update(cv=CV, random_state=0)
    reference = HalvingGridSearchCV(estimator, grid, **kwargs).fit(X, Y)
    ours = IPyParallelHalvingGridSearchCV(estimator, grid, client=client, **kwargs)
    pids = client[:].apply_sync(os.getpid)
    n_first_round = 9 * CV.get_n_splits()
    try:
        ours.fit_async(X, Y)
        # Once the second round has begun, every engine has saved models.
        deadline = time.monotonic() + 120
        while ours.progress()[0] <= n_first_round and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not ours.done()
        os.kill(pids[0], signal.SIGKILL)
        ours.wait()
        assert_same_search(ours, reference, X, rtol=1e-9)
    finally:
        _restore_engines(cluster, client, 1)
