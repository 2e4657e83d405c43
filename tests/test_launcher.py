"""Local engines started in the session of the process that starts them."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import ipyparallel as ipp
import pytest

import sklearn_ipp
from sklearn_ipp import SameSessionEngineSetLauncher, _launcher
from sklearn_ipp._launcher import SameSessionEngineLauncher

from .conftest import last_json_line, on_engine, run_python

_IDS = "import os, json; print(json.dumps([os.getsid(0), os.getpgid(0), os.getpid()]))"


def _start(tmp_path, identifier):
    """Start a process with the engine launcher; return its session, group, pid."""
    launcher = SameSessionEngineLauncher(
        engine_cmd=[sys.executable, "-c", _IDS],
        engine_args=[],
        profile_dir=str(tmp_path),
        identifier=identifier,
    )
    launcher.start()
    launcher.process.wait(timeout=60)
    with open(launcher.output_file) as output:
        session, group, pid = json.loads(output.read())
    assert pid == launcher.pid
    return session, group, pid


def test_launched_process_shares_the_session_in_a_group_of_its_own(tmp_path):
    session, group, pid = _start(tmp_path, "grouped")
    assert group == pid != os.getpgid(0)
    # Python 3.10 starts it in a session of its own (the next test).
    assert session == (os.getsid(0) if _launcher._CAN_GROUP else pid)


def test_without_process_groups_the_launched_process_gets_a_session(
    tmp_path, monkeypatch
):
    # Python 3.10 and Windows: as ipyparallel's own launcher.
    monkeypatch.setattr(_launcher, "_CAN_GROUP", False)
    session, group, pid = _start(tmp_path, "session")
    assert session == group == pid != os.getsid(0)


@on_engine
def _engine_ids():
    import os

    return os.getsid(0), os.getpgid(0), os.getpid()


@pytest.mark.cluster
def test_session_cluster_engines_share_this_session_in_groups_of_their_own(client):
    # The session's cluster is started in this process, as sklearn_ipp starts
    # a local cluster of its own: Ctrl-C here does not reach its engines, and
    # on Linux the kernel schedules them as one group.
    for session, group, pid in client[:].apply_sync(_engine_ids):
        assert group == pid != os.getpgid(0)
        assert session == (os.getsid(0) if _launcher._CAN_GROUP else pid)


@pytest.mark.cluster
def test_cluster_file_loads_back_with_the_launcher(cluster, client):
    assert cluster.engine_launcher_class is SameSessionEngineSetLauncher
    # ipyparallel writes the class in the cluster file, which sklearn_ipp
    # reads to connect to a running cluster and to start engines on it.
    loaded = ipp.Cluster.from_file(cluster.cluster_file)
    assert loaded.engine_launcher_class is SameSessionEngineSetLauncher
    # Engines other tests started and stopped may be listed too.
    running = {pid for _, _, pid in client[:].apply_sync(_engine_ids)}
    assert running <= _engine_pids(loaded)


def _engine_pids(cluster):
    return {
        engine.pid
        for engine_set in cluster.engines.values()
        for engine in engine_set.launchers.values()
    }


def test_launcher_is_public_and_loaded_when_asked_for():
    # test_import checks that ``import sklearn_ipp`` alone does not load it.
    assert sklearn_ipp.SameSessionEngineSetLauncher is SameSessionEngineSetLauncher
    assert "SameSessionEngineSetLauncher" in sklearn_ipp.__all__
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        sklearn_ipp.missing  # noqa: B018 (the attribute access is the test)


_ENGINES_OF_DEFAULT_CLUSTER = textwrap.dedent(
    """
    import json
    import sklearn_ipp

    def engine_ids():
        import os

        return os.getsid(0), os.getpgid(0), os.getpid()

    with sklearn_ipp.resolve_cluster(timeout=60) as connection:
        ids = connection.client[:].apply_sync(engine_ids)
        print(json.dumps({"source": connection.source, "ids": ids}))
    """
)


@pytest.mark.cluster
def test_ipcluster_starts_engines_with_the_launcher_by_its_name(tmp_path):
    # The command of the docs; the cluster file ipcluster writes names the
    # launcher, and sklearn_ipp connects through it.
    command = [sys.executable, "-m", "ipyparallel.cluster", "start", "-n", "2"]
    command += ["--engines=sklearn_ipp.SameSessionEngineSetLauncher"]
    ipcluster = subprocess.Popen(
        command,
        env=dict(os.environ, IPYTHONDIR=str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        security = os.path.join(tmp_path, "profile_default", "security")
        pattern = os.path.join(security, "cluster-*.json")
        deadline = time.monotonic() + 60
        while not glob.glob(pattern):
            assert ipcluster.poll() is None, ipcluster.stderr.read().decode()
            assert time.monotonic() < deadline, "ipcluster wrote no cluster file"
            time.sleep(0.2)
        found = last_json_line(
            run_python("-c", _ENGINES_OF_DEFAULT_CLUSTER, IPYTHONDIR=str(tmp_path))
        )
    finally:
        os.killpg(ipcluster.pid, signal.SIGINT)
        ipcluster.wait(timeout=60)
    # Through the cluster file, not the controller's connection file, which
    # is what is left when the file cannot be loaded.
    assert found["source"].startswith("<Cluster("), found["source"]
    assert len(found["ids"]) == 2
    for session, group, pid in found["ids"]:
        assert group == pid
        assert session == (ipcluster.pid if _launcher._CAN_GROUP else pid)
