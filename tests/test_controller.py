"""A controller that stops answering ends the call with an error that says so."""

import logging
import os
import threading
import time

import ipyparallel as ipp
import numpy as np
import psutil
import pytest
from sklearn.svm import SVC

from sklearn_ipp import ControllerLostError, IPyParallelGridSearchCV, _controller
from sklearn_ipp._cluster import ClusterConnection
from sklearn_ipp._controller import ControllerWatch


class _FakeClient:
    def __init__(self, answers):
        self.answers = answers
        self.asked = 0
        self.released = threading.Event()
        self._config = {"registration": "tcp://10.0.0.1:5555"}

    def queue_status(self):
        self.asked += 1
        if not self.answers:
            self.released.wait()  # a controller that is gone: no answer


@pytest.fixture
def quick_watch(monkeypatch):
    monkeypatch.setattr(_controller, "QUIET_SECONDS", 0.2)
    monkeypatch.setattr(_controller, "CONTROLLER_TIMEOUT", 0.5)


@pytest.fixture
def prompt_watch(monkeypatch):
    # Against a real controller on a loaded machine: long enough that it
    # always answers in time while it runs.
    monkeypatch.setattr(_controller, "QUIET_SECONDS", 1.0)
    monkeypatch.setattr(_controller, "CONTROLLER_TIMEOUT", 4.0)


def _check_for(watch, seconds, busy=True):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        watch.check(lambda: busy, 3, 10)
        time.sleep(0.02)


def test_a_controller_that_answers_is_asked_only_when_replies_stop(quick_watch):
    client = _FakeClient(answers=True)
    watch = ControllerWatch(ClusterConnection(client, source="profile 'big'"))
    _check_for(watch, 1.0)
    assert client.asked >= 2  # asked after each quiet spell, and answered
    idle = _FakeClient(answers=True)
    watch = ControllerWatch(ClusterConnection(idle))
    _check_for(watch, 0.5, busy=False)
    assert idle.asked == 0  # nothing runs: nothing to ask
    watch.check(lambda: True, 0, 1)  # a new call: the idle time was no silence
    assert idle.asked == 0


def test_a_controller_that_does_not_answer_ends_the_call(quick_watch):
    client = _FakeClient(answers=False)
    watch = ControllerWatch(ClusterConnection(client, source="profile 'big'"), " kept")
    try:
        with pytest.raises(ControllerLostError) as info:
            _check_for(watch, 5.0)
    finally:
        client.released.set()
    message = str(info.value)
    assert "profile 'big'" in message and "tcp://10.0.0.1:5555" in message
    assert "3 of 10 tasks" in message and message.endswith(" kept")
    assert (info.value.n_done, info.value.n_submitted) == (3, 10)


class _SlowSVC(SVC):
    def __init__(self, C=1.0):
        super().__init__(C=C)

    def fit(self, X, y):
        time.sleep(0.3)
        return super().fit(X, y)


def test_losing_the_controller_ends_the_fit_and_keeps_the_results(
    tmp_path, prompt_watch
):
    cluster = ipp.Cluster(
        n=2,
        profile_dir=str(tmp_path / "profile"),
        log=logging.getLogger("sklearn_ipp.tests"),
    )
    client = cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(2, timeout=60)
        rng = np.random.RandomState(0)
        X, y = rng.randn(60, 4), rng.randint(0, 2, 60)
        checkpoint_dir = tmp_path / "checkpoint"
        search = IPyParallelGridSearchCV(
            _SlowSVC(),
            {"C": list(np.linspace(0.1, 2.0, 30))},
            cv=3,
            client=client,
            checkpoint_dir=checkpoint_dir,
        )
        search.fit_async(X, y)
        deadline = time.monotonic() + 60
        while not (checkpoint_dir.exists() and len(os.listdir(checkpoint_dir)) >= 4):
            assert time.monotonic() < deadline, "no fit finished"
            time.sleep(0.05)
        controller = psutil.Process(cluster.controller.process.pid)
        for process in [controller, *controller.children(recursive=True)]:
            process.kill()
        killed = time.monotonic()
        with pytest.raises(ControllerLostError) as info:
            search.wait(timeout=60)  # returns False, not raising, if it hangs
        assert time.monotonic() - killed < 30
        message = str(info.value)
        assert "Lost the ipyparallel controller" in message
        assert client._config["registration"] in message
        assert "fits failed" not in message and "misconfigured" not in message
        saved = len(os.listdir(checkpoint_dir))
        assert 4 <= saved < 90
        assert info.value.n_done >= saved
        assert "failed: ControllerLostError" in search.report().splitlines()[0]
    finally:
        client.close()
        cluster.stop_cluster_sync()
