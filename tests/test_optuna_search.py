"""The Optuna-proposed search on the real test cluster.

Its candidates come from a study, so there is no scikit-learn search to
compare it with directly; what must hold is that every candidate it reports
has scikit-learn's results for that candidate (a grid search of exactly its
candidates, in its order), that the study is told each candidate once with
its mean test score, that running candidates are known to the study as
they are proposed, and that a search fitted again proposes the same
candidates and fits only what did not finish.
"""

import os
import pickle
import signal
import sys
import time
import uuid
import warnings
from inspect import signature

import numpy as np
import pytest
from scipy.stats import loguniform, randint, uniform
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.model_selection.tests.test_search import (
    check_cv_results_array_types,
    check_cv_results_keys,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sklearn_ipp import IPyParallelOptunaSearchCV
from sklearn_ipp._optuna_search import _startup_trials

from ._sklearn_compare import assert_same_search
from .test_failures import _restore_engines

optuna = pytest.importorskip("optuna")

X, Y = make_classification(n_samples=120, n_features=6, random_state=0)
CV = KFold(3, shuffle=True, random_state=0)


def _reference(search, estimator=None):
    """scikit-learn's grid search of exactly the search's candidates, in order."""
    grid = [
        {k: [v] for k, v in params.items()} for params in search.cv_results_["params"]
    ]
    reference = GridSearchCV(
        search.estimator if estimator is None else estimator,
        grid,
        cv=search.cv,
        scoring=search.scoring,
        refit=search.refit,
        return_train_score=search.return_train_score,
        error_score=search.error_score,
    )
    return reference.fit(X, Y)


class RecordingSampler(optuna.samplers.TPESampler):
    """TPE that records, at each trial, the trials running, and each trial told."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.running_at_ask = []  # per trial: numbers of the others running
        self.told = []  # (trial number, state, values)

    def before_trial(self, study, trial):
        running = study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        )
        self.running_at_ask.append(
            (
                trial.number,
                sorted(t.number for t in running if t.number != trial.number),
            )
        )
        super().before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.told.append((trial.number, state, values))
        super().after_trial(study, trial, state, values)


def test_every_candidate_has_scikit_learns_results_and_is_told_once(client):
    sampler = RecordingSampler(seed=0, n_startup_trials=3)
    search = IPyParallelOptunaSearchCV(
        SVC(),
        {"C": loguniform(1e-2, 1e2), "gamma": loguniform(1e-3, 1e0)},
        n_iter=10,
        cv=CV,
        sampler=sampler,
        client=client,
        return_train_score=True,
    )
    search.fit(X, Y)
    results = search.cv_results_
    assert len(results["params"]) == 10
    assert_same_search(search, _reference(search), X)
    # Each candidate told once, its mean test score, in the order proposed.
    trials = search.study_.trials
    assert len(trials) == 10
    told = sorted(sampler.told)
    assert [number for number, _, _ in told] == list(range(10))
    assert all(state == optuna.trial.TrialState.COMPLETE for _, state, _ in told)
    np.testing.assert_allclose(
        [values[0] for _, _, values in told], results["mean_test_score"]
    )
    for trial, params in zip(trials, results["params"], strict=True):
        assert trial.params == params
    # The fitted search pickles with its study, and a clone shares the study.
    restored = pickle.loads(pickle.dumps(search))
    assert len(restored.study_.trials) == 10
    np.testing.assert_array_equal(restored.predict(X), search.predict(X))
    study = optuna.create_study(direction="maximize")
    assert clone(search.set_params(study=study)).study is study
    # Asked as engines freed up, with the running candidates known: on two
    # engines and three splits, a candidate is asked while another runs.
    assert any(running for _, running in sampler.running_at_ask)


def test_cv_results_have_scikit_learns_format(client):
    # scikit-learn's test_random_search_cv_results, with distributions that
    # Optuna has (expon has no counterpart): a conditional space.
    X, y = make_classification(n_samples=50, n_features=4, random_state=42)
    n_search_iter = 12
    params = [
        {"kernel": ["rbf"], "C": loguniform(0.1, 10), "gamma": loguniform(1e-3, 1)},
        {"kernel": ["poly"], "degree": [2, 3]},
    ]
    param_keys = ("param_C", "param_degree", "param_gamma", "param_kernel")
    score_keys = (
        "mean_test_score",
        "mean_train_score",
        "rank_test_score",
        "split0_test_score",
        "split1_test_score",
        "split2_test_score",
        "split0_train_score",
        "split1_train_score",
        "split2_train_score",
        "std_test_score",
        "std_train_score",
        "mean_fit_time",
        "std_fit_time",
        "mean_score_time",
        "std_score_time",
    )
    search = IPyParallelOptunaSearchCV(
        SVC(),
        n_iter=n_search_iter,
        cv=3,
        param_distributions=params,
        return_train_score=True,
        random_state=0,
        client=client,
    )
    search.fit(X, y)
    cv_results = search.cv_results_
    kernels = list(cv_results["param_kernel"])
    # Both dicts were proposed (the study chooses the dict too); at most the
    # two candidates of the "poly" dict.
    assert "rbf" in kernels and 1 <= kernels.count("poly") <= 2
    expected = {"param_C": "f", "param_degree": "i", "param_gamma": "f"}
    expected["param_kernel"] = "O"
    checks = signature(check_cv_results_array_types).parameters
    if "expected_cv_results_kinds" in checks:
        check_cv_results_array_types(search, param_keys, score_keys, expected)
    else:  # scikit-learn < 1.5 kept every param_ column as objects
        check_cv_results_array_types(search, param_keys, score_keys)
    check_cv_results_keys(cv_results, param_keys, score_keys, len(kernels))
    for i, kernel in enumerate(kernels):
        masked = cv_results["param_C"].mask[i], cv_results["param_degree"].mask[i]
        assert masked == ((True, False) if kernel == "poly" else (False, True))


def test_every_kind_of_distribution_is_accepted(client):
    scaler = StandardScaler()
    distributions = {
        "logisticregression__C": loguniform(1e-2, 1e2),
        "logisticregression__tol": uniform(1e-4, 1e-3),
        "logisticregression__max_iter": randint(50, 200),
        "logisticregression__class_weight": [None, "balanced"],
        "logisticregression__intercept_scaling": optuna.distributions.FloatDistribution(
            0.5, 2.0
        ),
        # Values Optuna cannot store are proposed by their position.
        "standardscaler": [scaler, "passthrough"],
    }
    search = IPyParallelOptunaSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression()),
        distributions,
        n_iter=6,
        cv=CV,
        random_state=0,
        client=client,
    )
    search.fit(X, Y)
    for params in search.cv_results_["params"]:
        assert 1e-2 <= params["logisticregression__C"] <= 1e2
        assert 1e-4 <= params["logisticregression__tol"] <= 1.1e-3
        assert 50 <= params["logisticregression__max_iter"] < 200
        assert params["standardscaler"] is scaler or params["standardscaler"] == (
            "passthrough"
        )
    assert_same_search(search, _reference(search), X)


@pytest.mark.parametrize(
    ("distributions", "error", "message"),
    [
        (
            {"C": __import__("scipy.stats").stats.expon()},
            TypeError,
            "param_distributions['C'] is scipy.stats.expon, which has no Optuna",
        ),
        ({"C": 3}, TypeError, "param_distributions['C'] is 3: give a list"),
        ({"C": []}, ValueError, "param_distributions['C'] is an empty list"),
        (
            [{"C": [1]}, {"C": __import__("scipy.stats").stats.norm()}],
            TypeError,
            "param_distributions[1]['C'] is scipy.stats.norm",
        ),
        (
            {"C": loguniform(1, 10, loc=1)},
            ValueError,
            "is scipy.stats.loguniform with loc=1, which is not log-uniform",
        ),
    ],
)
def test_a_distribution_without_an_optuna_counterpart_is_a_clear_error(
    distributions, error, message
):
    search = IPyParallelOptunaSearchCV(SVC(), distributions, client="no-such-profile")
    with pytest.raises(error) as raised:
        search.fit(X, Y)
    assert message in str(raised.value)


def test_the_study_and_sampler_are_checked():
    minimizing = optuna.create_study(direction="minimize")
    with pytest.raises(ValueError, match='direction="maximize"'):
        IPyParallelOptunaSearchCV(SVC(), {"C": [1]}, study=minimizing).fit(X, Y)
    with pytest.raises(TypeError, match="sampler must be an Optuna sampler"):
        IPyParallelOptunaSearchCV(SVC(), {"C": [1]}, sampler="tpe").fit(X, Y)


def test_the_default_sampler_draws_a_fifth_of_the_budget_at_random(client):
    search = IPyParallelOptunaSearchCV(
        SVC(), {"C": loguniform(1e-2, 1e2)}, n_iter=8, cv=CV, client=client
    ).fit(X, Y)
    sampler = search.study_.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    # Optuna keeps these private; they are what the docstring promises.
    assert sampler._constant_liar
    assert sampler._n_startup_trials == 1
    assert [_startup_trials(n) for n in (3, 30, 49, 50, 1000)] == [1, 6, 9, 10, 10]


def test_without_optuna_the_search_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r'pip install "sklearn_ipp\[optuna\]"'):
        IPyParallelOptunaSearchCV(SVC(), {"C": [1.0]}).fit(X, Y)


def test_a_small_space_is_searched_once_with_scikit_learns_warning(client):
    search = IPyParallelOptunaSearchCV(
        SVC(), {"C": [0.1, 1.0, 10.0]}, n_iter=10, cv=CV, random_state=0, client=client
    )
    with pytest.warns(UserWarning, match="total space of parameters 3 is smaller"):
        search.fit(X, Y)
    assert sorted(p["C"] for p in search.cv_results_["params"]) == [0.1, 1.0, 10.0]


class LoggedClassifier(ClassifierMixin, BaseEstimator):
    """A logistic regression that logs each fit to ``log_dir`` (one file each)."""

    def __init__(self, C=1.0, log_dir=None, delay=0.0):
        self.C = C
        self.log_dir = log_dir
        self.delay = delay

    def fit(self, X, y):
        time.sleep(self.delay)
        self.model_ = LogisticRegression(C=self.C).fit(X, y)
        self.classes_ = self.model_.classes_
        if self.log_dir is not None:
            with open(os.path.join(self.log_dir, uuid.uuid4().hex), "w") as f:
                f.write(repr(self.C))
        return self

    def predict(self, X):
        return self.model_.predict(X)


def _n_logged(log_dir):
    return len(os.listdir(log_dir))


def test_a_search_fitted_again_proposes_the_same_candidates_and_fits_the_rest(
    client, tmp_path
):
    log_dir = tmp_path / "fits"
    log_dir.mkdir()
    estimator = LoggedClassifier(log_dir=str(log_dir), delay=0.2)
    search = IPyParallelOptunaSearchCV(
        estimator,
        {"C": loguniform(1e-3, 1e2)},
        n_iter=12,
        cv=CV,
        random_state=0,
        checkpoint_dir=tmp_path / "checkpoint",
        client=client,
    )
    search.fit_async(X, Y)
    deadline = time.monotonic() + 120
    while search.progress()[0] < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    search.abort()
    partial = search.partial_results()
    splits_done = ~np.ma.getmaskarray(
        np.ma.vstack([partial[f"split{k}_test_score"] for k in range(3)])
    )
    n_saved = int(splits_done.sum())
    n_finished = int(np.sum(splits_done.all(axis=0)))
    assert 4 <= n_finished < 12
    n_fits_before = _n_logged(log_dir)
    search.fit(X, Y)
    params = search.cv_results_["params"]
    assert len(params) == 12
    # The same candidates first, in the same order.
    assert params[: len(partial["params"])] == list(partial["params"])
    # Only what had not finished was fitted (and the refit, here).
    n_fits_after = _n_logged(log_dir) - n_fits_before
    assert n_fits_after <= 12 * 3 - n_saved + 1
    assert_same_search(search, _reference(search, LoggedClassifier()), X)
    # Complete, fitted again: the same search, nothing fitted but the refit.
    before = _n_logged(log_dir)
    again = IPyParallelOptunaSearchCV(**search.get_params(deep=False)).fit(X, Y)
    assert again.cv_results_["params"] == params
    assert _n_logged(log_dir) == before + 1


def test_a_users_study_in_sqlite_is_used_as_it_is(client, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=storage, study_name="shared", direction="maximize"
    )
    first = IPyParallelOptunaSearchCV(
        SVC(), {"C": loguniform(1e-2, 1e2)}, n_iter=4, cv=CV, study=study, client=client
    ).fit(X, Y)
    # Another client of the same storage sees the trials and adds its own.
    loaded = optuna.load_study(study_name="shared", storage=storage)
    second = IPyParallelOptunaSearchCV(
        SVC(),
        {"C": loguniform(1e-2, 1e2)},
        n_iter=3,
        cv=CV,
        study=loaded,
        client=client,
    ).fit(X, Y)
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == 7
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert first.study_ is study and second.study_ is loaded
    np.testing.assert_allclose(
        [t.value for t in trials],
        np.r_[
            first.cv_results_["mean_test_score"], second.cv_results_["mean_test_score"]
        ],
    )
    # The fitted search pickles, and predicts as before.
    restored = pickle.loads(pickle.dumps(second))
    np.testing.assert_array_equal(restored.predict(X), second.predict(X))


def test_an_engine_killed_during_the_search_changes_no_result(cluster, client):
    search = IPyParallelOptunaSearchCV(
        LoggedClassifier(delay=0.3),
        {"C": loguniform(1e-3, 1e2)},
        n_iter=8,
        cv=CV,
        random_state=0,
        client=client,
    )
    pids = client[:].apply_sync(os.getpid)
    try:
        search.fit_async(X, Y)
        deadline = time.monotonic() + 120
        while search.progress()[0] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not search.done()
        os.kill(pids[0], signal.SIGKILL)
        search.wait()
        assert len(search.cv_results_["params"]) == 8
        assert_same_search(search, _reference(search, LoggedClassifier()), X)
    finally:
        _restore_engines(cluster, client, 1)


def test_a_time_budget_keeps_the_candidates_finished(client):
    search = IPyParallelOptunaSearchCV(
        LoggedClassifier(delay=0.25),
        {"C": loguniform(1e-3, 1e2)},
        n_iter=40,
        cv=CV,
        random_state=0,
        time_budget=3.0,
        client=client,
    )
    with pytest.warns(UserWarning, match="time_budget=3 s ended the search"):
        search.fit(X, Y)
    n = len(search.cv_results_["params"])
    assert 1 <= n < 40
    assert not np.isnan(search.cv_results_["mean_test_score"]).any()
    assert_same_search(search, _reference(search, LoggedClassifier()), X)


def test_optuna_says_nothing_and_the_search_reports_as_the_others(client, capsys):
    search = IPyParallelOptunaSearchCV(
        SVC(), {"C": loguniform(1e-2, 1e2)}, n_iter=4, cv=CV, client=client
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.fit(X, Y)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert search.report().startswith("Progress: 100% (12/12)")
    assert search.progress() == (12, 12)


def test_a_search_inside_a_task_proposes_in_turn_on_its_engine(client):
    from joblib import parallel_backend
    from sklearn.model_selection import cross_validate

    search = IPyParallelOptunaSearchCV(
        SVC(), {"C": loguniform(1e-2, 1e2)}, n_iter=4, cv=3, random_state=0
    )
    with parallel_backend("ipyparallel", client=client):
        result = cross_validate(search, X, Y, cv=2, return_estimator=True)
    for fitted in result["estimator"]:
        assert len(fitted.cv_results_["params"]) == 4
        trials = fitted.study_.trials
        assert [t.params for t in trials] == fitted.cv_results_["params"]
        np.testing.assert_allclose(
            [t.value for t in trials], fitted.cv_results_["mean_test_score"]
        )
