"""Surviving the cluster: engines that die or join, interrupts, resuming.

These tests kill and start engines of the session cluster; each puts the
cluster back to ``N_ENGINES`` engines before it ends.
"""

import json
import os
import pickle
import signal
import textwrap
import threading
import time
import uuid

import cloudpickle
import numpy as np
import psutil
import pytest
from joblib import Parallel, delayed, parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV

from sklearn_ipp import EngineLostError, IPyParallelGridSearchCV, _worker
from sklearn_ipp._backend import ClusterBackend
from sklearn_ipp._messages import MAX_STOPS
from sklearn_ipp._worker import STOP_SIGNAL, STOPPED, run_batch

from ._sklearn_compare import assert_same_search
from .conftest import N_ENGINES, fake_host, on_engine


class LoggedClassifier(ClassifierMixin, BaseEstimator):
    """Sleeps ``delay`` s in fit, records each fit, and can kill its engine.

    Each fit writes a file named after its process into ``start_dir`` when it
    starts and into ``log_dir`` when it ends. When the file ``kill_flag``
    exists, the first fit to claim it (by renaming it) kills its own process
    with SIGKILL; with ``kill_always``, every fit of ``C == kill_always`` does.
    Once the file ``no_delay_flag`` exists, fits no longer sleep.
    """

    def __init__(
        self,
        C=1.0,
        delay=0.0,
        log_dir=None,
        kill_flag=None,
        kill_always=None,
        start_dir=None,
        no_delay_flag=None,
    ):
        self.C = C
        self.delay = delay
        self.log_dir = log_dir
        self.kill_flag = kill_flag
        self.kill_always = kill_always
        self.start_dir = start_dir
        self.no_delay_flag = no_delay_flag

    def fit(self, X, y):
        if self.start_dir is not None:
            with open(os.path.join(self.start_dir, f"{os.getpid()}-started"), "w"):
                pass
        if self.kill_always is not None and self.kill_always == self.C:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kill_flag is not None:
            try:
                os.rename(self.kill_flag, f"{self.kill_flag}.{os.getpid()}")
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        if self.no_delay_flag is None or not os.path.exists(self.no_delay_flag):
            time.sleep(self.delay)
        if self.log_dir is not None:
            name = f"{os.getpid()}-{uuid.uuid4().hex}"
            with open(os.path.join(self.log_dir, name), "w") as f:
                f.write(repr(self.C))
        self.classes_ = np.unique(y)
        self.mean_ = float(np.mean(X)) * self.C
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])

    def score(self, X, y):
        return self.mean_ + float(np.mean(X[:, 0]))


def _logged_fits(log_dir):
    """The engine processes that ran the fits logged in ``log_dir``.

    One per fit; the refit of the best candidate, run by this process, is
    not counted.
    """
    pids = [int(name.split("-")[0]) for name in os.listdir(log_dir)]
    return [pid for pid in pids if pid != os.getpid()]


def _data():
    return make_classification(n_samples=200, n_features=5, random_state=0)


def _restore_engines(cluster, client, n_killed):
    """Start engines until the session cluster has N_ENGINES again."""
    # The client hears of dead engines a moment after their tasks fail.
    deadline = time.monotonic() + 30
    while len(client.ids) > N_ENGINES - n_killed and time.monotonic() < deadline:
        time.sleep(0.1)
    missing = N_ENGINES - len(client.ids)
    if missing > 0:
        cluster.start_engines_sync(n=missing)
    client.wait_for_engines(N_ENGINES, timeout=120)


def test_search_survives_an_engine_killed_during_a_fit(cluster, client, tmp_path):
    flag = tmp_path / "kill-one-engine"
    grid = {"C": [1.0, 2.0, 3.0, 4.0]}
    estimator = LoggedClassifier(delay=0.2, kill_flag=str(flag))
    X, y = _data()
    reference = GridSearchCV(estimator, grid, cv=3).fit(X, y)  # no flag yet
    flag.touch()
    ids_before = set(client.ids)
    try:
        ours = IPyParallelGridSearchCV(estimator, grid, cv=3, client=client).fit(X, y)
        # One engine died in a fit, and its tasks ran elsewhere.
        assert not flag.exists()
        assert len(ids_before - set(client.ids)) == 1
        assert_same_search(ours, reference, X)
    finally:
        _restore_engines(cluster, client, 1)


@pytest.mark.parametrize("retries", [1, 0])
def test_backend_call_retries_tasks_of_a_killed_engine(
    cluster, client, tmp_path, retries
):
    flag = tmp_path / "kill-one-engine"
    flag.touch()
    estimator = LoggedClassifier(kill_flag=str(flag))
    X, y = _data()
    backend = ClusterBackend(client, retries=retries)
    try:
        with parallel_config(backend=backend):
            if retries:
                fitted = Parallel(n_jobs=-1)(
                    delayed(estimator.fit)(X, y) for _ in range(6)
                )
                assert backend.n_retried >= 1
                assert [est.mean_ for est in fitted] == [np.mean(X)] * 6
            else:
                with pytest.raises(EngineLostError, match=r"retries=0"):
                    Parallel(n_jobs=-1)(delayed(estimator.fit)(X, y) for _ in range(6))
    finally:
        backend.close()
        _restore_engines(cluster, client, 1)


def test_losing_every_engine_keeps_the_finished_fits(cluster, client, tmp_path):
    # No engine comes back within 3 s: the search fails...
    log_dir = tmp_path / "fits"
    log_dir.mkdir()
    X, y = _data()
    estimator = LoggedClassifier(delay=0.1, log_dir=str(log_dir), kill_always=99.0)
    search = IPyParallelGridSearchCV(
        estimator,
        {"C": [1.0, 2.0, 3.0, 4.0, 99.0]},
        cv=2,
        client=client,
        engine_wait=3.0,
    )
    try:
        with pytest.raises(EngineLostError) as info:
            search.fit(X, y)
        assert "run the call again" in str(info.value) or "retries=" in str(info.value)
        assert "runs only the rest" in str(info.value)
        kept = len(search._unfinished_fits)
        assert kept >= 1
    finally:
        _restore_engines(cluster, client, N_ENGINES)
    # ...and once engines are back, fitting again runs only what is missing.
    n_before = len(_logged_fits(log_dir))
    grid = {"C": [1.0, 2.0, 3.0, 4.0]}
    search.set_params(param_grid=grid).fit(X, y)
    assert len(_logged_fits(log_dir)) - n_before == 4 * 2 - kept
    assert not hasattr(search, "_unfinished_fits")
    reference = GridSearchCV(estimator, grid, cv=2).fit(X, y)
    assert_same_search(search, reference, X)


def test_engines_started_during_a_search_get_tasks(cluster, client, tmp_path):
    log_dir = tmp_path / "fits"
    log_dir.mkdir()
    no_delay = tmp_path / "a-new-engine-fitted"
    X, y = _data()
    estimator = LoggedClassifier(
        delay=0.5, log_dir=str(log_dir), no_delay_flag=str(no_delay)
    )
    grid = {"C": [float(c) for c in range(1, 21)]}
    started = []
    old_pids = set(client[:].apply_sync(os.getpid))

    def start_engines_once_running():
        while not os.listdir(log_dir):
            time.sleep(0.05)
        started.append(cluster.start_engines_sync(n=2))
        # The rest of the search runs fast once a new engine did a fit, so
        # that the test takes as long as the engines take to join; without
        # them, 80 fits of 0.5 s last about 20 s.
        deadline = time.monotonic() + 60
        while set(_logged_fits(log_dir)) <= old_pids and time.monotonic() < deadline:
            time.sleep(0.05)
        no_delay.touch()

    starter = threading.Thread(target=start_engines_once_running)
    starter.start()
    ids_before = set(client.ids)
    try:
        ours = IPyParallelGridSearchCV(estimator, grid, cv=4, client=client).fit(X, y)
        starter.join()
        # The search can end as soon as one new engine did a fit, before the
        # other has registered.
        client.wait_for_engines(len(ids_before) + 2, timeout=60)
        new_ids = sorted(set(client.ids) - ids_before)
        assert len(new_ids) == 2
        new_pids = set(client[new_ids].apply_sync(os.getpid))
        assert new_pids & set(_logged_fits(log_dir))
        reference = GridSearchCV(LoggedClassifier(delay=0.0), grid, cv=4).fit(X, y)
        np.testing.assert_array_equal(
            ours.cv_results_["mean_test_score"],
            reference.cv_results_["mean_test_score"],
        )
    finally:
        starter.join()
        for engine_set in started:
            cluster.stop_engines_sync(engine_set)
        deadline = time.monotonic() + 60
        while len(client.ids) > N_ENGINES and time.monotonic() < deadline:
            time.sleep(0.1)


def _interrupt_main_thread_when(condition, timeout=60):
    """Send SIGINT to the main thread once ``condition()`` holds."""
    main = threading.main_thread().ident

    def wait_then_interrupt():
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=wait_then_interrupt, daemon=True)
    thread.start()
    return thread


def _busy_engines(client):
    # The controller keeps the last status of engines that died: not those.
    status = client.queue_status(targets=client.ids)
    return {
        engine_id: queue
        for engine_id, queue in status.items()
        if engine_id != "unassigned" and (queue["queue"] or queue["tasks"])
    }


def _send_stop_signals(client, stop, seconds_between=0.003):
    """Send ``STOP_SIGNAL`` to every engine until ``stop`` is set.

    First give every engine its handler by running a batch there: an engine
    that has never run one would die of the signal. Engines that join later
    get no signal.
    """
    engines = list(client.ids)
    client[engines].apply_sync(run_batch, cloudpickle.dumps(([], None)))

    def keep_signalling():
        while not stop.is_set():
            sent = client.send_signal(STOP_SIGNAL, targets=engines, block=False)
            sent.result(timeout=10)  # an engine that died ends the signalling
            time.sleep(seconds_between)

    thread = threading.Thread(target=keep_signalling, daemon=True)
    thread.start()
    return thread


def test_stop_signals_that_come_late_break_no_message(client):
    # A stop signal can reach an engine late: after the message it was meant
    # for has ended, as the engine unpacks its next message, runs it or
    # replies. Every message must still reply, its tasks done or stopped.
    engine = client.ids[0]
    view = client[engine]
    payload = cloudpickle.dumps(([(time.sleep, (0.002,), {})], None))
    stop = threading.Event()
    signaller = _send_stop_signals(client, stop)
    try:
        replies = [view.apply_async(run_batch, payload) for _ in range(200)]
        outcomes = [pickle.loads(reply.get(timeout=30))[0] for reply in replies]
    finally:
        stop.set()
        signaller.join(timeout=30)
    kinds = {tuple(o) for o in outcomes}
    assert kinds <= {((True, None),), ((STOPPED,),)}
    assert ((STOPPED,),) in kinds  # the signals did land


def test_a_stop_signal_between_tasks_stops_the_tasks_still_to_run(monkeypatch):
    # The client signals an engine as soon as ipyparallel says it started a
    # message: the signal may come before the first task, or between two.
    # As the engine's handler sees it then: a message runs, no task does.
    monkeypatch.setattr(_worker, "_batch_running", True)
    monkeypatch.setattr(_worker, "_stop_pending", False)
    signum = getattr(signal, STOP_SIGNAL)
    _worker._stop_tasks(signum, None)
    ran = []
    with pytest.raises(_worker.TasksStopped):
        _worker._run_stoppable(ran.append, (1,), {})
    assert ran == []  # stopped before it started
    _worker._run_stoppable(ran.append, (2,), {})
    assert ran == [2]  # once
    # Not for tasks that may not be stopped, nor outside a message.
    monkeypatch.setattr(_worker, "_stoppable", False)
    _worker._stop_tasks(signum, None)
    monkeypatch.setattr(_worker, "_stoppable", True)
    monkeypatch.setattr(_worker, "_batch_running", False)
    _worker._stop_tasks(signum, None)
    _worker._run_stoppable(ran.append, (3,), {})
    assert ran == [2, 3]


@pytest.mark.parametrize(
    "square", ["_square_once_stopped", "_square_catching_the_stop"]
)
def test_tasks_stopped_by_a_late_stop_signal_run_again(client, tmp_path, square):
    # A stop signal meant for another message, which has just ended on that
    # engine, stops the tasks of this call: they must run again, not fail.
    # The signal is sent while a task of this call is sure to run: task 0
    # writes its process id and waits for the signal, the first time only.
    started = tmp_path / "started"
    signalled = threading.Event()

    def signal_the_engine_running_task_0():
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(int(started.read_text()), getattr(signal, STOP_SIGNAL))
        signalled.set()

    signaller = threading.Thread(target=signal_the_engine_running_task_0)
    signaller.start()
    backend = ClusterBackend(client)
    try:
        with parallel_config(backend=backend):
            squares = Parallel(n_jobs=-1)(
                delayed(globals()[square])(i, str(started)) for i in range(20)
            )
    finally:
        signaller.join(timeout=90)
        backend.close()
    assert signalled.is_set()
    assert backend.n_stopped >= 1
    assert squares == [i * i for i in range(20)]


def _square_once_stopped(i, started):
    """Return ``i * i``; task 0 first waits to be stopped by a signal."""
    if i == 0 and not os.path.exists(started):
        with open(started + ".part", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".part", started)
        time.sleep(60)  # ended by the stop signal
        raise AssertionError("The stop signal did not stop the task.")
    time.sleep(0.01)
    return i * i


def _nap(i):
    time.sleep(0.05)
    return i


def test_stray_stop_signals_stop_each_task_a_bounded_number_of_times(client):
    # Another client keeps signalling the engines: tasks stopped MAX_STOPS
    # times run in messages that signals do not stop, and the call ends.
    engines = sorted(client.ids)
    stop = threading.Event()
    signaller = _send_stop_signals(client, stop, seconds_between=0.01)
    backend = ClusterBackend(client)
    try:
        with parallel_config(backend=backend):
            results = Parallel(n_jobs=-1)(delayed(_nap)(i) for i in range(60))
    finally:
        stop.set()
        signaller.join(timeout=30)
        backend.close()
    assert results == list(range(60))
    assert 0 < backend.n_stopped <= MAX_STOPS * 60
    assert sorted(client.ids) == engines  # no engine died of a signal
    client[engines].apply_sync(os.getpid)


@on_engine
def _install_user_handler(path):
    import signal

    def users_handler(signum, frame):
        with open(path, "a") as f:
            f.write("called\n")

    signal.signal(signal.SIGUSR1, users_handler)


@on_engine
def _handler_name():
    import signal

    return getattr(signal.getsignal(signal.SIGUSR1), "__name__", None)


@on_engine
def _forget_user_handler():
    import signal

    from sklearn_ipp._worker import install_stop_handler

    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    install_stop_handler()


def test_the_users_own_stop_signal_handler_is_restored(client, tmp_path):
    engine = client.ids[-1]
    called = tmp_path / "called"
    client[engine].apply_sync(_install_user_handler, str(called))
    try:
        backend = ClusterBackend(client.load_balanced_view(targets=[engine]))
        try:
            with parallel_config(backend=backend):
                assert Parallel(n_jobs=-1)(delayed(_nap)(i) for i in range(4)) == [
                    0,
                    1,
                    2,
                    3,
                ]
        finally:
            backend.close()
        assert client[engine].apply_sync(_handler_name) == "users_handler"
        client.send_signal(STOP_SIGNAL, targets=[engine], block=True)
        deadline = time.monotonic() + 10
        while not called.exists():
            assert time.monotonic() < deadline, "the user's handler was not called"
            time.sleep(0.05)
    finally:
        client[engine].apply_sync(_forget_user_handler)
    assert client[engine].apply_sync(_handler_name) == "_stop_tasks"


def test_a_stop_signal_never_kills_an_engine_that_was_only_probed(cluster, client):
    from sklearn_ipp import engine_facts

    with fake_host(cluster, client, "fakehost-signals", n_engines=1) as [engine]:
        [pid] = client[engine].apply_sync(os.getpid) and [
            engine_facts(client[[engine]])[engine]["pid"]
        ]
        client.send_signal(STOP_SIGNAL, targets=[engine], block=True)
        time.sleep(1)  # a signal that killed it would have by now
        assert client[engine].apply_sync(os.getpid) == pid


def _square_catching_the_stop(i, started):
    """Like ``_square_once_stopped``, but task 0 catches the stop and returns.

    As scikit-learn's MLP does with KeyboardInterrupt: it ends its training
    early and returns normally, which must not pass for a finished task.
    """
    try:
        return _square_once_stopped(i, started)
    except KeyboardInterrupt:
        return -1


def test_keyboard_interrupt_stops_the_fits_and_frees_the_engines(client, tmp_path):
    log_dir, start_dir, store_dir = (tmp_path / n for n in ("fits", "started", "store"))
    for directory in (log_dir, start_dir, store_dir):
        directory.mkdir()
    X, y = _data()
    # Fits of 60 s: only an interrupt of the engines ends them in time.
    estimator = LoggedClassifier(
        delay=60.0, log_dir=str(log_dir), start_dir=str(start_dir)
    )
    search = IPyParallelGridSearchCV(
        estimator, {"C": [1.0, 2.0, 3.0]}, cv=3, client=client, store_dir=store_dir
    )
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    # Interrupted once every engine runs a fit.
    interrupter = _interrupt_main_thread_when(
        lambda: len(os.listdir(start_dir)) >= N_ENGINES
    )
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        search.fit(X, y)
    interrupter.join()
    assert time.monotonic() - start < 50
    assert os.listdir(store_dir) == []
    deadline = time.monotonic() + 20
    while _busy_engines(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _busy_engines(client) == {}
    assert _logged_fits(log_dir) == []  # no fit ran to its end
    children_after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert children_after <= children_before
    # The cluster takes the next fit at once.
    search.set_params(estimator=LoggedClassifier(delay=0.0)).fit(X, y)
    assert len(search.cv_results_["params"]) == 3


_INTERRUPTED_SCRIPT = textwrap.dedent(
    """
    import json, time
    import psutil
    from sklearn.datasets import make_classification
    from sklearn.dummy import DummyClassifier
    from sklearn_ipp import IPyParallelGridSearchCV, engine_facts

    class Sleeping(DummyClassifier):
        def fit(self, X, y):
            time.sleep(60)
            return super().fit(X, y)

    engine_facts()  # starts this process's own local cluster
    # The controller, the engines and their nannies.
    cluster = psutil.Process().children(recursive=True)
    print(json.dumps(sorted(process.pid for process in cluster)), flush=True)
    X, y = make_classification(n_samples=100, random_state=0)
    search = IPyParallelGridSearchCV(Sleeping(), {"strategy": ["prior", "uniform"]})
    search.fit(X, y)
    """
)


def test_interrupted_process_leaves_no_cluster_process_behind(tmp_path):
    import subprocess
    import sys

    # A fresh IPYTHONDIR: the script starts (and owns) a local cluster.
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"))
    process = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        cluster_pids = json.loads(process.stdout.readline())
        assert cluster_pids and all(psutil.pid_exists(pid) for pid in cluster_pids)
        time.sleep(3)  # the search is running
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert "KeyboardInterrupt" in stderr
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) for pid in cluster_pids):
        assert time.monotonic() < deadline, "cluster processes outlived their process"
        time.sleep(0.2)


def test_interrupted_search_resumes_from_its_checkpoint(client, tmp_path):
    log_dir = tmp_path / "fits"
    log_dir.mkdir()
    checkpoint_dir = tmp_path / "checkpoint"
    X, y = _data()
    grid = {"C": [1.0, 2.0, 3.0, 4.0]}
    n_fits = len(grid["C"]) * 3

    def search(estimator, grid=grid):
        return IPyParallelGridSearchCV(
            estimator, grid, cv=3, client=client, checkpoint_dir=checkpoint_dir
        )

    slow = LoggedClassifier(delay=0.3, log_dir=str(log_dir))
    interrupter = _interrupt_main_thread_when(
        lambda: checkpoint_dir.exists() and len(os.listdir(checkpoint_dir)) >= 3
    )
    interrupted = search(slow)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(X, y)
    interrupter.join()
    # The finished fits are reported, as after abort().
    report = interrupted.report().splitlines()
    assert report[0].endswith(", stopped")
    assert report[1].startswith("Rank 1: validation: ")
    # The interrupted messages reply a moment later: wait for idle engines,
    # and check that no fit ended after the interrupt.
    finished = len(_logged_fits(log_dir))
    deadline = time.monotonic() + 20
    while _busy_engines(client):
        assert time.monotonic() < deadline, "engines still busy after the interrupt"
        time.sleep(0.1)
    assert len(_logged_fits(log_dir)) == finished
    saved = len(os.listdir(checkpoint_dir))
    assert 3 <= saved < n_fits
    assert oct(checkpoint_dir.stat().st_mode & 0o777) == "0o700"

    def fits_run_by(search_to_fit, X=X):
        before = len(_logged_fits(log_dir))
        search_to_fit.fit(X, y)
        return len(_logged_fits(log_dir)) - before

    resumed = search(slow)
    assert fits_run_by(resumed) == n_fits - saved
    assert_same_search(resumed, GridSearchCV(slow, grid, cv=3).fit(X, y), X)
    assert fits_run_by(search(slow)) == 0

    # A changed candidate is fitted again, the others are not...
    changed_grid = {"C": [1.0, 2.0, 3.0, 5.0]}
    assert fits_run_by(search(slow, changed_grid)) == 3
    # ...and what the old candidate left is gone after the complete fit.
    assert len(os.listdir(checkpoint_dir)) == n_fits
    # Other data, or another estimator: everything is fitted again.
    assert fits_run_by(search(slow, changed_grid), X=X + 1.0) == n_fits
    other = LoggedClassifier(delay=0.2, log_dir=str(log_dir))
    assert fits_run_by(search(other, changed_grid)) == n_fits
