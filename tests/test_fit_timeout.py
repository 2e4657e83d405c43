"""fit_timeout: fits stopped at their limit fail as fits that raised.

On the session cluster: fits in Python stopped by their engine's signal,
fits that ignore the signal (as compiled code does) failed by the client
without waiting, the results of the others equal to scikit-learn's, the
checkpoint of a stopped fit, and bad values. The engine of a fit stuck past
its limit on the local cluster of a process is replaced (in a process of its
own, which starts that cluster).
"""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import sklearn_ipp
from sklearn_ipp import (
    FitTimeoutError,
    IPyParallelGridSearchCV,
    IPyParallelHalvingGridSearchCV,
)
from sklearn_ipp._messages import OVERDUE_GRACE_SECONDS
from sklearn_ipp._worker import NOT_STOPPED

from .test_watchdog import _client_environment

LIMIT = 1.0
RUNAWAY = 60.0  # seconds a runaway fit would take: never waited for


class Sleeper(ClassifierMixin, BaseEstimator):
    """Sleeps ``seconds`` in fit, in Python or, ``deaf``, deaf to signals.

    A deaf fit blocks the stop signal while it sleeps, as a call of compiled
    code that does not return to Python would ignore it: with ``deaf`` (a
    path), only the first fit to claim it (creating the file) sleeps, deaf,
    and writes ``deaf + ".done"`` when it ends. Each fit starts by writing a
    file into ``log``.
    """

    def __init__(self, seconds=0.0, deaf=None, log=None):
        self.seconds = seconds
        self.deaf = deaf
        self.log = log

    def fit(self, X, y):
        if self.log is not None:
            with open(os.path.join(self.log, f"{os.getpid()}-{time.time()}"), "w"):
                pass
        if self.deaf is None:
            time.sleep(self.seconds)
        elif _claim(self.deaf):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            try:
                time.sleep(self.seconds)
            finally:
                with open(self.deaf + ".done", "w"):
                    pass
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def _claim(path):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


X = np.random.RandomState(0).rand(60, 3)
y = np.arange(60) % 2


def _search(cls, grid, **kwargs):
    return cls(Sleeper(), grid, cv=KFold(3), fit_timeout=LIMIT, **kwargs)


def _fit_failed_warnings(search):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        search.fit(X, y)
    return [r for r in records if issubclass(r.category, FitFailedWarning)]


def test_fits_past_the_limit_fail_and_the_others_are_scikit_learns(client):
    grid = {"seconds": [0.0, RUNAWAY, 0.01]}
    search = _search(IPyParallelGridSearchCV, grid, error_score=-1.0)
    engines = sorted(client.ids)
    start = time.monotonic()
    (warning,) = _fit_failed_warnings(search)
    assert time.monotonic() - start < RUNAWAY / 2
    results = search.cv_results_
    # The stopped candidate: error_score on every split, its fit_time the
    # time it ran, last in rank.
    assert [results[f"split{k}_test_score"][1] for k in range(3)] == [-1.0] * 3
    assert LIMIT <= results["mean_fit_time"][1] < LIMIT + OVERDUE_GRACE_SECONDS
    assert results["rank_test_score"][1] == 3
    message = str(warning.message)
    assert "3 fits failed out of a total of 9" in message
    assert "FitTimeoutError: fit exceeded fit_timeout=1 s on engine " in message
    # The others: scikit-learn's, from a search of their own.
    reference = GridSearchCV(Sleeper(), {"seconds": [0.0, 0.01]}, cv=KFold(3))
    reference.fit(X, y)
    for key, values in reference.cv_results_.items():
        if "time" not in key and "rank" not in key:
            ours = [results[key][0], results[key][2]]
            assert ours == list(values), key
    assert search.best_params_ == {"seconds": 0.0}
    # The engines were freed, not ended.
    assert sorted(client.ids) == engines
    assert _search(IPyParallelGridSearchCV, {"seconds": [0.0]}).fit(X, y).n_splits_


def test_error_score_raise_raises_the_fit_timeout_error(client):
    search = _search(
        IPyParallelGridSearchCV, {"seconds": [RUNAWAY]}, error_score="raise"
    )
    with pytest.raises(FitTimeoutError) as raised:
        search.fit(X, y)
    assert isinstance(raised.value, TimeoutError)
    assert str(raised.value).startswith("fit exceeded fit_timeout=1 s on engine ")
    assert "(host " in str(raised.value)


def test_a_fit_deaf_to_the_signal_fails_without_being_waited_for(
    client, tmp_path, caplog
):
    # Under the backend, for unchanged scikit-learn code: one fit ignores the
    # signal for 8 s; the call ends long before, on the other engine.
    deaf = str(tmp_path / "deaf")
    estimator = Sleeper(seconds=8.0, deaf=deaf)
    start = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="sklearn_ipp"),
        warnings.catch_warnings(),
        parallel_config(backend="ipyparallel", fit_timeout=LIMIT),
    ):
        warnings.simplefilter("ignore", FitFailedWarning)
        results = cross_validate(Sleeper(), X, y, cv=KFold(3))
        deaf_results = cross_validate(estimator, X, y, cv=KFold(3))
    ended = time.monotonic() - start
    still_running = not os.path.exists(deaf + ".done")
    assert still_running, f"the call waited for the deaf fit ({ended:.1f} s)"
    assert not np.isnan(results["test_score"]).any()
    # The deaf fit failed, by the client, the time it ran past its limit:
    # soon after it, once its engine said it did not stop.
    failed = np.isnan(deaf_results["test_score"])
    assert failed.sum() == 1
    overdue = deaf_results["fit_time"][failed][0]
    assert LIMIT <= overdue < 8.0
    deadline = time.monotonic() + 20
    while "still runs a stopped task" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)
    # Its engine is left alone (not of a local cluster of this process) and
    # takes tasks again once the sleep ends.
    deadline = time.monotonic() + 30
    while not os.path.exists(deaf + ".done") and time.monotonic() < deadline:
        time.sleep(0.1)


def _time_limit_on_engine(deaf):
    """Run a sleep limited to 0.2 s here; return (stopped, what it published)."""
    import signal
    import time

    from sklearn_ipp import _worker

    published = []
    _worker.install_stop_handler()
    if deaf:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    stopped = False
    try:
        with _worker._TimeLimit(0.2, published.append):
            try:
                _worker._run_stoppable(time.sleep, (5.0,), {})
            except _worker.TasksStopped:
                stopped = True
        # Longer than the limit's wait for the signal to be seen.
        time.sleep(_worker.NOT_STOPPED_AFTER_SECONDS + 0.5)
    finally:
        if deaf:  # the pending signal comes now, outside any task
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        _worker.restore_user_handler()
    return stopped, published


def test_an_engine_says_when_a_fit_does_not_stop_at_its_limit(client):
    # The signal stops a fit in Python at once, and nothing is said. A fit
    # that does not see it (blocked, as in compiled code) runs on, stopped
    # only once back in Python, and the engine says so meanwhile, for the
    # client to fail it without waiting for its grace.
    engine = client[client.ids[0]]
    assert engine.apply_sync(_time_limit_on_engine, False) == (True, [])
    deaf = engine.apply_sync(_time_limit_on_engine, True)
    assert deaf == (True, [{NOT_STOPPED: True}])


def test_curves_and_halving_take_fit_timeout(client):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitFailedWarning)
        _, test_scores = sklearn_ipp.validation_curve(
            Sleeper(),
            X,
            y,
            param_name="seconds",
            param_range=[0.0, RUNAWAY],
            cv=KFold(3),
            fit_timeout=LIMIT,
        )
        assert not np.isnan(test_scores[0]).any()
        assert np.isnan(test_scores[1]).all()
        halving = _search(
            IPyParallelHalvingGridSearchCV,
            {"seconds": [0.0, RUNAWAY, 0.0, 0.0]},
            min_resources=20,
            factor=2,
        ).fit(X, y)
    # The stopped candidate failed in the first round, and went no further.
    first = halving.cv_results_["iter"] == 0
    scores = halving.cv_results_["mean_test_score"]
    assert np.isnan(scores[first][1])
    assert RUNAWAY not in halving.cv_results_["param_seconds"][~first]


class SleepingScaler(StandardScaler):
    """A StandardScaler that sleeps ``seconds`` in fit."""

    def __init__(self, seconds=0.0):
        super().__init__()
        self.seconds = seconds

    def fit(self, X, y=None, sample_weight=None):
        time.sleep(self.seconds)
        return super().fit(X, y, sample_weight)


@pytest.mark.parametrize("slow", ["prefix", "last step"])
def test_fits_on_a_shared_pipeline_prefix_are_limited(client, slow, capsys):
    # The first two candidates share their scaler, fitted once per split for
    # both. A runaway scaler fails, and both candidates, fitted whole, time
    # out; a runaway last step times out on the prefix, and is failed whole.
    pipeline = Pipeline([("scale", SleepingScaler()), ("clf", Sleeper())])
    if slow == "prefix":
        shared = {"scale__seconds": [RUNAWAY], "clf__seconds": [0.0, 0.001]}
    else:
        shared = {"clf__seconds": [0.0, RUNAWAY]}
    grid = [shared, {"scale__seconds": [0.002]}]
    search = IPyParallelGridSearchCV(
        pipeline, grid, cv=KFold(3), fit_timeout=LIMIT, verbose=1
    )
    start = time.monotonic()
    (warning,) = _fit_failed_warnings(search)
    assert time.monotonic() - start < RUNAWAY / 2
    said = capsys.readouterr().out
    failed = list(np.isnan(search.cv_results_["mean_test_score"]))
    if slow == "prefix":
        assert failed == [True, True, False]
        assert "6 fits failed out of a total of 9" in str(warning.message)
    else:
        assert failed == [False, True, False]
        assert "3 fits failed out of a total of 9" in str(warning.message)
        # The shared prefix was fitted once per split for both candidates.
        assert "Fitted 3 pipeline prefixes once per split" in said
    assert "FitTimeoutError: fit exceeded fit_timeout=1 s" in str(warning.message)


def test_the_checkpoint_keeps_a_stopped_fit_for_the_same_or_a_smaller_limit(
    client, tmp_path
):
    log = tmp_path / "log"
    log.mkdir()
    grid = {"seconds": [0.0, 3.0]}

    def fit(limit):
        before = set(os.listdir(log))
        search = IPyParallelGridSearchCV(
            Sleeper(log=str(log)),
            grid,
            cv=KFold(3),
            fit_timeout=limit,
            checkpoint_dir=tmp_path / "checkpoint",
            refit=False,  # which would fit here too
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitFailedWarning)
            search.fit(X, y)
        return search.cv_results_["mean_test_score"], len(set(os.listdir(log)) - before)

    scores, n_fits = fit(LIMIT)
    assert n_fits == 6 and math.isnan(scores[1])
    # Saved as stopped at 1 s: not run again under 1 s, or 0.5 s.
    for limit in (LIMIT, LIMIT / 2):
        again, n_fits = fit(limit)
        assert n_fits == 0 and math.isnan(again[1])
    # Run again under a larger limit, which lets them finish.
    again, n_fits = fit(10.0)
    assert n_fits == 3 and not math.isnan(again[1])


@pytest.mark.parametrize("value", [0, -1.0, "1", float("nan")])
def test_bad_fit_timeouts_are_value_errors_naming_it(client, value):
    search = IPyParallelGridSearchCV(Sleeper(), {"seconds": [0.0]}, fit_timeout=value)
    with pytest.raises(ValueError, match="'fit_timeout' parameter"):
        search.fit(X, y)
    with pytest.raises(ValueError, match="fit_timeout must be None or a number"):
        sklearn_ipp.learning_curve(Sleeper(), X, y, fit_timeout=value)
    with (
        pytest.raises(ValueError, match="fit_timeout must be None or a number"),
        parallel_config(backend="ipyparallel", fit_timeout=value),
    ):
        cross_validate(Sleeper(), X, y, cv=2)


# A cluster this process started, whose engine stuck past fit_timeout is
# ended and replaced while the search goes on: sklearn_ipp's own local
# cluster (client=None), or an ipyparallel.Cluster given as client.
_STUCK_PAST_LIMIT_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys, time, warnings
    import ipyparallel as ipp
    import numpy as np
    import sklearn_ipp
    from sklearn.exceptions import FitFailedWarning
    from sklearn.model_selection import KFold
    from tests.test_fit_timeout import Sleeper, X, y

    logging.basicConfig(level=logging.WARNING)  # to see sklearn_ipp's
    if sys.argv[2] == "cluster object":
        cluster = ipp.Cluster(n=2, log_level=40)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(2, timeout=120)
    else:
        cluster = None
        client = sklearn_ipp.get_client()
    before = set(client.ids)
    grid = [{"seconds": [0.0]}, {"seconds": [600.0], "deaf": [sys.argv[1]]}]
    search = sklearn_ipp.IPyParallelGridSearchCV(
        Sleeper(), grid, cv=KFold(2), fit_timeout=1.0, client=cluster
    )
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitFailedWarning)
        search.fit(X, y)
    wall = time.monotonic() - start
    deadline = time.monotonic() + 60
    # The ended engine leaves the cluster, its replacement joins.
    while time.monotonic() < deadline and not (
        len(client.ids) == len(before) and set(client.ids) != before
    ):
        time.sleep(0.1)
    print(json.dumps({
        "wall": wall,
        "scores": [None if np.isnan(s) else s
                   for s in search.cv_results_["mean_test_score"]],
        "replaced": len(before - set(client.ids)),
        "n_engines": [len(before), len(client.ids)],
    }))
    if cluster is not None:
        cluster.stop_cluster_sync()
    """
)


@pytest.mark.parametrize("started_as", ["local cluster", "cluster object"])
def test_an_engine_stuck_past_the_limit_is_replaced_on_a_cluster_started_here(
    tmp_path, started_as
):
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = _client_environment(tmp_path)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [checkout, environment.get("PYTHONPATH")])
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _STUCK_PAST_LIMIT_SCRIPT,
            str(tmp_path / "deaf"),
            started_as,
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["wall"] < 60, report
    assert report["scores"][0] is not None and report["scores"][1] is None
    assert report["replaced"] == 1
    assert report["n_engines"][0] == report["n_engines"][1]
    assert "was ended, and a new engine started in its place" in completed.stderr
