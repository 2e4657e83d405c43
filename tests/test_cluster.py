"""Cluster resolution on the session's real cluster."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import types

import ipyparallel as ipp
import psutil
import pytest

import sklearn_ipp
from sklearn_ipp import (
    ClusterConnection,
    ClusterNotFoundError,
    EngineTimeoutError,
    _cluster,
    _launcher,
    get_client,
    resolve_cluster,
)
from sklearn_ipp._threads import THREAD_VARIABLES

from .conftest import N_ENGINES, last_json_line, run_python


def _security_dir(ipython_dir):
    return os.path.join(ipython_dir, "profile_default", "security")


def test_client_is_used_as_given_and_not_closed(client):
    with resolve_cluster(client) as connection:
        assert connection.client is client
        assert connection.targets is None
        assert connection.engine_ids == client.ids
    assert not client._closed
    assert client[:].apply_sync(os.getpid) == [
        f["pid"] for _, f in sorted(sklearn_ipp.engine_facts(client).items())
    ]


def test_load_balanced_view_restricts_to_its_targets(client):
    target = client.ids[-1]
    connection = resolve_cluster(client.load_balanced_view(targets=[target]))
    assert connection.engine_ids == [target]
    assert connection.load_balanced_view().targets == [target]
    assert connection.direct_view().targets == [target]


def test_direct_view_restricts_to_its_targets(client):
    connection = resolve_cluster(client[[client.ids[0]]])
    assert connection.engine_ids == [client.ids[0]]


def test_unrestricted_views_track_all_engines(client):
    assert resolve_cluster(client.load_balanced_view()).targets is None
    assert resolve_cluster(client.direct_view("all")).targets is None


def test_borrowed_connection_is_not_closed(client, cluster):
    with resolve_cluster(cluster) as outer:
        with resolve_cluster(outer) as inner:
            assert inner.client is outer.client
        assert not outer.client._closed
    assert outer.client._closed


def test_running_cluster_object_is_connected_not_stopped(cluster):
    with resolve_cluster(cluster) as connection:
        assert connection.owns_client
        assert (
            sorted(connection.engine_ids) == sorted(connection.client.ids)
            and len(connection.engine_ids) == N_ENGINES
        )
    # Closing our connection closed our client, never the user's cluster.
    assert cluster.controller is not None and cluster._is_running()


def test_none_finds_the_running_default_profile_cluster(cluster):
    with resolve_cluster(None) as connection:
        assert cluster.cluster_id in connection.source
        assert len(connection.engine_ids) == N_ENGINES
    assert _cluster._local_cluster is None


@pytest.mark.parametrize("kind", ["name", "directory", "cluster file", "client file"])
def test_profile_name_directory_and_files(cluster, ipython_dir, kind):
    security = _security_dir(ipython_dir)
    spec = {
        "name": "default",
        "directory": os.path.join(ipython_dir, "profile_default"),
        "cluster file": cluster.cluster_file,
        "client file": os.path.join(
            security, f"ipcontroller-{cluster.cluster_id}-client.json"
        ),
    }[kind]
    with resolve_cluster(spec) as connection:
        assert len(connection.engine_ids) == N_ENGINES
        assert connection.direct_view().apply(os.getpid) == [
            fact["pid"]
            for _, fact in sorted(sklearn_ipp.engine_facts(connection).items())
        ]


def test_get_client_returns_a_connected_client(cluster):
    client = get_client(cluster)
    try:
        assert isinstance(client, ipp.Client)
        assert len(client.ids) == N_ENGINES
    finally:
        client.close()


def test_named_profile_without_cluster_names_profile_and_command():
    expected = "No running ipyparallel cluster was found for profile 'no-such-profile'"
    with pytest.raises(ClusterNotFoundError, match=re.escape(expected)) as info:
        resolve_cluster("no-such-profile")
    assert "`ipcluster start --profile=no-such-profile -n 4`" in str(info.value)


def test_stale_cluster_file_is_skipped_quickly(cluster, tmp_path):
    # A cluster file left by a controller that died must not be used, nor
    # stall the caller for the client's registration timeout.
    with open(cluster.cluster_file) as f:
        state = json.load(f)
    dead = psutil.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state["controller"]["state"]["pid"] = dead.pid
    state["engines"]["sets"] = {}
    security = tmp_path / "profile_stale" / "security"
    security.mkdir(parents=True)
    stale_file = security / "cluster-.json"
    stale_file.write_text(json.dumps(state))
    start = time.monotonic()
    with pytest.raises(ClusterNotFoundError, match="profile_stale"):
        resolve_cluster(str(tmp_path / "profile_stale"))
    # ipyparallel removes a cluster file once it finds its controller gone.
    assert not stale_file.exists()
    stale_file.write_text(json.dumps(state))
    expected = f"Could not connect to the cluster described in '{stale_file}'"
    with pytest.raises(ClusterNotFoundError, match=re.escape(expected)):
        resolve_cluster(str(stale_file))
    expected = "No cluster file, connection file or profile directory exists at "
    expected += repr(str(stale_file))
    with pytest.raises(ClusterNotFoundError, match=re.escape(expected)):
        resolve_cluster(stale_file)
    assert time.monotonic() - start < 3


def test_engines_that_do_not_register_give_counts(client):
    expected = (
        f"Expected {N_ENGINES + 3} engine(s) to register with the controller within "
        f"1 s, but {N_ENGINES} did."
    )
    with pytest.raises(EngineTimeoutError, match=re.escape(expected)):
        resolve_cluster(client, min_engines=N_ENGINES + 3, timeout=1)


def test_controller_without_engines_times_out(ipython_dir):
    # A real controller with no engine at all: the zero-engines case.
    lonely = ipp.Cluster(
        n=0, profile_dir=os.path.join(ipython_dir, "profile_lonely"), cluster_id="x"
    )
    lonely.start_controller_sync()
    try:
        with pytest.raises(EngineTimeoutError, match=re.escape("but 0 did")):
            resolve_cluster(lonely, timeout=1)
    finally:
        lonely.stop_cluster_sync()


@pytest.mark.parametrize("bad", [42, object(), ["a"]])
def test_unsupported_client_type(bad):
    with pytest.raises(TypeError, match="client must be None, a profile name"):
        resolve_cluster(bad)


def test_connection_close_only_closes_owned_clients(client):
    ClusterConnection(client).close()
    assert not client._closed


def _run_without_cluster(script, ipython_dir):
    """Run ``script`` in a Python whose IPYTHONDIR has no running cluster.

    Return the JSON object the script prints on its last line.
    """
    return last_json_line(run_python("-c", script, IPYTHONDIR=str(ipython_dir)))


_OWNED_CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, os
    import sklearn_ipp
    from sklearn_ipp import _cluster

    first = sklearn_ipp.get_client()
    second = sklearn_ipp.get_client()
    facts = sklearn_ipp.engine_facts()
    cluster = _cluster._local_cluster
    print(json.dumps({
        "same_client": first is second,
        "source": sklearn_ipp.resolve_cluster().source,
        "engine_pids": [fact["pid"] for fact in facts.values()],
        "controller_pid": cluster.controller.process.pid,
        "profile_dir": cluster.profile_dir,
        "engine_environ": first[:].apply_sync(lambda: dict(__import__("os").environ)),
        "engine_groups": first[:].apply_sync(lambda: __import__("os").getpgid(0)),
        "engine_sessions": first[:].apply_sync(lambda: __import__("os").getsid(0)),
        "group": os.getpgid(0),
        "session": os.getsid(0),
    }))
    """
)


def test_none_starts_an_owned_local_cluster_stopped_at_exit(tmp_path, cluster):
    # A fresh IPYTHONDIR has no running cluster: sklearn_ipp starts its own,
    # reuses it, and stops it when the interpreter exits.
    # A thread variable the user set is kept; the others are set for engines.
    report = last_json_line(
        run_python(
            "-c", _OWNED_CLUSTER_SCRIPT, IPYTHONDIR=str(tmp_path), OMP_NUM_THREADS="3"
        )
    )
    assert report["same_client"]
    assert report["source"] == "local cluster started by sklearn_ipp"
    n_engines = sklearn_ipp._cluster.cpu_count()
    assert len(report["engine_pids"]) == n_engines
    expected = {name: os.environ.get(name, "1") for name in THREAD_VARIABLES}
    expected["OMP_NUM_THREADS"] = "3"
    for environ in report["engine_environ"]:
        assert {name: environ.get(name) for name in THREAD_VARIABLES} == expected
        assert environ["TBB_ENABLE_IPC"] == os.environ.get("TBB_ENABLE_IPC", "1")
    # Engines in groups of their own, in this process's session (_launcher).
    assert sorted(report["engine_groups"]) == sorted(report["engine_pids"])
    assert report["group"] not in report["engine_groups"]
    if _launcher._CAN_GROUP:
        assert set(report["engine_sessions"]) == {report["session"]}
    pids = [report["controller_pid"], *report["engine_pids"]]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not os.path.exists(report["profile_dir"])
    # The session's cluster, which that process did not start, still runs.
    assert cluster._is_running()
    with resolve_cluster(cluster) as connection:
        assert len(connection.engine_ids) == N_ENGINES


def test_stop_local_cluster_without_one_is_a_no_op():
    assert sklearn_ipp.stop_local_cluster() is False


_OWNED_CLUSTER_TIMEOUT_SCRIPT = textwrap.dedent(
    """
    import json, os, time
    import psutil
    import sklearn_ipp

    try:
        sklearn_ipp.resolve_cluster(timeout=0.5)
    except sklearn_ipp.EngineTimeoutError as exc:
        message = str(exc)
    time.sleep(1)
    print(json.dumps({
        "message": message,
        "children": [p.pid for p in psutil.Process().children(recursive=True)],
        "local": sklearn_ipp._cluster._local_cluster is not None,
    }))
    """
)


def test_owned_cluster_whose_engines_are_late_is_stopped_with_logs_kept(tmp_path):
    report = _run_without_cluster(_OWNED_CLUSTER_TIMEOUT_SCRIPT, tmp_path)
    n_cpus = sklearn_ipp._cluster.cpu_count()
    assert report["message"].startswith(
        f"Expected {n_cpus} engine(s) to register with the controller within 0.5 s"
    )
    log_dir = re.search(r"engine logs in (\S+)\)", report["message"]).group(1)
    assert os.path.isdir(log_dir)
    shutil.rmtree(os.path.dirname(log_dir))
    assert report["children"] == []
    assert not report["local"]


def test_a_cluster_objects_exited_engines_are_not_waited_for():
    from ipyparallel.cluster.launcher import LocalEngineSetLauncher

    from sklearn_ipp._cluster import _expected_engines

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        local = LocalEngineSetLauncher(n=3)  # three started, two gone
        local.launchers = {
            "alive": types.SimpleNamespace(pid=os.getpid()),
            "exited": types.SimpleNamespace(pid=exited.pid),
            "zombie": types.SimpleNamespace(pid=zombie.pid),
        }
        remote = types.SimpleNamespace(n=4)  # SSH, MPI, batch: as configured
        cluster = types.SimpleNamespace(engines={"local": local, "remote": remote})
        assert _expected_engines(cluster) == 1 + 4
    finally:
        zombie.wait()
