"""The local cluster of a client that dies without stopping it is cleaned up.

The clients here are real subprocesses, each starting its own local cluster:
a fresh IPYTHONDIR hides the session cluster from them, and a private TMPDIR
keeps their profile directories (and the search for stale ones) away from
other runs on the same machine.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import ipyparallel
import psutil
import pytest

from sklearn_ipp import _cluster, _watchdog

# A dead client's cluster must be gone within this many seconds.
_CLEANUP_DEADLINE = 30

# A local cluster has one engine per CPU; two are enough, whatever the machine.
_N_ENGINES = 2


def _alive(process):
    """Whether a process runs; a zombie has ended, only not been reaped yet."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until_gone(processes, timeout):
    """Return the processes still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while True:
        alive = [process for process in alive if _alive(process)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _client_environment(tmp_path):
    ipython_dir = tmp_path / "ipython"
    temp_dir = tmp_path / "tmp"
    ipython_dir.mkdir()
    temp_dir.mkdir()
    return dict(
        os.environ,
        IPYTHONDIR=str(ipython_dir),
        TMPDIR=str(temp_dir),
        LOKY_MAX_CPU_COUNT=str(_N_ENGINES),
    )


# Starts a local cluster, reports its processes, then waits to be killed.
_WAITING_CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, time
    import sklearn_ipp
    from sklearn_ipp import _cluster

    sklearn_ipp.get_client()
    cluster = _cluster._local_cluster
    launchers = [cluster.controller.process.pid] + [
        launcher.pid
        for engine_set in cluster.engines.values()
        for launcher in engine_set.launchers.values()
    ]
    print(json.dumps({
        "launchers": launchers,
        "profile_dir": _cluster._local_profile_dir,
        "watchdog": _cluster._local_watchdog.pid,
    }), flush=True)
    time.sleep(600)
    """
)


def _read_line(stream, timeout):
    """Read a line from ``stream``, or fail after ``timeout`` seconds."""
    lines = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    assert lines, f"No line from the client within {timeout} s"
    return lines[0]


@contextlib.contextmanager
def _waiting_client(tmp_path):
    """Start a client with a local cluster; yield its Popen, report, processes.

    The processes are the controller and engines with every descendant they
    have once each engine has its nanny. Whatever of them a failing test
    leaves running is killed on the way out.
    """
    stderr_path = tmp_path / "client-stderr.txt"
    with open(stderr_path, "w") as stderr:
        client = subprocess.Popen(
            [sys.executable, "-c", _WAITING_CLIENT_SCRIPT],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_client_environment(tmp_path),
        )
    processes = []
    report = None
    try:
        line = _read_line(client.stdout, timeout=180)
        assert line, stderr_path.read_text()
        report = json.loads(line)
        launchers = [psutil.Process(pid) for pid in report["launchers"]]
        # Each engine starts its nanny while it registers: wait for them, so
        # that the descendants include processes the watchdog only finds
        # while it watches.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            launcher.children() for launcher in launchers
        ):
            time.sleep(0.1)
        processes = launchers + [
            child
            for launcher in launchers
            for child in launcher.children(recursive=True)
        ]
        yield client, report, processes
    finally:
        if client.poll() is None:
            client.kill()
        client.wait()
        client.stdout.close()
        leftovers = [process for process in processes if _alive(process)]
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if report is not None:
            shutil.rmtree(report["profile_dir"], ignore_errors=True)


def test_cluster_of_a_killed_client_is_ended_by_its_watchdog(tmp_path):
    with _waiting_client(tmp_path) as (client, report, processes):
        watchdog = psutil.Process(report["watchdog"])
        assert "_watchdog" in " ".join(watchdog.cmdline())
        # Its own session: a kill of the client's process group misses it.
        assert os.getsid(watchdog.pid) != os.getsid(client.pid)
        n_launchers = 1 + _N_ENGINES
        assert len(processes) > n_launchers, "no descendants were collected"
        assert os.path.isdir(report["profile_dir"])

        client.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        client.wait()
        # Nothing the client started holds its stdout: a parent reading it
        # sees the end at once.
        try:
            client.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("The client's stdout stayed open after it was killed")

        left = _wait_until_gone([*processes, watchdog], _CLEANUP_DEADLINE)
        assert left == [], f"still running {_CLEANUP_DEADLINE} s after the kill"
        deadline = killed_at + _CLEANUP_DEADLINE
        while os.path.exists(report["profile_dir"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(report["profile_dir"])


def test_cluster_of_a_client_killed_with_its_watchdog_is_removed_by_next_run(
    tmp_path,
):
    with _waiting_client(tmp_path) as (client, report, processes):
        watchdog = psutil.Process(report["watchdog"])
        watchdog.kill()
        assert _wait_until_gone([watchdog], 10) == []
        client.send_signal(signal.SIGKILL)
        client.wait()
        # Without a watchdog, the cluster outlives its client...
        assert all(_alive(process) for process in processes)
        # ...until the next local cluster is started on this host.
        removed = _watchdog.remove_stale_clusters(str(tmp_path / "tmp"))
        assert removed == [report["profile_dir"]]
        assert not os.path.exists(report["profile_dir"])
        assert _wait_until_gone(processes, _CLEANUP_DEADLINE) == []


_STOPPING_CLIENT_SCRIPT = textwrap.dedent(
    """
    import json
    import psutil
    import sklearn_ipp
    from sklearn_ipp import _cluster

    def watchdog():
        process = psutil.Process(_cluster._local_watchdog.pid)
        return [process.pid, process.create_time(), process.cmdline()]

    sklearn_ipp.get_client()
    stopped = watchdog()
    sklearn_ipp.stop_local_cluster()
    children_after_stop = psutil.Process().children(recursive=True)
    sklearn_ipp.get_client()
    # This one is stopped at exit.
    print(json.dumps({
        "stopped": stopped,
        "children_after_stop": [child.pid for child in children_after_stop],
        "at_exit": watchdog(),
    }))
    """
)


def test_no_watchdog_is_left_after_the_cluster_is_stopped(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", _STOPPING_CLIENT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=_client_environment(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    for pid, create_time, cmdline in (report["stopped"], report["at_exit"]):
        assert cmdline[1].endswith("_watchdog.py")
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).create_time() != create_time
    assert report["children_after_stop"] == []
    assert os.listdir(tmp_path / "tmp") == []


def _write_record(directory, name, record):
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # as mkdtemp makes them
    (directory / name).write_text(json.dumps(record))


def _sleeper(*, with_child=False):
    """Start a process that sleeps (with a sleeping child); wait for the child."""
    code = "import time; time.sleep(300)"
    if with_child:
        code = (
            "import subprocess, sys, time; "
            f"subprocess.Popen([sys.executable, '-c', {code!r}]); time.sleep(300)"
        )
    process = psutil.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while with_child and not process.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def _owner(process):
    return {
        "hostname": socket.gethostname(),
        "pid": process.pid,
        "create_time": process.create_time(),
        "uid": os.geteuid(),
    }


@pytest.fixture
def dead_owner():
    """The owner record of a process that has ended."""
    process = _sleeper()
    owner = _owner(process)
    process.kill()
    process.wait()
    return owner


def test_stale_profile_directories_are_removed_with_their_processes(
    tmp_path, dead_owner
):
    recorded = _sleeper(with_child=True)
    bystander = _sleeper()
    try:
        (child,) = recorded.children()
        stale = tmp_path / "sklearn_ipp-cluster-stale"
        _write_record(stale, _watchdog.OWNER_FILE, dead_owner)
        # The bystander has the pid of a recorded process, but started at
        # another time: the pid was reused, and it is not the cluster's.
        _write_record(
            stale,
            _watchdog.PROCESSES_FILE,
            [
                [recorded.pid, recorded.create_time()],
                [bystander.pid, bystander.create_time() - 100],
            ],
        )
        (stale / "log").mkdir()
        kept = {
            "live owner": (_owner(psutil.Process()), "sklearn_ipp-cluster-live"),
            "other host": (
                dict(dead_owner, hostname=socket.gethostname() + "-other"),
                "sklearn_ipp-cluster-remote",
            ),
            "other prefix": (dead_owner, "sklearn_ipp-notacluster"),
        }
        for owner, name in kept.values():
            _write_record(tmp_path / name, _watchdog.OWNER_FILE, owner)
        (tmp_path / "sklearn_ipp-cluster-no-owner").mkdir()
        # A link named as a profile directory is not followed.
        target = tmp_path / "elsewhere" / "target"
        _write_record(target, _watchdog.OWNER_FILE, dead_owner)
        (tmp_path / "sklearn_ipp-cluster-link").symlink_to(target)

        removed = _watchdog.remove_stale_clusters(str(tmp_path))

        assert removed == [str(stale)]
        assert not stale.exists()
        assert _wait_until_gone([recorded, child], 10) == []
        assert _alive(bystander)
        for _, name in kept.values():
            assert (tmp_path / name / _watchdog.OWNER_FILE).exists()
        assert (tmp_path / "sklearn_ipp-cluster-no-owner").is_dir()
        assert (tmp_path / "sklearn_ipp-cluster-link").is_symlink()
        assert (target / _watchdog.OWNER_FILE).exists()
    finally:
        for process in (recorded, bystander):
            for one in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    one.kill()
            process.wait()


def test_profile_directories_of_other_users_are_left_alone(
    tmp_path, dead_owner, monkeypatch
):
    stale = tmp_path / "sklearn_ipp-cluster-stale"
    _write_record(stale, _watchdog.OWNER_FILE, dead_owner)
    real_uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real_uid + 1)
    assert _watchdog.remove_stale_clusters(str(tmp_path)) == []
    assert stale.is_dir()
    monkeypatch.undo()
    assert _watchdog.remove_stale_clusters(str(tmp_path)) == [str(stale)]


def test_starting_a_local_cluster_removes_stale_ones_first(
    tmp_path, dead_owner, monkeypatch
):
    stale = tmp_path / "sklearn_ipp-cluster-stale"
    _write_record(stale, _watchdog.OWNER_FILE, dead_owner)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    class Refused(Exception):
        pass

    def cluster(*, profile_dir, **kwargs):
        # Stands for ipyparallel.Cluster: sees the profile directory, then
        # fails, so that no cluster starts in this test.
        made.append(sorted(os.listdir(profile_dir)))
        raise Refused

    # Looked up when the cluster starts: ipyparallel is imported then.
    monkeypatch.setattr(ipyparallel, "Cluster", cluster)
    with pytest.raises(Refused):
        _cluster._start_local_cluster(1, timeout=1)
    assert not stale.exists()
    # The watchdog runs before the cluster starts.
    assert made == [sorted([_watchdog.OWNER_FILE, _watchdog._LOG_FILE])]
    # The new profile directory went with the failed start.
    assert os.listdir(tmp_path) == []
    assert _cluster._local_cluster is None and _cluster._local_watchdog is None


def test_watchdog_ends_with_the_profile_directory(tmp_path):
    # Without a cluster: while its owner runs, the watchdog waits, and ends
    # when the profile directory goes.
    profile_dir = tmp_path / "sklearn_ipp-cluster-x"
    profile_dir.mkdir()
    _write_record(profile_dir, _watchdog.OWNER_FILE, _owner(psutil.Process()))
    _write_record(profile_dir, _watchdog.PROCESSES_FILE, [])
    watchdog = _watchdog.start_watchdog(str(profile_dir))
    try:
        # Nothing to poll for: it must still run after a few of its checks.
        time.sleep(3 * _watchdog.POLL_INTERVAL)
        assert watchdog.poll() is None
        for name in os.listdir(profile_dir):
            os.remove(profile_dir / name)
        profile_dir.rmdir()
        assert watchdog.wait(timeout=10) == 0
    finally:
        _watchdog.stop_watchdog(watchdog)


def test_watchdog_ends_descendants_that_outlived_their_parent(tmp_path, monkeypatch):
    # An engine's nanny starts after the cluster, and is adopted by another
    # process if its engine dies first: the watchdog must remember it.
    owner = _sleeper()
    engine = _sleeper(with_child=True)
    (nanny,) = engine.children()
    profile_dir = tmp_path / "sklearn_ipp-cluster-x"
    _write_record(profile_dir, _watchdog.OWNER_FILE, _owner(owner))
    _write_record(
        profile_dir, _watchdog.PROCESSES_FILE, [[engine.pid, engine.create_time()]]
    )
    seen = threading.Event()
    with_descendants = _watchdog.with_descendants

    def spying(processes):
        found = with_descendants(processes)
        if nanny.pid in [process.pid for process in found]:
            seen.set()
        return found

    monkeypatch.setattr(_watchdog, "with_descendants", spying)
    result = []
    watcher = threading.Thread(
        target=lambda: result.append(_watchdog.watch(str(profile_dir), 0.05))
    )
    watcher.start()
    try:
        assert seen.wait(30), "the watchdog did not find the child"
        engine.kill()
        engine.wait()
        # Not reaped: a killed owner whose parent has not waited for it yet
        # is a zombie, and dead all the same.
        owner.kill()
        watcher.join(30)
        assert result == [True]
        assert _wait_until_gone([nanny], 10) == []
        assert not profile_dir.exists()
    finally:
        for process in (owner, engine, nanny):
            with contextlib.suppress(psutil.Error):
                process.kill()
        owner.wait()
        watcher.join(30)


# Starts a local cluster, runs a fit that a stop signal cannot stop (it blocks
# the signal, as a long call of compiled code does not look at it), aborts it,
# and reports what became of the engine.
_STUCK_FIT_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, time
    import numpy as np
    import psutil
    from sklearn.base import BaseEstimator, ClassifierMixin
    import sklearn_ipp
    from sklearn_ipp import IPyParallelGridSearchCV, _messages

    _messages.STUCK_GRACE_SECONDS = 3.0
    logging.basicConfig(level=logging.WARNING)  # to see sklearn_ipp's
    started = sys.argv[1]

    def _first():
        try:  # the lock stays, so that only one fit ever gets it
            os.close(os.open(started + ".lock", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        with open(started + ".part", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".part", started)
        return True

    class Stuck(ClassifierMixin, BaseEstimator):
        def __init__(self, stuck=False):
            self.stuck = stuck

        def fit(self, X, y):
            if self.stuck and _first():  # one fit is stuck, the other is not
                import signal
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
                time.sleep(600)
            self.classes_ = np.unique(y)
            return self

        def predict(self, X):
            return np.full(len(X), self.classes_[0])

    client = sklearn_ipp.get_client()
    n_engines, before = len(client.ids), set(client.ids)
    X, y = np.random.rand(40, 3), np.arange(40) % 2
    search = IPyParallelGridSearchCV(Stuck(), {"stuck": [True]}, cv=2)
    search.fit_async(X, y)
    while not os.path.exists(started):
        time.sleep(0.05)
    stuck = psutil.Process(int(open(started).read()))
    start = time.monotonic()
    search.abort()
    aborted = time.monotonic() - start
    stuck.wait(timeout=60)
    ended = time.monotonic() - start
    # The ended engine leaves the cluster, its replacement joins.
    deadline = time.monotonic() + 60
    while not (len(client.ids) == n_engines and set(client.ids) != before):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    fitted = IPyParallelGridSearchCV(Stuck(), {"stuck": [False]}, cv=2).fit(X, y)
    print(json.dumps({
        "aborted": aborted,
        "ended": ended,
        "n_engines": [n_engines, len(client.ids)],
        "replaced": len(before - set(client.ids)),
        "fitted": bool(fitted.best_params_ == {"stuck": False}),
    }))
    """
)


def test_an_engine_stuck_in_compiled_code_is_replaced_after_the_grace(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", _STUCK_FIT_SCRIPT, str(tmp_path / "started")],
        env=_client_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["aborted"] < 10  # abort() returns without waiting for it
    assert 3 <= report["ended"] < 20  # ended once the grace period is over
    assert report["n_engines"] == [_N_ENGINES, _N_ENGINES]
    assert report["replaced"] == 1  # one engine left, another joined
    assert report["fitted"]  # and the cluster works
    assert "was ended, and a new engine started in its place" in completed.stderr


def test_only_engines_of_the_local_cluster_of_this_process_are_ended(
    client, monkeypatch
):
    # A fake local cluster of this process whose one engine is a sleeper.
    sleeper = _sleeper()
    started = []

    class FakeCluster:
        def start_engines_sync(self, n):
            started.append(n)

    local_client = object()
    monkeypatch.setattr(_cluster, "_local_cluster", FakeCluster())
    monkeypatch.setattr(_cluster, "_local_client", local_client)
    monkeypatch.setattr(_cluster, "_local_profile_dir", None)
    monkeypatch.setattr(_cluster, "_cluster_processes", lambda cluster: [sleeper])
    monkeypatch.setattr(_cluster, "write_processes", lambda *args: None)
    try:
        # The session cluster's engines, even asked for by the local client:
        # not the local cluster's processes.
        pids = client[:].apply_sync(os.getpid)
        assert _cluster.end_stuck_engines(pids, local_client) == []
        # The local cluster's engine, asked for by another client: left alone.
        assert _cluster.end_stuck_engines([sleeper.pid], client) == []
        assert _alive(sleeper) and started == []
        # Asked for by its own client: ended, and a new engine started.
        assert _cluster.end_stuck_engines([sleeper.pid], local_client) == [sleeper.pid]
        assert not _wait_until_gone([sleeper], timeout=10)
        assert started == [1]
        assert client[:].apply_sync(os.getpid) == pids
    finally:
        with contextlib.suppress(psutil.Error):
            sleeper.kill()


def test_only_engines_this_process_started_are_ended_on_a_given_cluster(
    client, monkeypatch
):
    # A cluster object the caller gave, with two local engines: one this
    # process started (a sleeper), one it did not (init, read from a file).
    sleeper = _sleeper()
    started = []

    class FakeCluster:
        def start_engines_sync(self, n):
            started.append(n)

    cluster = FakeCluster()
    theirs = psutil.Process(1)
    monkeypatch.setattr(
        _cluster, "_local_engine_processes", lambda c: [theirs, sleeper]
    )
    try:
        # Without the cluster object: nothing to end.
        assert _cluster.end_stuck_engines([sleeper.pid], client) == []
        assert _alive(sleeper) and started == []
        # With it: the engine started here only.
        ended = _cluster.end_stuck_engines([1, sleeper.pid], client, cluster)
        assert ended == [sleeper.pid]
        assert not _wait_until_gone([sleeper], timeout=10)
        assert started == [1]
        assert theirs.is_running()
    finally:
        with contextlib.suppress(psutil.Error):
            sleeper.kill()


def test_profile_directories_others_could_write_are_left_alone(tmp_path):
    # A record in a directory others could have written is not acted on.
    dead = _sleeper()
    owner = _owner(dead)
    dead.kill()
    dead.wait()
    directory = tmp_path / "sklearn_ipp-cluster-open"
    _write_record(directory, _watchdog.OWNER_FILE, owner)
    directory.chmod(0o777)
    assert _watchdog.remove_stale_clusters(str(tmp_path)) == []
    assert directory.exists()
    directory.chmod(0o700)
    assert _watchdog.remove_stale_clusters(str(tmp_path)) == [str(directory)]


def test_a_client_killed_while_its_cluster_starts_leaves_nothing(tmp_path):
    environment = _client_environment(tmp_path)
    temp_dir = environment["TMPDIR"]
    client = subprocess.Popen(
        [sys.executable, "-c", "import sklearn_ipp; sklearn_ipp.get_client()"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def cluster_processes():
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("IPP_PROFILE_DIR", "").startswith(temp_dir):
                    found.append(process)
        return found

    try:
        # Killed as soon as the controller runs, before the cluster is up.
        deadline = time.monotonic() + 60
        while not (started := cluster_processes()):
            assert time.monotonic() < deadline, "the cluster did not start"
            assert client.poll() is None, "the client ended on its own"
            time.sleep(0.02)
        client.kill()
        client.wait()
        assert not _wait_until_gone(started, _CLEANUP_DEADLINE)
        # Engines launched meanwhile are gone too, and so is the profile.
        assert not _wait_until_gone(cluster_processes(), 5)
        deadline = time.monotonic() + 10
        while [n for n in os.listdir(temp_dir) if n.startswith("sklearn_ipp-cl")]:
            assert time.monotonic() < deadline, "the profile directory is left"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.kill()
