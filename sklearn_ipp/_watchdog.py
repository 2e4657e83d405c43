"""Stop the local cluster of a client process that died without stopping it.

The local cluster sklearn_ipp starts is stopped at interpreter exit. A client
killed by SIGKILL, SIGTERM or the OOM killer runs no exit hook, and its
controller and engines (each with its nanny) would run forever: their
launchers start them in sessions of their own, so nothing else ends them.
Two things clean up after such a client:

- a watchdog, a small process started with the cluster in a session of its own
  (so that a signal to the client's process group does not reach it), checks
  about once a second that the client still runs; once it is gone, it
  terminates (then kills) every process of the cluster and removes the profile
  directory;
- the next local cluster started by this user on this host removes the
  profile directories of dead clients, and ends the processes they recorded,
  which covers a watchdog that was killed too.

The profile directory records its owner (``owner.json``, as the stores do) and
the cluster's processes (``processes.json``). The watchdog runs this file as a
script, not as a module of the package, so that it imports only psutil: the
package would cost it more than 100 MB.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

# Prefix of the profile directories of local clusters (the rest is random).
PROFILE_PREFIX = "sklearn_ipp-cluster-"

# The owner record, named as in the stores (``_store.OWNER_FILE``), which this
# file does not import when it runs as the watchdog.
OWNER_FILE = "owner.json"

# ``[[pid, create_time], ...]`` of the controller and engines, with their
# children at the time the cluster started.
PROCESSES_FILE = "processes.json"

# What the watchdog writes (only a traceback, if it fails), in the profile
# directory: not to the client's stdout or stderr, which a parent reading the
# client's output would otherwise see open until the watchdog ends.
_LOG_FILE = "watchdog.log"

# Seconds between two checks of the owner.
POLL_INTERVAL = 1.0

# Seconds that processes get to exit after SIGTERM before they are killed.
_TERMINATE_TIMEOUT = 5.0

# psutil computes a process's start time from clock ticks since boot: the
# same process can read a little differently from two processes.
_CREATE_TIME_TOLERANCE = 1.0


def write_owner(profile_dir):
    """Record in ``profile_dir`` that this process owns it.

    Parameters
    ----------
    profile_dir : str
        The profile directory of the local cluster, just made.
    """
    # Imported here: the watchdog runs this file without the package.
    from ._store import _this_process

    _write_json(os.path.join(profile_dir, OWNER_FILE), _this_process())


def write_processes(profile_dir, processes):
    """Record the processes of the cluster in its profile directory.

    Parameters
    ----------
    profile_dir : str
        The profile directory of the local cluster.
    processes : list of psutil.Process
        The controller and engine processes, with their children.
    """
    record = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            record.append([process.pid, process.create_time()])
    _write_json(os.path.join(profile_dir, PROCESSES_FILE), record)


def recorded_processes(profile_dir):
    """Return the recorded processes of a profile directory that still run.

    Parameters
    ----------
    profile_dir : str
        The profile directory of a local cluster.

    Returns
    -------
    processes : list of psutil.Process
        Only processes whose start time matches the record: a pid can have
        been reused by an unrelated process since.
    """
    try:
        with open(os.path.join(profile_dir, PROCESSES_FILE)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []
    processes = []
    for item in record if isinstance(record, list) else []:
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            pid, create_time = item
            process = psutil.Process(pid)
            if abs(process.create_time() - create_time) < _CREATE_TIME_TOLERANCE:
                processes.append(process)
    return processes


def with_descendants(processes):
    """Return ``processes`` and all their descendants, each once.

    Parameters
    ----------
    processes : iterable of psutil.Process

    Returns
    -------
    processes : list of psutil.Process
        Those that are gone are left out.
    """
    # One scan of the process table for all of them: psutil's children()
    # scans it once per call, which on a large host takes a core.
    children = {}
    for one in psutil.process_iter(["ppid"]):
        children.setdefault(one.info["ppid"], []).append(one)
    found = {}
    waiting = list(processes)
    while waiting:
        process = waiting.pop()
        if process.pid in found:
            continue
        found[process.pid] = process
        waiting.extend(children.get(process.pid, ()))
    return [process for process in found.values() if _running(process)]


def processes_of(profile_dir):
    """Return this user's processes started with ``profile_dir`` as profile.

    ipyparallel gives the controller and the engines it launches their
    profile directory in ``IPP_PROFILE_DIR``: this finds them even when the
    client died before it could record them.
    """
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"].real != os.getuid():
                continue
            if process.environ().get("IPP_PROFILE_DIR") == profile_dir:
                found.append(process)
        except (psutil.Error, AttributeError):
            continue
    return found


def end_processes(processes, timeout=_TERMINATE_TIMEOUT):
    """Terminate, then kill, whichever of ``processes`` still run.

    Parameters
    ----------
    processes : iterable of psutil.Process
    timeout : float, default=5
        Seconds they get to exit after SIGTERM.
    """
    alive = [process for process in processes if _running(process)]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [process for process in alive if _running(process)]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _running(process):
    """Whether a process runs: a zombie has ended, only not been reaped.

    The processes of a dead client are reaped by whichever process adopts
    them, which in a container need not be quick about it.
    """
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def end_cluster(profile_dir, processes, rounds=5):
    """End ``processes``, their descendants and the others of ``profile_dir``.

    Again until none is left: a controller ended while it starts may have
    started a process that no scan saw yet.
    """
    for _ in range(rounds):
        found = with_descendants([*processes, *processes_of(profile_dir)])
        if not found:
            return
        end_processes(found)
        processes = []


def remove_stale_clusters(parent=None):
    """Remove the local clusters of this user's dead processes on this host.

    Parameters
    ----------
    parent : str, default=None
        Where the profile directories are; None means the temporary directory,
        where ``tempfile.mkdtemp`` makes them.

    Returns
    -------
    removed : list of str
        The profile directories removed. The processes they recorded that
        still ran, and their descendants, were ended first.
    """
    from ._store import process_is_alive, stale_stores

    parent = tempfile.gettempdir() if parent is None else parent
    removed = []
    # Only real directories of this user, with an owner record of this host:
    # a pid means nothing on another host.
    for path, owner in stale_stores(parent, prefix=PROFILE_PREFIX).items():
        if process_is_alive(owner):
            continue
        end_cluster(path, recorded_processes(path))
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def start_watchdog(profile_dir):
    """Start the watchdog of this process's local cluster.

    Parameters
    ----------
    profile_dir : str
        The cluster's profile directory, with its owner and processes
        recorded.

    Returns
    -------
    watchdog : subprocess.Popen
        Stop it with :func:`stop_watchdog` when the cluster is stopped.
    """
    with open(os.path.join(profile_dir, _LOG_FILE), "ab") as log:
        return subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), profile_dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            # A Ctrl-C or a kill of the client's process group must not end it.
            start_new_session=True,
        )


def stop_watchdog(watchdog, timeout=_TERMINATE_TIMEOUT):
    """End a watchdog started by :func:`start_watchdog`, and reap it.

    Parameters
    ----------
    watchdog : subprocess.Popen
    timeout : float, default=5
        Seconds it gets to exit after SIGTERM before it is killed.
    """
    if watchdog.poll() is None:
        with contextlib.suppress(OSError):
            watchdog.terminate()
    try:
        watchdog.wait(timeout)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def watch(profile_dir, poll_interval=POLL_INTERVAL):
    """Wait for the owner of a local cluster to die, then end the cluster.

    Parameters
    ----------
    profile_dir : str
        The cluster's profile directory, with its owner and processes
        recorded.
    poll_interval : float, default=1
        Seconds between two checks.

    Returns
    -------
    ended : bool
        True if the owner died and the cluster was ended here; False if the
        profile directory was removed first, as when the owner stops the
        cluster.
    """
    with open(os.path.join(profile_dir, OWNER_FILE)) as f:
        owner_record = json.load(f)
    try:
        owner = psutil.Process(owner_record["pid"])
        if abs(owner.create_time() - owner_record["create_time"]) >= (
            _CREATE_TIME_TOLERANCE
        ):
            owner = None
    except psutil.NoSuchProcess:
        owner = None
    processes = recorded_processes(profile_dir)
    while os.path.isdir(profile_dir):
        # An engine starts its nanny after it starts, and a nanny whose engine
        # is killed is adopted by another process: keep every descendant seen.
        # Engines started later in place of stuck ones are recorded then.
        processes = with_descendants(processes + recorded_processes(profile_dir))
        if owner is None or not _running(owner):
            end_cluster(profile_dir, processes)
            shutil.rmtree(profile_dir, ignore_errors=True)
            return True
        time.sleep(poll_interval)
    return False


def _write_json(path, obj):
    """Write ``obj`` to ``path`` whole or not at all: another run may read it."""
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "w") as f:
        json.dump(obj, f)
    os.replace(tmp_path, path)


if __name__ == "__main__":
    watch(sys.argv[1])
