"""A private, per-fit store of data that engines memory-map read-only.

The client writes each piece of data once into a directory that only its user
can read; engines on a host that sees the directory open the files with
``mmap_mode="r"``, so all engines of a host share one copy in the page cache
and no task message carries data (files under 1 MB are simply read, read-only).

A cross-validation split is stored as a *fold*: the rows of the training set
followed by the rows of the test set. Tasks then index the training set with
``np.arange(n_train)`` and the test set with ``np.arange(n_train, n)``, and the
stored arrays come back as :class:`RowRangeArray`, which answers indexing by
such a contiguous range with a view instead of numpy's copy: no copy of the
data per fit. (Slices would say the same more directly, but scikit-learn >=
1.8 turns ``train`` and ``test`` into arrays before indexing.)
"""

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import uuid
import zlib

import joblib
import numpy as np
from sklearn.utils import _safe_indexing

from ._exceptions import StoreError

logger = logging.getLogger("sklearn_ipp")

__all__ = [
    "RowRange",
    "RowRangeArray",
    "Store",
    "StoredData",
    "content_hash",
    "is_plain_array",
    "load_stored",
    "npy_chunks",
    "npy_size",
    "pack_rows",
    "packed_nbytes",
    "selected_nbytes",
    "unpack_rows",
    "write_atomically",
    "write_joblib",
    "write_npy",
]

# Only the owner may list, read or write: engines unpickle what they find
# there, so nobody else must be able to plant a file.
FOLDER_PERMISSIONS = 0o700

# Rows are copied into a fold file by chunks of this size, so writing a fold
# costs the client this much memory instead of a copy of the fold.
COPY_CHUNK_BYTES = 64 * 2**20

# Smaller stored arrays are read into engine memory (still read-only) rather
# than memory-mapped: a map costs more than it saves on data this small. The
# same threshold as joblib's ``max_nbytes``.
MMAP_MIN_BYTES = 2**20

# RAM-backed location used when it has room for this many times the data;
# the rest of it stays free for the fits themselves.
_SHM_DIR = "/dev/shm"
_SHM_HEADROOM = 4

# Written into every store: who made it, so that the next run can tell the
# store of a crashed process from one in use.
OWNER_FILE = "owner.json"

# Prefix of store directory names (the rest is random, from mkdtemp).
STORE_PREFIX = "sklearn_ipp-"
# Prefix of the profile directories of local clusters, which record their
# owner too (see _watchdog), and are not stores.
_CLUSTER_PREFIX = "sklearn_ipp-cluster-"

_STORE_PARAMETER_HINT = (
    "Pass store_dir= a directory with enough free space that every engine host "
    "can read (for example a local disk such as /var/tmp)."
)


def content_hash(obj):
    """Return a hex digest of ``obj``'s content, fast for numpy arrays."""
    digest = hashlib.sha256()
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        digest.update(f"{obj.dtype.str}{obj.shape}".encode())
        digest.update(memoryview(np.ascontiguousarray(obj)).cast("B"))
    else:
        digest.update(joblib.hash(obj).encode())
    return digest.hexdigest()


class StoredData:
    """A reference to data in a store; unpickles as the data itself.

    A task message carries this reference (a path), never the data; on the
    engine, unpickling it opens the file read-only and memory-mapped.

    Parameters
    ----------
    path : str
        The file in the store.
    kind : {"npy", "joblib"}
        ``"npy"``: a numpy array file; ``"joblib"``: anything saved with
        ``joblib.dump`` (arrays inside are memory-mapped too).
    nbytes : int
        Size of the data, for the bytes-per-host accounting.
    host_dirs : dict or None
        ``{hostname: directory}`` for hosts that do not see the client's
        store and hold a copy of it in their own directory; shared with the
        store, so that references follow hosts added later.
    """

    def __init__(self, path, kind, nbytes, host_dirs=None):
        self.path = path
        self.kind = kind
        self.nbytes = nbytes
        self.host_dirs = host_dirs

    @property
    def name(self):
        """The file's name, the same in every host's copy of the store."""
        return os.path.basename(self.path)

    def __reduce__(self):
        if self.host_dirs:
            return load_stored, (self.path, self.kind, dict(self.host_dirs))
        return load_stored, (self.path, self.kind)

    def __repr__(self):
        return f"StoredData({self.path!r}, {self.kind!r}, nbytes={self.nbytes})"


_HOSTNAME = socket.gethostname()
# Files are opened without following a symbolic link where the OS can.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def load_stored(path, kind, host_dirs=None):
    """Open stored data read-only, memory-mapped if large (runs on engines).

    On a host listed in ``host_dirs`` the file is read from that host's own
    copy of the store. Files are read only from a directory that belongs to
    this user and that nobody else can write, and only if they are regular
    files of this user's that nobody else can write either.

    Arrays cannot be made writable again, whatever their size: large ones
    are read-only memory maps, small ones are built on the immutable bytes
    read from the file. Tasks of a message share what it unpickles, so an
    estimator that set the flag back and wrote into its training data would
    change what the next fits train on; it gets numpy's error instead.
    """
    if host_dirs and _HOSTNAME in host_dirs:
        path = os.path.join(host_dirs[_HOSTNAME], os.path.basename(path))
        if not os.path.exists(path) and in_ram(path):  # the host had no room
            path = os.path.join(
                spill_directory(os.path.dirname(path)), os.path.basename(path)
            )
    check_private_directory(os.path.dirname(path))
    with open(path, "rb", opener=_open_no_follow) as f:
        _check_private_file(os.fstat(f.fileno()), path)
        if kind != "npy":
            # Checked above; joblib maps the arrays inside by path.
            return joblib.load(path, mmap_mode="r")
        array = _read_only_npy(f, path)
    return array.view(RowRangeArray)


def _open_no_follow(path, flags):
    return os.open(path, flags | _NOFOLLOW)


def _read_only_npy(f, path):
    """Read an .npy file as an array that no one can make writable."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError(f"{path!r} holds Python objects: refusing to load it.")
    order = "F" if fortran_order else "C"
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes >= MMAP_MIN_BYTES:
        return np.memmap(
            f, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order=order
        )
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{path!r} is truncated: {len(data)} of {nbytes} bytes.")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order)


def check_private_directory(directory):
    """Raise PermissionError unless only this user can write ``directory``.

    Engines unpickle what they find in a store, so a directory that another
    user could write into must never be read from. Checked at every use: a
    path checked once could be swapped later.
    """
    info = os.stat(directory)
    if unsafe(info, "directory"):
        raise PermissionError(
            errno.EACCES,
            f"Refusing to read data from {directory!r}: it belongs to uid "
            f"{info.st_uid} with mode {stat.filemode(info.st_mode)}, so someone "
            "other than this user could have written it. Use a store_dir= or "
            "checkpoint_dir= that only this user can write (mode 0700).",
            directory,
        )


def unsafe(info, what):
    """Say why a file or directory could have been written by another user.

    ``what`` is ``"file"`` (which must also be a regular file) or
    ``"directory"``; None when only this user can write it.
    """
    if what == "file" and not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_uid != os.geteuid():
        return f"the {what} belongs to uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the {what} has mode {stat.filemode(info.st_mode)}"
    return None


def _is_private_directory(info):
    """Whether ``lstat`` info is a real directory of this user's, closed to others."""
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & 0o077
    )


def _check_private_file(info, path):
    if unsafe(info, "file"):
        raise PermissionError(
            errno.EACCES,
            f"Refusing to read data from {path!r}: it belongs to uid "
            f"{info.st_uid} with mode {stat.filemode(info.st_mode)}, so someone "
            "other than this user could have written it. Use a store_dir= that "
            "only this user can write (mode 0700).",
            path,
        )


class RowRange:
    """``np.arange(start, stop)``, pickled as its two ends."""

    def __init__(self, start, stop):
        self.start = start
        self.stop = stop

    def __reduce__(self):
        return np.arange, (self.start, self.stop)


class RowRangeArray(np.ndarray):
    """An array whose rows, indexed by a contiguous range, come back as a view.

    numpy copies on any indexing by an integer array; a fold's training and
    test sets are contiguous ranges of its rows, so answering those with the
    equivalent slice gives the same values without the copy.
    """

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        as_slice = _contiguous_range(rows)
        if as_slice is not None:
            key = (as_slice, *rest)
        selected = super().__getitem__(key)
        # What the estimator gets is a plain ndarray (a view all the same):
        # scikit-learn's input checks take longer on a subclass, at every
        # call of every fit, predict and score.
        return (
            selected.view(np.ndarray) if isinstance(selected, np.ndarray) else selected
        )


def _contiguous_range(rows):
    """Return ``slice(a, b)`` if ``rows`` is ``np.arange(a, b)``, else None."""
    if not (
        isinstance(rows, np.ndarray)
        and rows.ndim == 1
        and rows.dtype.kind in "iu"
        and rows.size
    ):
        return None
    start = int(rows[0])
    stop = start + rows.size
    if start < 0 or int(rows[-1]) != stop - 1:
        return None
    if rows.size > 2 and not np.array_equal(rows, np.arange(start, stop)):
        return None
    return slice(start, stop)


class Store:
    """A private directory holding the data of one fit.

    Parameters
    ----------
    location : str or None
        Parent directory. None picks ``/dev/shm`` when it has room for
        ``expected_nbytes`` several times over, else the system's temporary
        directory; and data that ``/dev/shm`` lacks room for when it comes
        (all the folds of a search may be stored at once) then goes to a
        twin directory in the temporary directory (see :func:`directory_for`).
    expected_nbytes : int, default=0
        Size of the largest data expected, to choose the location.
    """

    def __init__(self, location=None, expected_nbytes=0):
        self._may_spill = location is None
        self.n_spilled = 0  # writes that went to the twin directory
        parent = location if location is not None else default_parent(expected_nbytes)
        try:
            self.path = make_store_directory(parent)
        except OSError as exc:
            raise StoreError(
                exc.errno,
                f"Cannot create the data store in {parent!r}: {exc.strerror or exc}. "
                + _STORE_PARAMETER_HINT,
            ) from exc
        # Engines that find this token at the same path see this filesystem.
        self.marker_token = uuid.uuid4().hex
        self.marker_path = os.path.join(self.path, "marker")
        with open(self.marker_path, "w") as f:
            f.write(self.marker_token)
        # Hosts with their own copy of the store: hostname -> directory.
        self.host_dirs = {}
        self.n_writes = 0
        self.bytes_written = 0

    def write(self, obj, rows=None, columns=None):
        """Store ``obj`` (its ``rows`` and ``columns`` only, if given).

        Returns
        -------
        ref : StoredData
        """
        name = uuid.uuid4().hex
        if is_plain_array(obj):
            nbytes = selected_nbytes(obj, rows, columns)
            path = os.path.join(self._directory_for(nbytes), name + ".npy")
            self._guarded(write_npy, path, obj, rows, columns)
            kind = "npy"
        else:
            if rows is not None:
                obj = _safe_indexing(obj, rows)
            nbytes = getattr(obj, "nbytes", 0) or _sparse_nbytes(obj)
            path = os.path.join(self._directory_for(nbytes), name + ".joblib")
            self._guarded(write_joblib, path, obj)
            kind = "joblib"
        self.n_writes += 1
        self.bytes_written += nbytes
        return StoredData(path, kind, nbytes, self.host_dirs)

    def remove(self, ref):
        """Delete stored data; engines that still map it keep their view."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(ref.path)

    def close(self):
        """Delete the store directory and everything in it."""
        remove_store(self.path)

    def _directory_for(self, nbytes):
        """Return where ``nbytes`` of data go, checked to have room for them."""
        try:
            directory = (
                directory_for(self.path, nbytes) if self._may_spill else self.path
            )
        except OSError as exc:
            raise StoreError(
                exc.errno,
                f"Cannot create a data store directory in the temporary directory "
                f"for what {self.path!r} lacks room for: {exc}. "
                + _STORE_PARAMETER_HINT,
            ) from exc
        if directory != self.path:
            if not self.n_spilled:
                logger.info(
                    "%s lacks room for %.1f MB more: data goes to %s.",
                    self.path,
                    nbytes / 1e6,
                    directory,
                )
            self.n_spilled += 1
        free = shutil.disk_usage(directory).free
        if nbytes > free:
            raise StoreError(
                errno.ENOSPC,
                f"The data store {directory!r} has {free / 1e6:.1f} MB free but "
                f"{nbytes / 1e6:.1f} MB are needed. " + _STORE_PARAMETER_HINT,
            )
        return directory

    def _guarded(self, write, path, *args):
        # Write to a temporary name and rename, so that a reader never sees a
        # partial file; plain writes (not a memory map) turn a full disk into
        # an OSError instead of a crash.
        try:
            write_atomically(path, write, *args)
        except OSError as exc:
            raise StoreError(
                exc.errno,
                f"Writing to the data store {os.path.dirname(path)!r} failed: "
                f"{exc.strerror or exc}. " + _STORE_PARAMETER_HINT,
            ) from exc


def default_parent(expected_nbytes):
    """Return where stores go by default: this user's directory in a base.

    The base is ``/dev/shm`` when it has room for the data several times
    over, else the temporary directory.
    """
    base = tempfile.gettempdir()
    try:
        if shutil.disk_usage(_SHM_DIR).free > _SHM_HEADROOM * expected_nbytes and (
            os.access(_SHM_DIR, os.W_OK)
        ):
            base = _SHM_DIR
    except OSError:
        pass
    return user_directory(base)


def in_ram(path):
    """Whether ``path`` is in ``/dev/shm``, whose room is the host's memory."""
    return os.path.realpath(path).startswith(os.path.realpath(_SHM_DIR) + os.sep)


def spill_directory(primary):
    """Return the twin of a store in ``/dev/shm``, in the temporary directory.

    Same name, so that the engines of a host find a file in one or the other
    by its name alone.
    """
    base = user_directory(tempfile.gettempdir())
    return os.path.join(base, os.path.basename(primary))


def directory_for(primary, nbytes):
    """Return where ``nbytes`` more of a store's data go: ``primary`` or its twin.

    A store in ``/dev/shm`` takes data while it has room for it several
    times over (the rest of the memory is for the fits); beyond that, the
    data goes to its twin in the temporary directory, made (mode 0700, with
    the primary's owner file) on first use.
    """
    if not in_ram(primary) or (
        shutil.disk_usage(primary).free > _SHM_HEADROOM * nbytes
    ):
        return primary
    spill = spill_directory(primary)
    with contextlib.suppress(FileExistsError):
        os.mkdir(spill, FOLDER_PERMISSIONS)
        shutil.copyfile(
            os.path.join(primary, OWNER_FILE), os.path.join(spill, OWNER_FILE)
        )
    if not _is_private_directory(os.lstat(spill)):
        raise PermissionError(
            errno.EACCES,
            f"{spill!r} is not a private directory of this user's",
            spill,
        )
    return spill


def remove_store(path):
    """Remove a store directory and its twin in the temporary directory."""
    shutil.rmtree(path, ignore_errors=True)
    if in_ram(path):
        spill = spill_directory(path)
        with contextlib.suppress(OSError):
            if os.lstat(spill).st_uid == os.geteuid():
                shutil.rmtree(spill, ignore_errors=True)


def user_directory(base):
    """Return this user's private directory in the shared directory ``base``.

    Made with mode 0700. Its name can be guessed, so another user could have
    made it first: it is used only if it is a real directory that belongs to
    this user and that nobody else can enter; otherwise ``base`` itself is
    returned, where stores still get unpredictable names and mode 0700.
    """
    path = os.path.join(base, f"{STORE_PREFIX}{_user_name()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, FOLDER_PERMISSIONS)
    try:
        info = os.lstat(path)
    except OSError:
        return base
    if _is_private_directory(info):
        return path
    return base


def _user_name():
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no name for this uid (containers)
        return str(os.geteuid())


def make_store_directory(parent, owner=None):
    """Make a private store directory in ``parent``; return its path.

    The name is unpredictable and the mode 0700 (``mkdtemp``), so a shared
    ``/tmp`` is safe. An owner file records which process made it, and the
    stores of processes of this host that died without removing theirs are
    removed first.
    """
    os.makedirs(parent, exist_ok=True)
    remove_stale_stores(parent)
    path = tempfile.mkdtemp(prefix=STORE_PREFIX, dir=parent)
    os.chmod(path, FOLDER_PERMISSIONS)
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        json.dump(owner or _this_process(), f)
    return path


def _this_process():
    import psutil

    process = psutil.Process()
    return {
        "hostname": socket.gethostname(),
        "pid": process.pid,
        "create_time": process.create_time(),
        "uid": os.geteuid(),
    }


def stale_stores(parent, hostname=None, prefix=STORE_PREFIX):
    """Return ``{path: owner}`` for this user's stores in ``parent``.

    ``hostname`` selects stores made by processes of that host (default:
    this one); ``prefix`` selects directories by name (default: stores; the
    profile directories of local clusters record their owner too).
    """
    hostname = socket.gethostname() if hostname is None else hostname
    found = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            if not entry.name.startswith(prefix) or not entry.is_dir(
                follow_symlinks=False
            ):
                continue
            if prefix == STORE_PREFIX and entry.name.startswith(_CLUSTER_PREFIX):
                continue  # a local cluster's profile: its processes end first
            try:
                info = entry.stat(follow_symlinks=False)
                # Only what this user made, private: what a record in a
                # directory others could write says is not to be acted on.
                if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                    continue
                with open(os.path.join(entry.path, OWNER_FILE)) as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                continue
            if owner.get("hostname") == hostname:
                found[entry.path] = owner
    return found


def process_is_alive(owner):
    """Whether the process described by an owner record still runs."""
    import psutil

    try:
        process = psutil.Process(owner["pid"])
        # A recycled pid belongs to a process started later.
        return abs(process.create_time() - owner["create_time"]) < 1
    except (psutil.Error, KeyError, TypeError):
        return False


def remove_stale_stores(parent):
    """Remove this user's stores in ``parent`` left by dead processes here."""
    for path, owner in stale_stores(parent).items():
        if not process_is_alive(owner):
            remove_store(path)


def is_plain_array(obj):
    """Whether ``obj`` is stored as an .npy file: a numeric ndarray, not scalar."""
    return isinstance(obj, np.ndarray) and not obj.dtype.hasobject and obj.ndim >= 1


def selected_nbytes(array, rows, columns):
    """Return the bytes of ``array[rows][:, columns]`` (None: every row or column)."""
    n_rows = array.shape[0] if rows is None else len(rows)
    row_items = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1
    if columns is not None:
        row_items = len(columns)
    return n_rows * row_items * array.itemsize


def _sparse_nbytes(obj):
    parts = ("data", "indices", "indptr")
    if all(hasattr(obj, part) for part in parts):
        return sum(getattr(obj, part).nbytes for part in parts)
    return 0


def write_atomically(path, write, *args):
    """Write ``path`` with ``write(temporary path, *args)``, then rename it.

    A reader never sees a partial file; what a failed write left is removed.
    """
    tmp_path = path + ".part"
    try:
        write(tmp_path, *args)
        os.rename(tmp_path, path)
    except BaseException:
        _remove_quietly(tmp_path)
        raise


def write_npy(path, array, rows, columns):
    """Write ``array[rows][:, columns]`` as an .npy file, chunk by chunk."""
    with open(path, "wb") as f:
        for block in npy_chunks(array, rows, columns):
            f.write(block)


def npy_header(array, rows=None, columns=None):
    """Return the .npy header of ``array[rows][:, columns]``."""
    n_rows = array.shape[0] if rows is None else len(rows)
    tail_shape = array.shape[1:] if columns is None else (len(columns),)
    header = {
        "descr": np.lib.format.dtype_to_descr(array.dtype),
        "fortran_order": False,
        "shape": (n_rows, *tail_shape),
    }
    out = io.BytesIO()
    np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


def npy_size(array, rows=None, columns=None):
    """Return the size of the .npy file of ``array[rows][:, columns]``."""
    return len(npy_header(array, rows, columns)) + selected_nbytes(array, rows, columns)


def npy_chunks(array, rows=None, columns=None):
    """Yield the .npy file of ``array[rows][:, columns]``, header first.

    The data comes in blocks of about ``COPY_CHUNK_BYTES``, so that writing
    or sending it costs that much memory instead of a copy of the selection.
    A block may be a view of a buffer that the next one reuses: use each
    before asking for the next.
    """
    yield npy_header(array, rows, columns)
    n_rows = array.shape[0] if rows is None else len(rows)
    tail_shape = array.shape[1:] if columns is None else (len(columns),)
    row_nbytes = max(1, selected_nbytes(array, [0], columns))
    step = max(1, COPY_CHUNK_BYTES // row_nbytes)
    # One buffer for every chunk: allocating each anew costs page faults.
    buffer = None
    if rows is not None and columns is None:
        _check_rows(rows, array.shape[0])
        buffer = np.empty((min(step, n_rows), *tail_shape), dtype=array.dtype)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        if buffer is not None:
            # mode="wrap" skips numpy's bounds-checking copy; the rows were
            # checked above, and wrapping is what -1 means anyway.
            block = np.take(
                array,
                rows[start:stop],
                axis=0,
                out=buffer[: stop - start],
                mode="wrap",
            )
        elif rows is None:
            block = array[start:stop]
        else:
            block = array[rows[start:stop]][:, columns]
        yield memoryview(np.ascontiguousarray(block)).cast("B")


def pack_rows(rows):
    """Return row numbers in a few bytes, for :func:`unpack_rows`.

    The differences between successive rows, in the smallest integer type
    that holds them, compressed: a split's sorted rows take well under a
    byte each (a contiguous range almost nothing), shuffled ones about four.
    None stays None.
    """
    if rows is None:
        return None
    deltas = np.diff(np.asarray(rows, dtype=np.int64), prepend=0)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if not deltas.size or (info.min <= deltas.min() and deltas.max() <= info.max):
            break
    dtype = np.dtype(dtype)
    return dtype.str, deltas.size, zlib.compress(deltas.astype(dtype).tobytes(), 1)


def unpack_rows(packed):
    """Return the row numbers that :func:`pack_rows` packed."""
    if packed is None:
        return None
    dtype, size, data = packed
    deltas = np.frombuffer(zlib.decompress(data), dtype=np.dtype(dtype))
    if deltas.size != size:
        raise ValueError(f"Packed rows hold {deltas.size} numbers, not {size}.")
    return np.cumsum(deltas, dtype=np.int64).astype(np.intp, copy=False)


def packed_nbytes(packed):
    """Return what packed rows weigh in a message (about)."""
    return 0 if packed is None else len(packed[2]) + 16


def _check_rows(rows, n_rows):
    if len(rows) and (rows.min() < -n_rows or rows.max() >= n_rows):
        raise IndexError(f"Row indices out of range for {n_rows} rows.")


def write_joblib(path, obj):
    joblib.dump(obj, path)


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)
