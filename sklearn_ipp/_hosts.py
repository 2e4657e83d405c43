"""Which engines may take tasks, and how each host gets the stored data.

Every engine is probed once when it is first seen (at the start, or when it
joins later): its host, its package versions, and whether it sees the
client's store, by reading a marker file with a random token at the store's
path. Hosts that do (this host, or one sharing the filesystem such as NFS)
read the client's files directly. A host that does not gets its own store
directory, and the data (X, y, the parameters with one value per sample) is
sent to one engine of that host once, whatever the number of its engines,
splits or candidates; that engine then cuts each fold the client stores from
its copy, given only the fold's row numbers, and the engines of the host read
what it wrote.

An engine receives tasks only once its host holds the data; engines that
leave (or die) are dropped as the client sees them go.

The functions that make, fill and remove a host's copy on its engines are at
the end of this module.
"""

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
import warnings

import numpy as np
from sklearn.utils import _safe_indexing

from ._engines import check_versions, start_probe
from ._exceptions import EngineLostError, EngineVersionError
from ._store import (
    COPY_CHUNK_BYTES,
    _this_process,
    check_private_directory,
    content_hash,
    default_parent,
    directory_for,
    in_ram,
    is_plain_array,
    load_stored,
    make_store_directory,
    npy_chunks,
    npy_size,
    pack_rows,
    packed_nbytes,
    process_is_alive,
    remove_store,
    selected_nbytes,
    spill_directory,
    stale_stores,
    unpack_rows,
    write_atomically,
    write_joblib,
    write_npy,
)
from ._threads import threads_per_engine

__all__ = ["EngineLosses", "EngineRoster"]

logger = logging.getLogger("sklearn_ipp")

# Seconds to wait for a host to remove its copy of the store when a call ends.
CLOSE_TIMEOUT = 10.0

# Files are sent to a host in chunks of this size, a few at a time, so that
# neither side holds a whole large file in memory as a message.
TRANSFER_CHUNK_BYTES = 32 * 2**20
TRANSFERS_IN_FLIGHT = 4


class _Host:
    def __init__(self, hostname, shared, n_cpus):
        self.hostname = hostname
        self.shared = shared  # reads the client's store directly
        self.n_cpus = n_cpus
        self.directory = None  # its own store, when not shared
        self.engines = set()
        self.sources = {}  # content hash -> name of the whole data it holds
        self.n_files = 0  # files sent to it, and every byte sent (rows too)
        self.nbytes = 0


class EngineRoster:
    """The engines of a connection that are ready for tasks.

    Parameters
    ----------
    connection : ClusterConnection
        Whose engines to follow, including engines that join later.
    store : Store
        The client's store, which every ready engine can read, directly or
        through its host's copy.
    check_versions : bool, default=True
        Whether engines must run the client's package versions. A mismatch
        among the first engines is an error; an engine joining later with
        other versions is left out with a warning.
    on_probe_reply : callable or None, default=None
        Called with no argument, in ipyparallel's thread, when a probe's
        engines answer: a scheduler that waits for ready engines wakes up
        then rather than at its next poll.
    content_key : callable or None, default=None
        ``content_key(obj)``: the content hash of data, which names its copy
        on other hosts (a caller that hashed it already saves a second
        pass); None: :func:`content_hash`.
    """

    def __init__(
        self,
        connection,
        store,
        check_versions=True,
        on_probe_reply=None,
        content_key=None,
    ):
        self.connection = connection
        self.store = store
        self.check_versions = check_versions
        self.on_probe_reply = on_probe_reply
        self._content_key = content_key or content_hash
        self.ready = {}  # engine id -> hostname
        self.pids = {}  # engine id -> process id, on its host
        # Engines whose tasks the stop signal stops (see install_stop_handler).
        self.stoppable = set()
        self.hosts = {}  # hostname -> _Host
        self._seen = set()  # engine ids probed or being probed
        self._probes = []  # AsyncResults of probes not yet handled
        # File name -> (StoredData, data, rows, columns): what hosts must hold,
        # and what it was cut from.
        self._live = {}
        self._first_probe = True

    # Engines ---------------------------------------------------------------

    def refresh(self):
        """Probe new engines, admit probed ones, drop engines that left."""
        ids = set(self.connection.engine_ids)
        for engine_id in list(self.ready):
            if engine_id not in ids:
                hostname = self.ready.pop(engine_id)
                self.stoppable.discard(engine_id)
                self.hosts[hostname].engines.discard(engine_id)
                logger.info("Engine %s on %s left the cluster.", engine_id, hostname)
        new = sorted(ids - self._seen)
        if new:
            self._seen.update(new)
            probe = start_probe(self.connection, new, self.store)
            if self.on_probe_reply is not None:
                probe.add_done_callback(lambda _: self.on_probe_reply())
            self._probes.append(probe)
        for probe in [p for p in self._probes if p.ready()]:
            self._probes.remove(probe)
            self._admit(probe)

    @property
    def probing(self):
        """Whether engines are being probed and may soon be ready."""
        return bool(self._probes)

    def _admit(self, probe):
        first, self._first_probe = self._first_probe, False
        try:
            facts = probe.get_dict()
        except Exception as exc:
            # An engine that died while probed: the others are probed again.
            logger.info("Probing engines failed (%s); probing again.", exc)
            self._seen.difference_update(probe.engine_id or [])
            return
        if self.check_versions:
            try:
                check_versions(facts)
            except EngineVersionError as exc:
                if first:
                    raise
                warnings.warn(
                    f"{exc} These engines get no tasks.", RuntimeWarning, stacklevel=2
                )
                return
        for engine_id, fact in sorted(facts.items()):
            host = self.hosts.get(fact["hostname"])
            if host is None:
                host = self.hosts[fact["hostname"]] = _Host(
                    fact["hostname"], fact["sees_store"], fact["n_cpus"]
                )
            if not host.shared and host.directory is None:
                self._open_host_store(host, engine_id)
            host.engines.add(engine_id)
            self.ready[engine_id] = host.hostname
            self.pids[engine_id] = fact.get("pid")
            if fact.get("stop_signal"):
                self.stoppable.add(engine_id)
            logger.info("Engine %s on %s takes tasks.", engine_id, host.hostname)

    def thread_limits(self, n_threads=None):
        """Return the BLAS and OpenMP threads of an engine, per hostname.

        Parameters
        ----------
        n_threads : int or None, default=None
            joblib's ``inner_max_num_threads``, which every engine gets when
            given. None: ``threads_per_engine`` of the host's CPUs and of its
            ready engines, which changes as engines join and leave.

        Returns
        -------
        limits : dict of str to int
        """
        return {
            hostname: n_threads or threads_per_engine(host.n_cpus, len(host.engines))
            for hostname, host in self.hosts.items()
        }

    # Data on hosts without the client's filesystem --------------------------

    def _open_host_store(self, host, engine_id):
        view = self.connection.direct_view([engine_id])
        largest = max((live[0].nbytes for live in self._live.values()), default=0)
        [(directory, others)] = view.apply(make_host_store, largest, _this_process())
        stale = [path for path, owner in others.items() if not process_is_alive(owner)]
        if stale:
            view.apply(remove_host_stores, stale)
        host.directory = directory
        for live in list(self._live.values()):
            self._cut(host, engine_id, *live).get()
        self.store.host_dirs[host.hostname] = directory

    def add(self, ref, data, rows=None, columns=None):
        """Make stored data available on every host (call after writing it).

        Parameters
        ----------
        ref : StoredData
            What the client's store holds: ``data[rows][:, columns]``.
        data : object
            The data it was cut from, sent whole to a host that lacks it.
        rows, columns : array-like of int or None, default=None
            The rows (and columns) of ``data`` that ``ref`` holds; None: all.
        """
        self._live[ref.name] = (ref, data, rows, columns)
        cuts = [
            self._cut(host, min(host.engines), ref, data, rows, columns)
            for host in self._remote_hosts()
        ]
        for cut in cuts:
            cut.get()

    def _cut(self, host, engine_id, ref, data, rows, columns):
        """Have a host cut ``ref`` from its copy of ``data``; return the call.

        The data goes there first if the host lacks it, once.
        """
        source, kind = self._send_source(host, engine_id, data)
        rows, columns = pack_rows(rows), pack_rows(columns)
        host.nbytes += packed_nbytes(rows) + packed_nbytes(columns)
        view = self.connection.direct_view([engine_id])
        view.block = False
        return view.apply_async(
            cut_stored, host.directory, source, kind, ref.name, rows, columns
        )

    def _send_source(self, host, engine_id, data):
        """Send ``data`` whole to a host unless it has it; return its name, kind."""
        key = self._content_key(data)
        kind = "npy" if is_plain_array(data) else "joblib"
        name = f"data-{key[:40]}.{kind}"
        if key in host.sources:
            return name, kind
        self._forget_idle_sources(host)
        if kind == "npy":
            self._send(host, engine_id, name, npy_chunks(data), npy_size(data))
        else:
            # joblib writes only to files: the client's store holds it while
            # it is sent.
            ref = self.store.write(data)
            try:
                with open(ref.path, "rb") as f:
                    chunks = iter(lambda: f.read(TRANSFER_CHUNK_BYTES), b"")
                    self._send(host, engine_id, name, chunks, os.path.getsize(ref.path))
            finally:
                self.store.remove(ref)
        host.sources[key] = name
        return name, kind

    def _forget_idle_sources(self, host):
        """Remove the data a host holds that no stored file was cut from.

        Kept until other data comes, so that the rounds of a search (each
        iteration of successive halving) and later calls on the same data
        do not send it again; removed then, so that a backend used for many
        datasets does not fill the host.
        """
        used = {self._content_key(live[1]) for live in self._live.values()}
        idle = [key for key in host.sources if key not in used]
        if not idle:
            return
        names = [host.sources.pop(key) for key in idle]
        view = self.connection.direct_view([min(host.engines)])
        view.block = False
        view.apply_async(remove_host_files, host.directory, names)

    def remove(self, ref):
        """Forget stored data on every host (its client file is removed)."""
        self._live.pop(ref.name, None)
        for host in self._remote_hosts():
            view = self.connection.direct_view([min(host.engines)])
            view.block = False
            view.apply_async(remove_host_files, host.directory, [ref.name])

    def close(self):
        """Remove the hosts' copies of the store."""
        removals = []
        for host in self._remote_hosts():
            view = self.connection.direct_view([min(host.engines)])
            view.block = False
            try:
                removals.append(
                    (
                        host.directory,
                        view.apply_async(remove_host_stores, [host.directory]),
                    )
                )
            except Exception as exc:  # a host that went away keeps its copy
                logger.info("Could not remove %s: %s", host.directory, exc)
            host.directory = None
            host.sources.clear()
        # Bounded: a controller that is gone would never answer.
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for directory, removal in removals:
            try:
                removal.get(timeout=max(deadline - time.monotonic(), 0.1))
            except Exception as exc:
                logger.info("Could not remove %s: %s", directory, exc)
        self._live.clear()

    def _remote_hosts(self):
        return [
            host
            for host in self.hosts.values()
            if host.directory is not None and host.engines
        ]

    def _send(self, host, engine_id, name, chunks, size):
        """Send a file, given as blocks of bytes, to a host's store."""
        view = self.connection.direct_view([engine_id])
        view.block = False
        digest = hashlib.sha256()
        pending = []
        offset = 0
        for data in _rechunked(chunks, TRANSFER_CHUNK_BYTES):
            digest.update(data)
            last = offset + len(data) >= size
            pending.append(
                view.apply_async(
                    receive_chunk,
                    host.directory,
                    name,
                    offset,
                    data,
                    digest.hexdigest() if last else None,
                    size,
                )
            )
            offset += len(data)
            if len(pending) >= TRANSFERS_IN_FLIGHT:
                pending.pop(0).get()
        if offset != size:
            raise RuntimeError(f"Sent {offset} bytes of {name}, not {size}.")
        for result in pending:
            result.get()
        host.n_files += 1
        host.nbytes += size

    def transfers(self):
        """Files and bytes sent to each host, ``{hostname: (files, bytes)}``.

        Files are the data sent whole; bytes count them and the row numbers
        of the folds cut from them.
        """
        return {name: (host.n_files, host.nbytes) for name, host in self.hosts.items()}


def _rechunked(chunks, size):
    """Yield the bytes of ``chunks`` again, in blocks of ``size`` (the last less).

    Each block is a copy: ipyparallel may still be sending one while the
    next is read, and the blocks of :func:`npy_chunks` reuse one buffer.
    """
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


# On the engines of hosts without the client's filesystem ------------------
#
# Run there by reference: the client sends each dataset once to one engine of
# such a host, which writes it into a store directory of its own, then cuts
# from it the folds the client stores; the other engines of the host read the
# same files.


class EngineLosses:
    """What happens to tasks when engines die: retries, then errors.

    Parameters
    ----------
    roster : EngineRoster
        Whose ready and probing engines count.
    retries : int
        Times a task is sent again after the engine running it died.
    engine_wait : float
        Seconds to wait for an engine when none is left, before the call
        fails (the finished results are kept, see EngineLostError).
    kept_results_note : str
        Added to the errors, to say what is kept.
    """

    def __init__(self, roster, retries, engine_wait, kept_results_note):
        self._roster = roster
        self.retries = retries
        self.engine_wait = engine_wait
        self._note = kept_results_note
        self._since = None

    def sort(self, tasks, engine_id, n_done, n_submitted):
        """Count an attempt for the tasks of a dead engine.

        Returns the tasks to send again and ``(task, EngineLostError)`` for
        those that used up their retries.
        """
        logger.warning(
            "Engine %s died while running %d task(s); sending them again.",
            engine_id,
            len(tasks),
        )
        again, lost = [], []
        for task in tasks:
            task.attempts += 1
            if task.attempts <= self.retries:
                again.append(task)
                continue
            error = EngineLostError(
                f"A task was running on an engine that died, {task.attempts} "
                f"times (retries={self.retries}), the last time engine "
                f"{engine_id}. The task itself may be what kills its engine, "
                "for example by running out of memory: check the engines' "
                "logs and memory (sklearn_ipp.hosts_free_memory())." + self._note,
                n_done=n_done,
                n_submitted=n_submitted,
            )
            lost.append((task, error))
        return again, lost

    def check_engines_left(self, busy, n_done, n_submitted):
        """Raise EngineLostError once tasks waited ``engine_wait`` s for engines.

        ``busy()`` says whether tasks wait or run; it is asked only when no
        engine is left.
        """
        if self._roster.ready or self._roster.probing:
            self._since = None
            return
        if not busy():
            return
        now = time.monotonic()
        if self._since is None:
            self._since = now
            logger.warning(
                "No engine left; waiting up to %.0f s for engines.", self.engine_wait
            )
        if now - self._since >= self.engine_wait:
            raise EngineLostError(
                f"Every engine of the cluster is gone, and none came back within "
                f"{self.engine_wait:.0f} s: {n_done} of {n_submitted} tasks "
                "finished. Start engines (for example `ipcluster engines "
                "--n=4` or cluster.start_engines_sync(n=4)) and run the call "
                "again, or pass a larger engine_wait= to wait longer for them."
                + self._note,
                n_done=n_done,
                n_submitted=n_submitted,
            )


def make_host_store(expected_nbytes, owner):
    """Make this host's copy of a client's store; return its path and others.

    Parameters
    ----------
    expected_nbytes : int
        Size of the largest data expected, to choose the location.
    owner : dict
        The client process, recorded in the store so that a later client of
        the same host can tell whether it still runs.

    Returns
    -------
    path : str
        The new directory (mode 0700).
    others : dict
        ``{path: owner}`` of this user's other stores here made by processes
        of the client's host, for the client to remove those of dead ones.
    """
    parent = default_parent(expected_nbytes)
    others = stale_stores(parent, hostname=owner["hostname"])
    return make_store_directory(parent, owner), others


def receive_chunk(directory, name, offset, data, sha256=None, size=0):
    """Write ``data`` at ``offset`` of ``name`` in a host store.

    The file is written under a temporary name; with the last chunk comes the
    SHA-256 of the whole file, which is checked before the file is renamed
    into place, so that engines never read a partial or corrupted copy. A
    store in ``/dev/shm`` without room for the file's ``size`` (given with
    its first chunk) puts it in its twin in the temporary directory.
    """
    if offset == 0:
        directory = directory_for(directory, size)
    elif in_ram(directory) and not os.path.exists(
        os.path.join(directory, name + ".part")
    ):
        directory = spill_directory(directory)
    check_private_directory(directory)
    path = os.path.join(directory, name)
    part = path + ".part"
    with open(part, "r+b" if offset else "wb") as f:
        f.seek(offset)
        f.write(data)
    if sha256 is None:
        return
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        while chunk := f.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        os.remove(part)
        raise OSError(
            f"The copy of {name} on host {socket.gethostname()!r} does not match "
            "the client's file (SHA-256 differs): it was corrupted on the way."
        )
    os.rename(part, path)


def cut_stored(directory, source, kind, name, rows=None, columns=None):
    """Write ``name`` in a host store: rows (and columns) of the data ``source``.

    What the client wrote into its own store, the same bytes, made here from
    this host's copy of the data instead of sent. ``rows`` and ``columns``
    come packed (:func:`pack_rows`); with neither, ``name`` is a hard link to
    the data (a copy where a link cannot be made). Columns are cut from
    arrays only, as the client's store does.
    """
    source_path = _host_file(directory, source)
    rows, columns = unpack_rows(rows), unpack_rows(columns)
    whole = rows is None and columns is None
    if whole:
        nbytes = os.path.getsize(source_path)
    else:
        data = load_stored(source_path, kind)  # checked to be private
        if kind == "npy":
            data = data.view(np.ndarray)
            nbytes = selected_nbytes(data, rows, columns)
        else:
            data = _safe_indexing(data, rows) if rows is not None else data
            nbytes = getattr(data, "nbytes", 0)
    target = directory_for(directory, nbytes)
    check_private_directory(target)
    path = os.path.join(target, name)
    if whole:
        write_atomically(path, _link_or_copy, source_path)
    elif kind == "npy":
        write_atomically(path, write_npy, data, rows, columns)
    else:
        write_atomically(path, write_joblib, data)


def _link_or_copy(path, source_path):
    try:
        os.link(source_path, path)
    except OSError:  # another filesystem (the spill directory)
        shutil.copyfile(source_path, path)


def _host_file(directory, name):
    """Return the path of ``name`` in a host store or in its spill twin."""
    path = os.path.join(directory, name)
    if not os.path.exists(path) and in_ram(directory):
        path = os.path.join(spill_directory(directory), name)
    return path


def remove_host_files(directory, names):
    """Remove files from a host store (engines that map them keep them)."""
    directories = [directory]
    if in_ram(directory):
        directories.append(spill_directory(directory))
    for name in names:
        for where in directories:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(where, name))


def remove_host_stores(paths):
    """Remove whole host stores."""
    for path in paths:
        remove_store(path)
