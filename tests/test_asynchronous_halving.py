"""Asynchronous successive halving on the cluster: promotions without barriers.

Its results differ from synchronous halving's by design; what must hold is
that every fit it reports is the fit scikit-learn would make of that
candidate with that resource on that split, that every level's candidates
come from the level below, and that the best comes from the highest level.
"""

import os
import signal
import time
import types
import uuid

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_ipp import (
    IPyParallelHalvingGridSearchCV,
    IPyParallelHalvingRandomSearchCV,
)
from sklearn_ipp._asynchronous_halving import AsynchronousHalving
from sklearn_ipp._checkpoint import DirectoryCheckpoint

from .test_failures import _restore_engines

X, Y = make_classification(n_samples=400, n_features=8, random_state=0)
CV = KFold(3, shuffle=True, random_state=0)


def _searched(params, resource):
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k != resource))


def _check_levels(search):
    """Each level's candidates come from the level below; best from the top."""
    results = search.cv_results_
    resource = search.resource
    levels = results["iter"]
    assert list(np.unique(levels)) == list(range(search.n_iterations_))
    assert list(search.n_candidates_) == [
        int(np.sum(levels == level)) for level in range(search.n_iterations_)
    ]
    searched = [_searched(params, resource) for params in results["params"]]
    for level in range(1, search.n_iterations_):
        below = {searched[i] for i in np.flatnonzero(levels == level - 1)}
        assert {searched[i] for i in np.flatnonzero(levels == level)} <= below
    top = np.flatnonzero(levels == levels.max())
    best = top[np.argmax(results["mean_test_score"][top])]
    assert search.best_index_ == best
    assert search.best_params_ == results["params"][best]


def _same_as_sklearns_fits(search, estimator):
    """Every row's split scores are scikit-learn's for that candidate."""
    results = search.cv_results_
    grid = [{k: [v] for k, v in params.items()} for params in results["params"]]
    reference = GridSearchCV(estimator, grid, cv=CV).fit(X, Y).cv_results_
    for k in range(CV.get_n_splits()):
        np.testing.assert_allclose(
            results[f"split{k}_test_score"], reference[f"split{k}_test_score"]
        )


def test_asynchronous_halving_reaches_the_top_with_scikit_learns_fits(client, capsys):
    estimator = RandomForestClassifier(max_depth=4, random_state=0)
    grid = {"max_features": [0.3, 0.6, 1.0], "min_samples_leaf": [1, 5, 10]}
    search = IPyParallelHalvingGridSearchCV(
        estimator,
        grid,
        resource="n_estimators",
        max_resources=45,
        min_resources=5,
        cv=CV,
        random_state=0,
        asynchronous=True,
        verbose=1,
        client=client,
    ).fit(X, Y)
    assert list(search.n_resources_) == [5, 15, 45]
    assert search.n_candidates_[0] == 9
    # At least the candidates synchronous halving keeps, at every level.
    assert all(n >= m for n, m in zip(search.n_candidates_, [9, 3, 1], strict=True))
    _check_levels(search)
    _same_as_sklearns_fits(search, estimator)
    # Promoted candidates continued their models.
    assert "Continued " in capsys.readouterr().out


def test_asynchronous_halving_on_samples(client):
    estimator = RandomForestClassifier(n_estimators=10, random_state=0)
    space = {"max_features": [0.2, 0.5, 0.8, 1.0], "min_samples_leaf": [1, 3, 9]}
    search = IPyParallelHalvingRandomSearchCV(
        estimator,
        space,
        n_candidates=12,
        factor=2,
        min_resources=60,
        cv=3,
        random_state=0,
        asynchronous=True,
        client=client,
    ).fit(X, Y)
    _check_levels(search)
    assert search.n_resources_[:2] == [60, 120]
    assert np.all(
        search.cv_results_["n_resources"]
        == np.take(search.n_resources_, search.cv_results_["iter"])
    )


def _forest_search(client, max_depth, min_resources, max_resources):
    """An asynchronous halving search of a forest's 9 candidates."""
    return IPyParallelHalvingGridSearchCV(
        RandomForestClassifier(max_depth=max_depth, random_state=0),
        {"max_features": [0.3, 0.6, 1.0], "min_samples_leaf": [1, 5, 10]},
        resource="n_estimators",
        max_resources=max_resources,
        min_resources=min_resources,
        cv=CV,
        asynchronous=True,
        client=client,
    )


def test_an_asynchronous_search_reports_its_levels_while_it_runs(client):
    search = _forest_search(client, 4, 5, 45)
    search.fit_async(X, Y)
    snapshots, progress = [], []
    deadline = time.monotonic() + 120
    while not search.done() and time.monotonic() < deadline:
        progress.append(search.progress())
        results = search.partial_results()
        if results is not None:
            snapshots.append(results)
        # Read after partial_results: it ranks at least those candidates.
        report = search.report()
        assert report.startswith("Progress:")
        assert results is None or "Rank 1:" in report
        time.sleep(0.01)
    search.wait()
    assert snapshots
    resources = [5, 15, 45]
    for results in snapshots:
        finished = np.ma.vstack(
            [results[f"split{k}_test_score"] for k in range(CV.get_n_splits())]
        )
        complete = np.ma.count_masked(finished, axis=0) == 0
        levels = {}
        for row, params in enumerate(results["params"]):
            level = resources.index(params["n_estimators"])
            levels.setdefault(level, {})[_searched(params, "n_estimators")] = complete[
                row
            ]
        # A candidate runs at a level only once all its splits below ended.
        for level, candidates in levels.items():
            if level:
                below = levels[level - 1]
                assert all(below.get(candidate) for candidate in candidates)
    done = [n_done for n_done, _ in progress]
    assert done == sorted(done)
    assert all(n_done <= n_total for n_done, n_total in progress)
    # Every row of the end's cv_results_ was reported as it ran, or it ended
    # as the search did.
    seen = {
        (_searched(params, None), params["n_estimators"])
        for results in snapshots
        for params in results["params"]
    }
    final = {
        (_searched(params, None), params["n_estimators"])
        for params in search.cv_results_["params"]
    }
    assert len(seen) > len(final) / 2
    assert seen <= final
    assert search.partial_results() is search.cv_results_


def test_an_engine_killed_during_an_asynchronous_search_changes_no_fit(cluster, client):
    search = _forest_search(client, 6, 30, 270)
    pids = client[:].apply_sync(os.getpid)
    try:
        search.fit_async(X, Y)
        # Once candidates were promoted, engines hold their models.
        deadline = time.monotonic() + 120
        while search.progress()[0] <= 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not search.done()
        os.kill(pids[0], signal.SIGKILL)
        search.wait()
        _check_levels(search)
        _same_as_sklearns_fits(search, search.estimator)
    finally:
        _restore_engines(cluster, client, 1)


class CountedClassifier(ClassifierMixin, BaseEstimator):
    """Logs each fit (its C, n_iter and training rows) to ``log_dir``."""

    def __init__(self, C=1.0, n_iter=1, log_dir=None, delay=0.0):
        self.C = C
        self.n_iter = n_iter
        self.log_dir = log_dir
        self.delay = delay

    def fit(self, X, y):
        time.sleep(self.delay)
        if self.log_dir is not None:
            rows = int(np.sum(X[:, 0] * 1000)) % 100003
            name = f"{os.getpid()}-{self.C}-{self.n_iter}-{rows}-{uuid.uuid4().hex}"
            with open(os.path.join(self.log_dir, name), "w"):
                pass
        self.classes_ = np.unique(y)
        self.score_ = 1.0 - abs(np.log10(self.C)) / (1 + self.n_iter)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])

    def score(self, X, y):
        return self.score_


def _fits(log_dir):
    """The fits logged on the engines (the refit, in this process, left out)."""
    return {
        name.split("-", 1)[1]
        for name in os.listdir(log_dir)
        if not name.startswith(f"{os.getpid()}-")
    }


def test_an_aborted_asynchronous_search_resumes_without_refitting(client, tmp_path):
    log_dir = tmp_path / "fits"
    log_dir.mkdir()
    estimator = CountedClassifier(log_dir=str(log_dir), delay=0.05)
    grid = {"C": list(np.logspace(-3, 3, 12))}
    kwargs = {
        "resource": "n_iter",
        "min_resources": 1,
        "max_resources": 9,
        "cv": CV,
        "asynchronous": True,
        "checkpoint_dir": str(tmp_path / "checkpoint"),
        "client": client,
    }
    search = IPyParallelHalvingGridSearchCV(estimator, grid, **kwargs)
    search.fit_async(X, Y)
    deadline = time.monotonic() + 60
    while search.progress()[0] < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    search.abort()
    n_saved = len(DirectoryCheckpoint(kwargs["checkpoint_dir"]))
    first = _fits(log_dir)
    assert 20 <= n_saved <= len(first)
    search.fit(X, Y)
    _check_levels(search)
    # The fits saved before the abort came from the checkpoint: only those
    # the abort stopped before their results came ran again.
    second = _fits(log_dir) - first
    ran_twice = {name.rsplit("-", 1)[0] for name in first} & {
        name.rsplit("-", 1)[0] for name in second
    }
    assert len(ran_twice) <= len(first) - n_saved


def test_asynchronous_halving_refuses_a_searched_resource(client):
    search = IPyParallelHalvingGridSearchCV(
        RandomForestClassifier(),
        {"n_estimators": [1, 2]},
        resource="n_estimators",
        max_resources=10,
        asynchronous=True,
        client=client,
    )
    with pytest.raises(ValueError, match="Cannot use parameter n_estimators"):
        search.fit(X, Y)


def test_a_time_budget_ends_an_asynchronous_search_with_what_finished(client):
    estimator = CountedClassifier(delay=0.1)
    grid = {"C": list(np.logspace(-3, 3, 12))}
    search = IPyParallelHalvingGridSearchCV(
        estimator,
        grid,
        resource="n_iter",
        min_resources=1,
        max_resources=9,
        cv=CV,
        asynchronous=True,
        time_budget=1.5,
        client=client,
    )
    with pytest.warns(UserWarning, match="time_budget=1.5 s ended the search"):
        search.fit(X, Y)
    _check_levels(search)
    assert search.n_candidates_[0] < 12
    assert len(search.cv_results_["params"]) == sum(search.n_candidates_)
    assert not np.any(np.isnan(search.cv_results_["mean_test_score"]))


class _FakeBackend:
    """What AsynchronousHalving needs of a backend: fits injected are recorded."""

    rounds = None

    def __init__(self):
        self.injected = []

    def inject(self, template, arguments, driven, job, position):
        self.injected.append((driven, arguments["parameters"]))


def _first_level_tasks(halving, n_candidates, n_splits):
    tasks = {}
    for candidate in range(n_candidates):
        for split in range(n_splits):
            task = types.SimpleNamespace(
                arguments={
                    "candidate_progress": (candidate, n_candidates),
                    "split_progress": (split, n_splits),
                    "estimator": RandomForestClassifier(),
                    "parameters": {"max_depth": candidate + 1},
                },
                driven=None,
            )
            halving.first_call_task(task)
            tasks[candidate, split] = task
    return tasks


def test_a_candidate_is_promoted_once_its_last_split_ends():
    backend = _FakeBackend()
    halving = AsynchronousHalving(
        backend,
        [{"max_depth": c + 1} for c in range(6)],
        [5, 15],
        "n_estimators",
        3,
        None,
    )
    tasks = _first_level_tasks(halving, 6, 3)

    def end(candidate, split, score):
        halving.done(tasks[candidate, split], True, {"test_scores": score})

    # Candidates 0, 1 and 2 end all their splits but candidate 2's last.
    for candidate, score in ((0, 0.5), (1, 0.6), (2, 0.9)):
        for split in range(3 if candidate < 2 else 2):
            end(candidate, split, score)
    assert backend.injected == []
    end(2, 2, 0.9)  # its mean 0.9 ranks first of 3: a third of 3 promoted
    assert [fit for fit, _ in backend.injected] == [(2, 1, 0), (2, 1, 1), (2, 1, 2)]
    assert backend.injected[0][1] == {"max_depth": 3, "n_estimators": 15}
    # The rest end; the level complete promotes its best 2 of 6, not 2 again.
    for candidate, score in ((3, 0.1), (4, 0.95), (5, 0.2)):
        for split in range(3):
            end(candidate, split, score)
    promoted = [fit[0] for fit, _ in backend.injected]
    assert promoted == [2, 2, 2, 4, 4, 4]
    assert not halving.promotions.done()
    for split in range(3):
        halving.done(
            types.SimpleNamespace(driven=(2, 1, split)), True, {"test_scores": 0.9}
        )
        halving.done(
            types.SimpleNamespace(driven=(4, 1, split)), True, {"test_scores": 0.9}
        )
    assert halving.promotions.done()
    assert halving.level_candidates(1) == [
        {"max_depth": 3, "n_estimators": 15},
        {"max_depth": 5, "n_estimators": 15},
    ]
