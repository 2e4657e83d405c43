"""Test fixtures: one real ipyparallel cluster for the whole session.

The cluster (a controller and ``SKLEARN_IPP_TEST_ENGINES`` engines, default 2,
all separate processes) runs in the default profile of a temporary IPYTHONDIR,
so the user's own profiles are never touched and ``client=None`` finds it the
way it finds a cluster started with ``ipcluster start``.

With ``SKLEARN_IPP_STRICT_TESTS=1`` (set by ``.ci/run``) or ``CI`` set, the run
fails if any test was skipped or if no test used the cluster; a user who is
not root may skip only the tests marked with :func:`needs_root`, which CI runs
as root, and the tests marked with :func:`needs_library` skip when their
library is not installed, which CI installs for a run of them of its own.
"""

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import cloudpickle
import ipyparallel as ipp
import pytest

import tests

# Engines cannot import this package: send the estimators and scorers the tests
# define by value, as cloudpickle does for those defined in __main__.
cloudpickle.register_pickle_by_value(tests)

N_ENGINES = int(os.environ.get("SKLEARN_IPP_TEST_ENGINES", "2"))

_outcomes = {"skipped": [], "allowed_skips": [], "cluster_passed": 0}
_saved_ipythondir = None
_ipython_dir = None


def pytest_configure(config):
    # A run started in the background by a non-interactive shell (``cmd &``
    # in a script) inherits SIGINT ignored, and passes it on to every process
    # it starts: the tests of Ctrl-C could not interrupt anything. They run
    # as in a terminal, where SIGINT raises KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Before anything resolves a profile: engines and subprocesses inherit it.
    global _saved_ipythondir, _ipython_dir
    _saved_ipythondir = os.environ.get("IPYTHONDIR")
    _ipython_dir = tempfile.mkdtemp(prefix="sklearn_ipp-tests-ipython-")
    os.environ["IPYTHONDIR"] = _ipython_dir
    # The checkpoint key of the tests, not the user's own.
    os.environ["SKLEARN_IPP_CHECKPOINT_KEY_FILE"] = os.path.join(
        _ipython_dir, "checkpoint.key"
    )


def pytest_unconfigure(config):
    os.environ.pop("SKLEARN_IPP_CHECKPOINT_KEY_FILE", None)
    if _saved_ipythondir is None:
        os.environ.pop("IPYTHONDIR", None)
    else:
        os.environ["IPYTHONDIR"] = _saved_ipythondir
    shutil.rmtree(_ipython_dir, ignore_errors=True)


def pytest_collection_modifyitems(items):
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        allowed = (
            os.geteuid() != 0 and reason.startswith("Skipped: " + NEEDS_ROOT)
        ) or (
            os.environ.get(ALL_LIBRARIES) != "1"
            and reason.startswith("Skipped: " + NEEDS_LIBRARY)
        )
        _outcomes["allowed_skips" if allowed else "skipped"].append(report.nodeid)
    elif report.when == "call" and report.passed and "cluster" in report.keywords:
        _outcomes["cluster_passed"] += 1


# The reason of every skip of a test that needs root starts with this: the
# strict check lets a user who is not root skip those, and no other.
NEEDS_ROOT = "needs root: "


def needs_root(what):
    """Mark a test that cannot run without root; ``what`` is what it checks."""
    return pytest.mark.skipif(
        os.geteuid() != 0,
        reason=f"{NEEDS_ROOT}{what}; run the tests as root to check it (CI does)",
    )


# The reason of every skip of a test that needs a library which the test
# extra does not install (too heavy for every test run) starts with this. The
# strict check lets those skip unless ALL_LIBRARIES is "1": CI installs the
# benchmark extra and runs them with it set.
NEEDS_LIBRARY = "needs the optional library "
ALL_LIBRARIES = "SKLEARN_IPP_ALL_LIBRARIES"


def needs_library(name, what):
    """Mark a test that needs the library ``name``; ``what`` is what it checks.

    ``pytest -m needs_library`` runs these tests alone.
    """
    skip = pytest.mark.skipif(
        importlib.util.find_spec(name) is None,
        reason=(
            f"{NEEDS_LIBRARY}{name}: {what}; install it (pip install -e "
            '".[benchmark]"), as CI does, to check it'
        ),
    )

    def mark(test):
        return pytest.mark.needs_library(skip(test))

    return mark


def _strict():
    return os.environ.get("SKLEARN_IPP_STRICT_TESTS") == "1" or bool(
        os.environ.get("CI")
    )


def pytest_sessionfinish(session, exitstatus):
    if not _strict() or exitstatus != 0:
        return
    problems = []
    if _outcomes["skipped"]:
        problems.append("skipped tests: " + ", ".join(_outcomes["skipped"]))
    if _outcomes["cluster_passed"] == 0:
        problems.append("no test ran on the real cluster")
    if problems:
        print("\nStrict test run failed: " + "; ".join(problems))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif _outcomes["allowed_skips"]:
        print(
            f"\nStrict test run: {len(_outcomes['allowed_skips'])} tests that need "
            "root (this user is not) or an optional library were skipped."
        )


def on_engine(function):
    """Mark a test helper to be sent to engines by value.

    ipyparallel re-imports a function's module on the engine unless its name
    starts with ``__``; the tests package is not importable there.
    """
    function.__module__ = "__main__"
    return function


# Sets up a fake host in new UTS and mount namespaces: its own hostname, and
# its own empty /tmp and /dev/shm, where the client's store cannot be seen.
# Directories under /tmp that the engines need (a virtualenv, a checkout) are
# bound back in through /mnt, which only this namespace sees changed. A user
# who is not root makes them in a user namespace of their own, where they are
# root (``unshare --user --map-root-user``), if the kernel allows it.
_FAKE_HOST_SCRIPT = """
set -e
hostname "$FAKE_HOSTNAME"
mount --rbind /tmp /mnt
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
for kept in $FAKE_HOST_KEEP; do
    mkdir -p "$kept"
    mount --bind "/mnt/${kept#/tmp/}" "$kept"
done
printf '%s' "$FAKE_HOST_ENGINE_FILE" > /tmp/engine.json
export IPYTHONDIR=/tmp/ipython
for i in $(seq "$FAKE_HOST_ENGINES"); do
    "$FAKE_HOST_PYTHON" -m ipyparallel.engine --file=/tmp/engine.json \
        --log-level=40 &
done
wait
"""


_UNSHARE = ["unshare", "--uts", "--mount", "--propagation", "private"]
_UNSHARE_AS_USER = [
    "unshare",
    "--user",
    "--map-root-user",
    "--uts",
    "--mount",
    "--propagation",
    "private",
]

_NO_FAKE_HOSTS = (
    "fake hosts need new UTS and mount namespaces, which this user cannot "
    "make ({}): they check that hosts which do not see the client's files get "
    "the data once. Run the tests as root, or where unprivileged user "
    "namespaces are allowed (`unshare --user --map-root-user true` succeeds; "
    "on Ubuntu >= 23.10: `sysctl kernel.apparmor_restrict_unprivileged_userns=0`)"
)


@functools.cache
def _unshare_command():
    """The command that starts a fake host here; skip the test when none does."""
    command = _UNSHARE if os.geteuid() == 0 else _UNSHARE_AS_USER
    probe = "hostname probe && mount -t tmpfs tmpfs /tmp && mount --rbind /tmp /mnt"
    try:
        subprocess.run(
            [*command, "sh", "-c", probe], capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return None, _NO_FAKE_HOSTS.format(" ".join(detail.split()))
    return command, None


def _paths_to_keep():
    """Top directories under /tmp that engines need: Python, this checkout."""
    import sklearn_ipp

    needed = [sys.prefix, os.path.dirname(os.path.dirname(sklearn_ipp.__file__))]
    kept = set()
    for path in needed:
        path = os.path.realpath(path)
        if path.startswith("/tmp/"):
            kept.add("/tmp/" + path.split("/")[2])
        elif path == "/tmp":
            raise RuntimeError("Cannot run fake hosts from a checkout in /tmp itself.")
    return sorted(kept)


def engine_connection_file(cluster):
    """The file an engine of ``cluster`` connects to its controller with."""
    return os.path.join(
        cluster.profile_dir,
        "security",
        f"ipcontroller-{cluster.cluster_id}-engine.json"
        if cluster.cluster_id
        else "ipcontroller-engine.json",
    )


@contextlib.contextmanager
def fake_host(cluster, client, hostname, n_engines=2):
    """Run ``n_engines`` engines on a fake host; yield their engine ids.

    The engines connect to the session controller over loopback. Their host
    has its own hostname and a private /tmp and /dev/shm: it does not see
    the client's store, as a host without a shared filesystem.
    """
    command, why_not = _unshare_command()
    if command is None:
        pytest.skip(why_not)
    with open(engine_connection_file(cluster)) as f:
        engine_file_content = f.read()
    before = set(client.ids)
    process = subprocess.Popen(
        [*command, "sh", "-c", _FAKE_HOST_SCRIPT],
        env=dict(
            os.environ,
            FAKE_HOSTNAME=hostname,
            FAKE_HOST_KEEP=" ".join(_paths_to_keep()),
            FAKE_HOST_ENGINE_FILE=engine_file_content,
            FAKE_HOST_ENGINES=str(n_engines),
            FAKE_HOST_PYTHON=sys.executable,
        ),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(set(client.ids) - before) < n_engines:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"The engines of fake host {hostname} did not start")
            time.sleep(0.1)
        yield sorted(set(client.ids) - before)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while set(client.ids) - before and time.monotonic() < deadline:
            time.sleep(0.1)


def run_python(*args, timeout=180, **environ):
    """Run ``python *args`` with this session's environment plus ``environ``.

    With the session's IPYTHONDIR, ``client=None`` finds the session cluster.
    """
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **environ),
    )


def last_json_line(completed):
    """Return what a script printed as JSON on its last line; it must succeed."""
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def ipython_dir():
    """The temporary IPYTHONDIR of this test session."""
    return _ipython_dir


@pytest.fixture(scope="session")
def cluster(ipython_dir):
    """A running ipyparallel.Cluster with N_ENGINES local engines."""
    from traitlets.config import Config

    from sklearn_ipp import SameSessionEngineSetLauncher
    from sklearn_ipp._threads import thread_environment

    # Started as sklearn_ipp starts a local cluster of its own, with the
    # thread variables loky sets. Without them, numpy 1.23's OpenBLAS 0.3.20
    # (the oldest stack) made two engines sharing an AMD EPYC's 2 CPUs run a
    # scaler, PCA and logistic regression pipeline 40 times slower (30 s a
    # fit instead of 0.7 s), although each was limited to one thread at run
    # time: its threads, made at import, are not tamed by that.
    config = Config()
    config.EngineLauncher.environment = thread_environment(N_ENGINES)
    cluster = ipp.Cluster(
        n=N_ENGINES,
        profile_dir=os.path.join(ipython_dir, "profile_default"),
        log=logging.getLogger("sklearn_ipp.tests"),
        config=config,
        engine_launcher_class=SameSessionEngineSetLauncher,
    )
    client = cluster.start_and_connect_sync()
    client.close()
    yield cluster
    cluster.stop_cluster_sync()


@pytest.fixture(scope="session")
def client(cluster):
    """A client of the session cluster, shared by all tests: do not close it."""
    client = cluster.connect_client_sync()
    client.wait_for_engines(N_ENGINES, timeout=60)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _engines_idle_after_test(request):
    """Fail the test that leaves the controller waiting on a message.

    A message whose reply never comes keeps its engine busy for the
    load-balancing scheduler forever, and every later search waits on it:
    the test that caused it must fail, not the ones that hang after it.
    """
    if "cluster" not in request.fixturenames:
        yield
        return
    client = request.getfixturevalue("client")
    yield
    deadline = time.monotonic() + 30
    while True:
        status = client.queue_status()
        # The controller keeps listing dead engines, with their last tasks.
        busy = {
            engine: counts
            for engine, counts in status.items()
            if engine in client.ids and (counts["queue"] or counts["tasks"])
        }
        if not busy and not status.get("unassigned"):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    verbose = client.queue_status(verbose=True)
    outstanding = {
        engine: {"queue": value["queue"], "tasks": value["tasks"]}
        for engine, value in verbose.items()
        if engine in client.ids
    }
    pytest.fail(
        "The controller still waits on messages 30 s after the test: "
        f"{outstanding}, unassigned {verbose.get('unassigned')}"
    )


@pytest.fixture
def writes(monkeypatch):
    """The number of rows of every array of the data the backends store.

    Not those of fitted pipeline prefixes (see test_prefix.py), which are
    written as the prefixes are fitted.
    """
    import threading

    from sklearn_ipp._backend import ClusterBackend
    from sklearn_ipp._prefix import PrefixFold

    written = []
    in_prefix = threading.local()
    write = ClusterBackend._write
    materialise = PrefixFold.materialise

    def counting_write(self, obj, rows=None, columns=None):
        if not getattr(in_prefix, "writing", False):
            written.append(len(obj) if rows is None else len(rows))
        return write(self, obj, rows, columns)

    def prefix_materialise(self, *args):
        in_prefix.writing = True
        try:
            return materialise(self, *args)
        finally:
            in_prefix.writing = False

    monkeypatch.setattr(ClusterBackend, "_write", counting_write)
    monkeypatch.setattr(PrefixFold, "materialise", prefix_materialise)
    return written


@pytest.fixture
def lbview(client):
    """A load-balanced view over every engine of the session cluster."""
    return client.load_balanced_view()
