"""Searches, curves and the backend wait ``engine_wait`` for engines to come.

A controller runs with no engine, as on a batch cluster whose engines' job is
still in the queue.
"""

import os
import re
import subprocess
import sys
import threading
import time

import ipyparallel as ipp
import pytest
from joblib import parallel_config
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score

from sklearn_ipp import EngineTimeoutError, IPyParallelGridSearchCV, learning_curve

from ._sklearn_compare import assert_same_search
from .conftest import engine_connection_file


@pytest.fixture(scope="module")
def queued(ipython_dir):
    """A running controller without engines: ``(cluster, profile directory)``."""
    profile_dir = os.path.join(ipython_dir, "profile_queued")
    cluster = ipp.Cluster(n=0, profile_dir=profile_dir, cluster_id="")
    cluster.start_controller_sync()
    yield cluster, profile_dir
    cluster.stop_cluster_sync()


def _data():
    return make_classification(n_samples=80, n_features=5, random_state=0)


def _grid(search_class=IPyParallelGridSearchCV, **kwargs):
    return search_class(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2, **kwargs)


def _search(profile_dir, wait):
    _grid(client=profile_dir, engine_wait=wait).fit(*_data())


def _learning_curve(profile_dir, wait):
    learning_curve(
        LogisticRegression(), *_data(), cv=2, client=profile_dir, engine_wait=wait
    )


def _backend(profile_dir, wait):
    with parallel_config(backend="ipyparallel", client=profile_dir, engine_wait=wait):
        cross_val_score(LogisticRegression(), *_data(), cv=2)


@pytest.mark.parametrize("entry", [_search, _learning_curve, _backend])
def test_no_engine_within_engine_wait_says_how_many_came(queued, entry):
    _, profile_dir = queued
    started = time.monotonic()
    with pytest.raises(EngineTimeoutError) as info:
        entry(profile_dir, 1.5)
    waited = time.monotonic() - started
    message = str(info.value)
    assert re.search(r"within 1\.5 s, but 0 did\.", message), message
    assert "engine_wait=" in message
    # The time given, not the default minute.
    assert 1.5 <= waited < 30


def test_a_search_starts_once_queued_engines_come(queued):
    cluster, profile_dir = queued
    engines = []

    def start_engine():  # the batch job leaves the queue
        engines.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ipyparallel.engine",
                    f"--file={engine_connection_file(cluster)}",
                    "--log-level=40",
                ]
            )
        )

    X, y = _data()
    timer = threading.Timer(2.0, start_engine)
    timer.start()
    try:
        ours = _grid(client=profile_dir, engine_wait=120).fit(X, y)
    finally:
        timer.cancel()
        timer.join()
        for engine in engines:
            engine.terminate()
            engine.wait(timeout=30)
    assert len(engines) == 1  # it waited for the engine: none was there before
    assert_same_search(ours, _grid(GridSearchCV).fit(X, y), X)


def test_engine_wait_is_checked_as_scikit_learn_checks_parameters():
    with pytest.raises(ValueError, match=r"'engine_wait' parameter .* must be"):
        _grid(engine_wait=-1).fit(*_data())
