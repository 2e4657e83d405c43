"""Find the ipyparallel cluster a computation runs on.

Everything in sklearn_ipp that needs engines goes through :func:`resolve_cluster`,
so one rule decides where work runs:

- an ``ipyparallel.Client``, ``DirectView``/``LoadBalancedView`` (its engines
  only) or ``ipyparallel.Cluster`` given by the caller is used as it is;
- a string names a profile (or a profile directory, a cluster file or a client
  connection file) whose running cluster is used;
- None uses a running cluster of the default profile, else starts a local
  cluster owned by this process, reused by later calls and stopped at exit.

A cluster this package did not start is never stopped by it.

ipyparallel (with zmq, IPython and traitlets) is imported by the functions
that talk to a cluster, not with this module: ``import sklearn_ipp`` stays
cheap for a library that depends on it and may never use a cluster.
"""

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
from joblib import cpu_count

from ._exceptions import ClusterNotFoundError, EngineTimeoutError
from ._threads import thread_environment
from ._watchdog import (
    OWNER_FILE,
    PROCESSES_FILE,
    PROFILE_PREFIX,
    end_processes,
    remove_stale_clusters,
    start_watchdog,
    stop_watchdog,
    write_owner,
    write_processes,
)

if TYPE_CHECKING:
    import ipyparallel

__all__ = [
    "DEFAULT_TIMEOUT",
    "ClusterConnection",
    "end_stuck_engines",
    "get_client",
    "resolve_cluster",
    "stop_local_cluster",
]

logger = logging.getLogger("sklearn_ipp")
# A library leaves output to the application's logging setup; without this,
# warnings ipyparallel logs while reading stale cluster files would reach stderr.
logger.addHandler(logging.NullHandler())

# Seconds to wait for engines to register. A local cluster takes about 7 s to
# start on a small machine; batch-queued engines can take much longer, which is
# why every entry point lets the caller raise it.
DEFAULT_TIMEOUT = 60.0

# A controller that crashed leaves its connection file behind, and a client only
# notices when its registration request times out: keep that wait short so a
# stale file does not stall every call.
_CONNECT_TIMEOUT = 5.0

# Polling interval while waiting for engines to register.
_POLL_INTERVAL = 0.1

_LOCAL_SOURCE = "local cluster started by sklearn_ipp"

_local_lock = threading.RLock()
_local_cluster = None  # the ipyparallel.Cluster this process started, if any
_local_client = None
_local_profile_dir = None
_local_watchdog = None  # the subprocess.Popen of the cluster's watchdog
_atexit_registered = False


@dataclass
class ClusterConnection:
    """A client connected to a controller, restricted to some of its engines.

    Parameters
    ----------
    client : ipyparallel.Client
        The connected client.
    targets : list of int or None, default=None
        Engine ids the work is restricted to; None means every engine,
        including engines that register later.
    owns_client : bool, default=False
        Whether :meth:`close` closes the client (True when it was made only
        for this connection).
    source : str, default="given by the caller"
        Where the cluster came from, for messages and ``python -m sklearn_ipp
        info``.
    cluster : ipyparallel.Cluster or None, default=None
        The cluster object the caller gave, if any: engines of it that this
        process started may be replaced (see :func:`end_stuck_engines`).
    """

    client: "ipyparallel.Client"
    targets: list | None = None
    owns_client: bool = False
    source: str = "given by the caller"
    cluster: "ipyparallel.Cluster | None" = None

    @property
    def engine_ids(self):
        """Ids of the registered engines this connection may use (list of int)."""
        ids = self.client.ids
        if self.targets is None:
            return ids
        return [engine_id for engine_id in ids if engine_id in self.targets]

    def direct_view(self, targets=None):
        """Return a blocking DirectView on ``targets`` (default: all of ours)."""
        view = self.client.direct_view(
            self.engine_ids if targets is None else list(targets)
        )
        view.block = True
        return view

    def load_balanced_view(self):
        """Return a LoadBalancedView over this connection's engines."""
        return self.client.load_balanced_view(targets=self.targets)

    def close(self):
        """Close the client if it was opened for this connection only."""
        if not self.owns_client:
            return
        client = self.client
        if getattr(client, "_io_thread", None) is threading.current_thread():
            # A backend is often freed by the cyclic garbage collector (joblib's
            # Parallel and its callbacks refer to each other), which runs its
            # finalizer in whatever thread allocates: this client's own IO
            # thread too. Closed there, the client cannot stop that thread's
            # loop before closing its sockets, and pyzmq warns about each of
            # them ("Unregistering FD ... after closing socket"), in the middle
            # of whatever the user runs then. Closed from a thread of its own,
            # the loop is stopped first.
            threading.Thread(
                target=client.close, name="sklearn_ipp-close", daemon=True
            ).start()
        else:
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def resolve_cluster(client=None, *, timeout=DEFAULT_TIMEOUT, min_engines=1):
    """Connect to the cluster described by ``client``.

    Parameters
    ----------
    client : None, str, os.PathLike, ipyparallel.Client, View or Cluster, \
            default=None
        Where to run:

        - ``ipyparallel.Client``: all of its engines;
        - ``DirectView`` or ``LoadBalancedView``: the engines of that view;
        - ``ipyparallel.Cluster``: that cluster, started first if it is not
          running (it then follows its own ``shutdown_atexit`` setting);
        - str or path: a profile name, a profile directory, a cluster file
          (``cluster-*.json``) or a client connection file
          (``ipcontroller-client.json``) of a running cluster;
        - None: a running cluster of the default profile if there is one, else
          a local cluster with one engine per CPU, started by and owned by this
          process, reused by later calls and stopped at interpreter exit.
    timeout : float, default=60
        Seconds to wait for engines to register.
    min_engines : int, default=1
        Number of engines that must be registered before returning. A cluster
        that is started here waits for all the engines it starts.

    Returns
    -------
    connection : ClusterConnection
        Close it (or use it as a context manager) when done; this never stops
        a cluster.

    Raises
    ------
    ClusterNotFoundError
        If no running cluster matches ``client``.
    EngineTimeoutError
        If fewer engines than expected registered within ``timeout``.
    TypeError
        If ``client`` is of an unsupported type.
    """
    import ipyparallel as ipp
    from ipyparallel.client.view import View

    if isinstance(client, ClusterConnection):
        # A borrowed connection: closing ours must not close the caller's client.
        connection = ClusterConnection(
            client.client, client.targets, False, client.source, client.cluster
        )
    elif isinstance(client, View):
        connection = ClusterConnection(
            client.client, _view_targets(client), source=f"given {client!r}"
        )
    elif isinstance(client, ipp.Client):
        connection = ClusterConnection(client, source=f"given {client!r}")
    elif isinstance(client, ipp.Cluster):
        connection, min_engines = _connect_cluster_object(client, min_engines)
    elif isinstance(client, (str, os.PathLike)):
        connection = _connect_named(client)
    elif client is None:
        connection, min_engines = _connect_default(min_engines, timeout)
    else:
        raise TypeError(
            "client must be None, a profile name, an ipyparallel.Client, a "
            f"DirectView or LoadBalancedView, or an ipyparallel.Cluster; got "
            f"{client!r} of type {type(client).__name__}."
        )
    try:
        _wait_for_engines(connection, min_engines, timeout)
    except BaseException:
        connection.close()
        raise
    return connection


def get_client(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Return an ``ipyparallel.Client`` for the cluster sklearn_ipp would use.

    Parameters
    ----------
    client : None, str, os.PathLike, ipyparallel.Client, View or Cluster, \
            default=None
        Same meaning as everywhere in sklearn_ipp: see :func:`resolve_cluster`.
        With None, a running cluster of the default profile is used, else a
        local cluster is started and owned by this process.
    timeout : float, default=60
        Seconds to wait for at least one engine to register.

    Returns
    -------
    client : ipyparallel.Client
        The connected client. Do not close the client of the local cluster
        owned by sklearn_ipp; use :func:`stop_local_cluster` to stop it.

    Examples
    --------
    >>> from sklearn_ipp import get_client
    >>> client = get_client()  # doctest: +SKIP
    >>> len(client.ids)  # doctest: +SKIP
    2
    """
    return resolve_cluster(client, timeout=timeout).client


def stop_local_cluster():
    """Stop the local cluster started by sklearn_ipp in this process, if any.

    Clusters that sklearn_ipp did not start are left alone. This also runs at
    interpreter exit; call it to free the engines' memory earlier.

    Returns
    -------
    stopped : bool
        Whether a cluster was stopped.
    """
    return _stop_local_cluster(remove_logs=True)


def _stop_local_cluster(remove_logs):
    global _local_cluster, _local_client, _local_profile_dir, _local_watchdog
    with _local_lock:
        cluster, client, profile_dir, watchdog = (
            _local_cluster,
            _local_client,
            _local_profile_dir,
            _local_watchdog,
        )
        _local_cluster = _local_client = _local_profile_dir = None
        _local_watchdog = None
    if cluster is None:
        return False
    processes = _cluster_processes(cluster)
    try:
        client.close()
    finally:
        try:
            cluster.stop_cluster_sync()
        finally:
            end_processes(processes)
            # Ended only now, so that it still cleans up if this process is
            # killed while stopping the cluster.
            if watchdog is not None:
                stop_watchdog(watchdog)
            if remove_logs:
                shutil.rmtree(profile_dir, ignore_errors=True)
            else:
                _disown(profile_dir)
    return True


def end_stuck_engines(pids, client, cluster=None):
    """End engines that this process started; start new ones in their place.

    For engines that a stop signal did not free (a task in a call of
    compiled code that does not return). Only engines this process started
    on this machine are ended: those of its own local cluster when
    ``client`` is that cluster's client, or those of ``cluster``, an
    ``ipyparallel.Cluster`` the caller gave, started here with a local
    engine launcher. Other pids (engines of ``ipcluster``, of another
    process, on other hosts, under MPI or a batch system) are left alone.

    Parameters
    ----------
    pids : list of int or None
        Process ids of engines of ``client``'s cluster.
    client : ipyparallel.Client
        The client whose engines they are.
    cluster : ipyparallel.Cluster or None, default=None
        The cluster object ``client`` was connected to, if the caller gave one.

    Returns
    -------
    ended : list of int
        The pids ended; as many engines were started in their place.
    """
    with _local_lock:
        if client is _local_client and _local_cluster is not None:
            owned = _cluster_processes(_local_cluster)
            cluster = _local_cluster
        elif cluster is not None:
            owned = _started_here(_local_engine_processes(cluster))
        else:
            return []
        owned = {process.pid: process for process in owned}
        ended = [pid for pid in pids if pid in owned]
        if not ended:
            return []
        # The engines only: each one's nanny then tells the controller at
        # once that its engine died, and ends. Without it, the controller
        # would list the engine until its heartbeats time out (30 s).
        end_processes([owned[pid] for pid in ended], timeout=1)
        cluster.start_engines_sync(n=len(ended))
        if cluster is _local_cluster:
            write_processes(_local_profile_dir, _cluster_processes(cluster))
    return ended


def _local_engine_processes(cluster):
    """Return the processes of ``cluster``'s engine sets of local launchers."""
    from ipyparallel.cluster.launcher import LocalEngineSetLauncher

    engine_sets = [
        engine_set
        for engine_set in cluster.engines.values()
        if isinstance(engine_set, LocalEngineSetLauncher)
    ]
    return _launcher_processes(
        launcher
        for engine_set in engine_sets
        for launcher in getattr(engine_set, "launchers", {}).values()
    )


def _started_here(processes):
    """Keep the processes whose ancestors include this process.

    A cluster object read from a file (``Cluster.from_file``) has the
    engines of the process that started them: not ours to end.
    """
    here = os.getpid()
    kept = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if any(parent.pid == here for parent in process.parents()):
                kept.append(process)
    return kept


def _disown(profile_dir):
    """Keep a stopped cluster's logs from being removed by the next run.

    Without its owner record, the profile directory is no longer one of a
    local cluster to clean up after: it stays for the user to read.
    """
    for name in (OWNER_FILE, PROCESSES_FILE):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(profile_dir, name))


def _cluster_processes(cluster):
    """Return the processes of a local cluster and all their children.

    The children include each engine's nanny, which was seen to outlive its
    engine in interrupted runs; stopping the cluster does not end it.
    """
    launchers = [cluster.controller] if cluster.controller is not None else []
    for engine_set in cluster.engines.values():
        launchers.extend(getattr(engine_set, "launchers", {}).values())
    return _launcher_processes(launchers)


def _expected_engines(cluster):
    """Return how many engines of ``cluster`` should register with its controller.

    Engines of a local engine set that have exited (killed, crashed) are not
    waited for: an engine lost and another started in its place would
    otherwise count twice. Other launchers' (SSH, MPI, batch) engines count
    as their engine set says.
    """
    from ipyparallel.cluster.launcher import LocalEngineSetLauncher

    expected = 0
    for engine_set in cluster.engines.values():
        launchers = getattr(engine_set, "launchers", None)
        if isinstance(engine_set, LocalEngineSetLauncher) and launchers is not None:
            expected += sum(_alive(launcher) for launcher in list(launchers.values()))
        else:
            expected += engine_set.n
    return expected


def _alive(launcher):
    """Whether a local launcher's process is running (not exited, nor a zombie)."""
    try:
        process = psutil.Process(launcher.pid)
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, AttributeError, TypeError, ValueError):
        return False


def _launcher_processes(launchers):
    """Return the processes of ``launchers`` and all their children."""
    processes = []
    for launcher in launchers:
        try:
            process = psutil.Process(launcher.pid)
            processes += [process, *process.children(recursive=True)]
        except (psutil.Error, AttributeError, TypeError, ValueError):
            continue
    return processes


def _view_targets(view):
    """Normalise a view's targets to a list of ids, or None for all engines."""
    targets = view.targets
    if targets is None or (isinstance(targets, str) and targets == "all"):
        return None
    if isinstance(targets, int):
        return [targets]
    return list(targets)


def _connect_cluster_object(cluster, min_engines):
    """Connect to an ``ipyparallel.Cluster``, starting it if it is not running."""
    if cluster.controller is None:
        logger.info("Starting %r", cluster)
        cluster.start_cluster_sync()
    expected = _expected_engines(cluster)
    client = cluster.connect_client_sync()
    connection = ClusterConnection(
        client, owns_client=True, source=repr(cluster), cluster=cluster
    )
    return connection, max(min_engines, expected)


def _connect_named(spec):
    """Connect to the running cluster named by a profile, directory or file."""
    path = os.fspath(spec)
    if os.path.isfile(path):
        return _connect_file(path)
    if os.sep in path or path.endswith(".json"):
        if not os.path.isdir(path):
            raise ClusterNotFoundError(
                f"No cluster file, connection file or profile directory exists at "
                f"{path!r}. The file may have been removed when its cluster "
                "stopped: start the cluster again, or pass a profile name."
            )
        profile_dir = os.path.abspath(path)
        start_command = f"ipcluster start --profile-dir={profile_dir} -n 4"
    else:
        profile_dir = os.path.join(_ipython_dir(), f"profile_{path}")
        start_command = f"ipcluster start --profile={path} -n 4"
    connection = _connect_running(profile_dir)
    if connection is None:
        raise ClusterNotFoundError(
            f"No running ipyparallel cluster was found for profile {path!r} "
            f"(looked in {os.path.join(profile_dir, 'security')}). Start one with "
            f"`{start_command}`, or pass client=None to use a local cluster "
            "started for you."
        )
    return connection


def _connect_file(path):
    """Connect with a cluster file or a client connection file."""
    import ipyparallel as ipp

    with open(path) as f:
        content = json.load(f)
    try:
        if "cluster" in content:  # a cluster file, as written by ipp.Cluster
            cluster = _load_cluster_file(path)
            if cluster.controller is None or not _launcher_alive(cluster.controller):
                raise ConnectionError("its controller is not running")
            client = cluster.connect_client_sync(timeout=_CONNECT_TIMEOUT)
        else:
            client = ipp.Client(path, timeout=_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ClusterNotFoundError(
            f"Could not connect to the cluster described in {path!r}: {exc}. Is it "
            "still running? Restart it with `ipcluster start`, or pass client=None "
            "to use a local cluster started for you."
        ) from exc
    return ClusterConnection(client, owns_client=True, source=path)


def _connect_running(profile_dir):
    """Connect to a running cluster of a profile directory, or return None.

    Clusters started by ``ipcluster start`` (empty cluster id) come first, then
    the most recently written cluster file; a controller started by hand with
    ``ipcontroller`` leaves only a connection file, tried last.
    """
    import ipyparallel as ipp

    security_dir = os.path.join(profile_dir, "security")
    for cluster in _running_clusters(security_dir):
        try:
            client = cluster.connect_client_sync(timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            logger.warning("Skipping unreachable cluster %r: %s", cluster, exc)
            continue
        return ClusterConnection(client, owns_client=True, source=repr(cluster))
    connection_file = os.path.join(security_dir, "ipcontroller-client.json")
    if os.path.isfile(connection_file):
        try:
            client = ipp.Client(connection_file, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            logger.warning("Skipping stale %s: %s", connection_file, exc)
        else:
            return ClusterConnection(client, owns_client=True, source=connection_file)
    return None


def _running_clusters(security_dir):
    """Yield the clusters of a security directory whose controller is alive."""
    try:
        names = os.listdir(security_dir)
    except OSError:
        return
    paths = [
        os.path.join(security_dir, name)
        for name in names
        if name.startswith("cluster-") and name.endswith(".json")
    ]
    paths.sort(key=lambda p: (os.path.basename(p) != "cluster-.json", -_mtime(p)))
    for path in paths:
        try:
            cluster = _load_cluster_file(path)
        except Exception as exc:  # a corrupt or foreign file must not stop the search
            logger.debug("Cannot load cluster file %s: %s", path, exc)
            continue
        if cluster.controller is not None and _launcher_alive(cluster.controller):
            yield cluster


def _load_cluster_file(path):
    """Return the ``ipyparallel.Cluster`` of a cluster file, loaded once.

    Loading one starts a thread per process of the cluster, which waits for
    the process to end: loaded again for every connection (every search, or
    every ``parallel_config`` block), they would pile up for as long as the
    cluster runs. Loaded again only when the file changes.
    """
    import ipyparallel as ipp

    version = _file_version(path)
    with _loaded_lock:
        loaded = _loaded_clusters.get(path)
    if loaded is not None and loaded[0] == version:
        return loaded[1]
    cluster = ipp.Cluster.from_file(path, log=logger)
    with _loaded_lock:
        replaced = _loaded_clusters.get(path)
        _loaded_clusters[path] = (version, cluster)
    if replaced is not None:
        _stop_waiting(replaced[1])
    return cluster


def _stop_waiting(cluster):
    """End the threads a loaded cluster has waiting for its processes.

    The file changes as engines come and go; the cluster loaded from it
    before is no longer used, and its threads would wait for as long as the
    processes run. ipyparallel ends them when a launcher stops, through an
    event it has no public method to set.
    """
    launchers = [cluster.controller]
    for engine_set in cluster.engines.values():
        launchers.append(engine_set)
        launchers.extend(getattr(engine_set, "launchers", {}).values())
    for launcher in launchers:
        event = getattr(launcher, "_stop_waiting", None)
        if event is not None:
            event.set()


# cluster file path -> (its version, the Cluster loaded from it)
_loaded_clusters = {}
_loaded_lock = threading.Lock()


def _file_version(path):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _launcher_alive(launcher):
    """Whether a launcher's process runs; True when it cannot be told locally."""
    process = getattr(launcher, "process", None)
    if not isinstance(process, psutil.Process):
        return True
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _connect_default(min_engines, timeout):
    """Use this process's local cluster, a running default one, or start one."""
    with _local_lock:
        if _local_client is not None:
            return ClusterConnection(_local_client, source=_LOCAL_SOURCE), min_engines
        default_profile_dir = os.path.join(_ipython_dir(), "profile_default")
        connection = _connect_running(default_profile_dir)
        if connection is not None:
            return connection, min_engines
        n_engines = cpu_count()
        _start_local_cluster(n_engines, timeout)
        connection = ClusterConnection(_local_client, source=_LOCAL_SOURCE)
        return connection, max(min_engines, n_engines)


def _start_local_cluster(n_engines, timeout):
    """Start the process-owned local cluster in a private profile directory.

    A private profile keeps other processes from discovering, and then losing,
    a cluster that disappears when this process exits. A watchdog ends the
    cluster if this process dies without running its exit hooks, and the
    clusters of dead processes that had no watchdog left are removed first.
    """
    global _local_cluster, _local_client, _local_profile_dir, _local_watchdog
    global _atexit_registered
    import ipyparallel as ipp
    from traitlets.config import Config

    from ._launcher import SameSessionEngineSetLauncher

    remove_stale_clusters()
    profile_dir = tempfile.mkdtemp(prefix=PROFILE_PREFIX)
    cluster = watchdog = None
    logger.info("Starting a local ipyparallel cluster with %d engines", n_engines)
    try:
        write_owner(profile_dir)
        # Started first: a client killed while the cluster starts leaves
        # processes that the watchdog finds by their profile directory.
        watchdog = start_watchdog(profile_dir)
        # Libraries an engine loads after its last message, or that run
        # before the first one, size their pools from these (see _threads).
        config = Config()
        config.EngineLauncher.environment = thread_environment(n_engines)
        # Engines in this process's session: on Linux, the kernel then
        # schedules their threads as one group (see _launcher).
        cluster = ipp.Cluster(
            n=n_engines,
            profile_dir=profile_dir,
            log=logger,
            config=config,
            engine_launcher_class=SameSessionEngineSetLauncher,
        )
        cluster.start_cluster_sync()
        write_processes(profile_dir, _cluster_processes(cluster))
        client = cluster.connect_client_sync()
    except BaseException:
        if cluster is not None:
            cluster.stop_cluster_sync()
        if watchdog is not None:
            stop_watchdog(watchdog)
        shutil.rmtree(profile_dir, ignore_errors=True)
        raise
    _local_cluster, _local_client, _local_profile_dir = cluster, client, profile_dir
    _local_watchdog = watchdog
    if not _atexit_registered:
        # Registered after ipyparallel's own exit hook so that it runs first
        # (atexit is last-in, first-out) and also removes the profile directory.
        atexit.register(stop_local_cluster)
        _atexit_registered = True
    log_dir = os.path.join(profile_dir, "log")
    try:
        _wait_for_engines(ClusterConnection(client), n_engines, timeout, log_dir)
    except BaseException:
        # Stop the processes but keep the logs the error message points to.
        _stop_local_cluster(remove_logs=False)
        raise


def _ipython_dir():
    """Return IPython's directory of profiles (``IPYTHONDIR``, else ~/.ipython)."""
    from IPython.paths import get_ipython_dir

    return get_ipython_dir()


def _wait_for_engines(connection, n_engines, timeout, log_dir=None):
    """Block until ``n_engines`` engines of the connection are registered."""
    deadline = time.monotonic() + timeout
    while True:
        n_seen = len(connection.engine_ids)
        if n_seen >= n_engines:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    logs = log_dir or "the log directory of the cluster's profile"
    raise EngineTimeoutError(
        f"Expected {n_engines} engine(s) to register with the controller within "
        f"{timeout:g} s, but {n_seen} did. Check that the engines are starting "
        f"(see the engine logs in {logs}) and start more with `ipcluster engines "
        "-n N`. Engines of a batch job still in the queue come only once it "
        "starts: to wait longer, pass a larger engine_wait= to the search, the "
        "curve or the joblib backend (timeout= to resolve_cluster and "
        "get_client)."
    )
