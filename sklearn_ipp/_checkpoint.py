"""Results of finished fits, kept so that a fit run again does only the rest.

Each result of sklearn's ``_fit_and_score`` is saved under a key made of
everything it depends on: the content of the data and of the split, the
estimator, its parameters, the scorer and the other arguments, and the
versions of scikit-learn and sklearn_ipp. Running the same search again finds
the results of the fits that finished; a change of data, estimator or grid
changes the keys of what it affects, whose saved results are then no longer
used.
"""

import contextlib
import errno
import hashlib
import hmac
import os
import pickle
import secrets
import stat
import tempfile
import warnings

import cloudpickle
import joblib
import sklearn

from ._exceptions import CheckpointWarning
from ._store import FOLDER_PERMISSIONS, unsafe
from ._version import __version__

__all__ = [
    "KEPT_RESULTS_NOTE",
    "KEY_ENVIRONMENT_VARIABLE",
    "DirectoryCheckpoint",
    "MemoryCheckpoint",
    "SavedFits",
    "checkpoint_key",
    "checkpoint_key_path",
    "fit_key",
]

# Arguments of _fit_and_score that do not change its result: progress
# messages, and the callback context and caller of scikit-learn >= 1.9.
_IGNORED_ARGUMENTS = {
    "verbose",
    "split_progress",
    "candidate_progress",
    "callback_ctx",
    "caller",
}
_SUFFIX = ".result"
# Files being written: renamed to their result's name once complete.
_PART_PREFIX = "sklearn_ipp-"
_PART_SUFFIX = ".part"
# Unusable files named in a warning each, before one warning for the rest.
_NAMED_WARNINGS = 5

# A result file: this marker, the HMAC-SHA256 of its name and payload, then
# the pickled result.
_MAGIC = b"sklearn_ipp-result-1\n"
_SIGNATURE_BYTES = hashlib.sha256().digest_size
_KEY_BYTES = 32
KEY_ENVIRONMENT_VARIABLE = "SKLEARN_IPP_CHECKPOINT_KEY_FILE"
# Files are opened without following a symbolic link where the OS can.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# Added to the errors that end a call whose finished fits are kept.
KEPT_RESULTS_NOTE = (
    " The results of the fits that finished are kept, so running it "
    "again with the same data and parameters runs only the rest."
)


def fit_key(fold_key, arguments, data_names):
    """Return the key of one (candidate, split) fit.

    Parameters
    ----------
    fold_key : tuple
        Content hashes of the data and split (see ``FoldIndex.fold_of``).
    arguments : dict
        ``_fit_and_score``'s arguments by name.
    data_names : set of str
        Arguments (and fit or score parameters) already in ``fold_key``.
    """
    return _digest(*fit_identity(fold_key, arguments, data_names))


def fit_identity(fold_key, arguments, data_names):
    """Return what a fit's key is made of, without hashing it yet.

    ``(fold_key, rest)``, where ``rest`` holds the arguments that are not
    data: the estimator, its parameters, the scorer... It holds no
    reference to the data, so it can be kept after the fit.
    """
    rest = {}
    for name, value in arguments.items():
        if name in _IGNORED_ARGUMENTS or name in data_names:
            continue
        if name in ("fit_params", "score_params") and value:
            value = {k: v for k, v in value.items() if k not in data_names}
        rest[name] = value
    return fold_key, rest


def _digest(fold_key, rest):
    digest = hashlib.sha256()
    digest.update(repr((fold_key, sklearn.__version__, __version__)).encode())
    try:
        digest.update(joblib.hash(rest).encode())
    except Exception:
        # Objects joblib cannot hash (defined interactively, say) by value.
        digest.update(cloudpickle.dumps(rest))
    return digest.hexdigest()


class MemoryCheckpoint:
    """Finished results kept in this process, for a fit that did not finish.

    Results are kept with what their key is made of (``fit_identity``) and
    hashed only when a later fit looks for them: most fits complete, and
    then nothing is looked for. Hashing a fit's arguments (the estimator and
    its parameters, with joblib) costs about a millisecond, as much as a
    tiny fit: done as each fit ends, it held the client back.
    """

    def __init__(self):
        self._results = {}
        self._unhashed = []  # (identity, result) not looked for yet

    def __len__(self):
        return len(self._results) + len(self._unhashed)

    def get(self, key):
        """Return ``(True, result)`` if saved, else ``(False, None)``."""
        if self._unhashed:
            unhashed, self._unhashed = self._unhashed, []
            for identity, result in unhashed:
                self._results[_digest(*identity)] = result
        if key in self._results:
            return True, self._results[key]
        return False, None

    def put(self, key, result):
        """Save a finished result."""
        self._results[key] = result

    def put_unhashed(self, identity, result):
        """Save a finished result under its ``fit_identity``, hashed if needed."""
        self._unhashed.append((identity, result))


class DirectoryCheckpoint:
    """Finished results saved in a directory, one file each, as they arrive.

    Every file carries a keyed hash (HMAC-SHA256) of its name and content,
    made with this user's checkpoint key (see :func:`checkpoint_key`), and is
    unpickled only once the hash verifies: a file this user's key did not
    write (planted, copied from someone else, corrupted) is never unpickled.
    It counts as missing, so its fit runs again, with one
    :class:`~sklearn_ipp.CheckpointWarning` naming it. The directory and each
    file are checked on every open: they must belong to this user and be
    writable by nobody else, and a file must not be a symbolic link.

    Parameters
    ----------
    path : str or path-like
        The directory; made (mode 0700) if missing.
    key : bytes or None, default=None
        The key of the hashes; None reads this user's checkpoint key.
    """

    def __init__(self, path, key=None):
        self.path = os.fspath(path)
        try:
            os.makedirs(self.path, mode=FOLDER_PERMISSIONS, exist_ok=True)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"Cannot create the checkpoint directory {self.path!r}: "
                f"{exc.strerror or exc}. Pass checkpoint_dir= a directory this "
                "user can write.",
            ) from exc
        os.close(self._open_directory())
        if not os.access(self.path, os.W_OK):
            raise PermissionError(
                errno.EACCES,
                f"The checkpoint directory {self.path!r} is not writable "
                f"(mode {stat.filemode(os.stat(self.path).st_mode)}). Pass "
                "checkpoint_dir= a directory this user can write.",
                self.path,
            )
        self._key = checkpoint_key() if key is None else key
        self._warned = set()  # files already said to be unusable

    def __len__(self):
        return sum(name.endswith(_SUFFIX) for name in self._names())

    def get(self, key):
        """Return ``(True, result)`` if saved and verified, else ``(False, None)``."""
        name = key + _SUFFIX
        directory = self._open_directory()
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=directory)
        except FileNotFoundError:
            return False, None
        except OSError as exc:  # a symbolic link (ELOOP), unreadable
            self._unusable(name, f"it cannot be opened safely ({exc.strerror})")
            return False, None
        finally:
            os.close(directory)
        try:
            with os.fdopen(fd, "rb") as f:
                problem = unsafe(os.fstat(f.fileno()), "file")
                if problem:
                    self._unusable(name, problem)
                    return False, None
                content = f.read()
        except OSError as exc:
            self._unusable(name, f"it cannot be read ({exc.strerror})")
            return False, None
        payload = _verified(content, name, self._key)
        if payload is None:
            self._unusable(
                name,
                "it was not written with this user's checkpoint key (written "
                "by another user or key, or corrupted)",
            )
            return False, None
        try:
            return True, pickle.loads(payload)
        except Exception as exc:  # verified, but no longer loads (code changed)
            self._unusable(name, f"it no longer loads ({type(exc).__name__}: {exc})")
            return False, None

    def put(self, key, result):
        """Save a finished result (atomically: never a partial file).

        Written and renamed through the checked directory's descriptor.
        """
        payload = cloudpickle.dumps(result)
        name = key + _SUFFIX
        content = _MAGIC + _signature(self._key, name, payload) + payload
        part = f"{_PART_PREFIX}{secrets.token_hex(8)}{_PART_SUFFIX}"
        directory = self._open_directory()
        try:
            fd = os.open(
                part,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW,
                0o600,
                dir_fd=directory,
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.replace(part, name, src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=directory)
                raise
        finally:
            os.close(directory)

    def keep_only(self, keys):
        """Remove saved results whose key is not in ``keys``.

        Called after a complete fit: what another grid, data or estimator
        left there no longer applies. Files of writes of ours that never
        finished go too; other files are left alone.
        """
        directory = self._open_directory()
        try:
            for name in os.listdir(directory):
                stale = (
                    name.startswith(_PART_PREFIX) and name.endswith(_PART_SUFFIX)
                ) or (name.endswith(_SUFFIX) and name[: -len(_SUFFIX)] not in keys)
                if stale:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=directory)
        finally:
            os.close(directory)

    def _names(self):
        directory = self._open_directory()
        try:
            return os.listdir(directory)
        finally:
            os.close(directory)

    def _open_directory(self):
        """Open the directory, checked as it is now; return its descriptor.

        Checked at every use, through the descriptor that is then used: a path
        swapped since (a directory replaced by another user's) is caught, and
        files are opened relative to what was checked. A symbolic link to it
        must be this user's too: another user's link could lead anywhere.
        """
        try:
            link = os.lstat(self.path)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise type(exc)(
                exc.errno,
                f"Cannot open the checkpoint directory {self.path!r}: "
                f"{exc.strerror or exc}. Pass checkpoint_dir= a directory this "
                "user can write.",
                self.path,
            ) from exc
        problem = unsafe(os.fstat(fd), "directory")
        if stat.S_ISLNK(link.st_mode) and link.st_uid != os.geteuid():
            problem = f"it is a symbolic link of uid {link.st_uid}"
        if problem:
            os.close(fd)
            raise PermissionError(
                errno.EACCES,
                f"Refusing to use the checkpoint directory {self.path!r}: {problem}, "
                "so someone other than this user could have written its files. "
                "Pass checkpoint_dir= a directory only this user can write "
                "(mode 0700).",
                self.path,
            )
        return fd

    def _unusable(self, name, why):
        if name in self._warned:
            return
        self._warned.add(name)
        if len(self._warned) <= _NAMED_WARNINGS:
            message = (
                f"The saved result {os.path.join(self.path, name)!r} is not used, "
                f"and its fit runs again: {why}."
            )
        elif len(self._warned) == _NAMED_WARNINGS + 1:
            # A directory from another user, or a new key: one more warning
            # then, not one per file.
            message = (
                f"More saved results in {self.path!r} are not used, and their "
                f"fits run again (the next ones without a warning each): {why}."
            )
        else:
            return
        warnings.warn(message, CheckpointWarning, stacklevel=2)


def _signature(key, name, payload):
    # The name is signed with the content, its length first so that no name
    # and payload run into each other: a valid result renamed to another
    # fit's key does not verify either.
    name = name.encode()
    digest = hmac.new(key, _MAGIC + len(name).to_bytes(4, "big") + name, hashlib.sha256)
    digest.update(payload)
    return digest.digest()


def _verified(content, name, key):
    """Return the payload of a result file if its hash verifies, else None."""
    header = len(_MAGIC) + _SIGNATURE_BYTES
    if len(content) < header or not content.startswith(_MAGIC):
        return None
    payload = content[header:]
    expected = _signature(key, name, payload)
    if not hmac.compare_digest(content[len(_MAGIC) : header], expected):
        return None
    return payload


def checkpoint_key():
    """Return this user's checkpoint key, made on first use.

    The key is 32 random bytes in a file only this user can read: the file
    named by the ``SKLEARN_IPP_CHECKPOINT_KEY_FILE`` environment variable, else
    ``sklearn_ipp/checkpoint.key`` in ``$XDG_CONFIG_HOME`` (``~/.config``).
    It stays outside the checkpoint directories, so that whoever can put a
    file there cannot also sign it.

    Returns
    -------
    key : bytes

    Raises
    ------
    PermissionError
        If the key file is a symbolic link, belongs to another user, or can
        be read or written by others.
    """
    path = checkpoint_key_path()
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        fd = _make_key(path)
    except OSError as exc:
        raise PermissionError(
            exc.errno,
            f"Cannot read the checkpoint key {path!r}: {exc.strerror}. It must be a "
            "regular file of this user's (not a symbolic link); remove it to have "
            f"a new one made, or set {KEY_ENVIRONMENT_VARIABLE} to another path.",
            path,
        ) from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & 0o077
        ):
            raise PermissionError(
                errno.EACCES,
                f"Refusing the checkpoint key {path!r}: it belongs to uid "
                f"{info.st_uid} with mode {stat.filemode(info.st_mode)}, so others "
                f"could read or change it. Run `chmod 600 {path}` if it is yours, "
                "or remove it to have a new one made.",
                path,
            )
        key = f.read()
    if len(key) < _KEY_BYTES:
        raise PermissionError(
            errno.EINVAL,
            f"The checkpoint key {path!r} holds {len(key)} bytes, fewer than "
            f"{_KEY_BYTES}: remove it to have a new one made.",
            path,
        )
    return key


def checkpoint_key_path():
    """Return the path of this user's checkpoint key file."""
    path = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if path:
        return os.path.abspath(os.path.expanduser(path))
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.path.expanduser("~"), ".config"
    )
    return os.path.join(config, "sklearn_ipp", "checkpoint.key")


def _make_key(path):
    """Write a new key to ``path``; return a descriptor to read it from.

    The key is written whole under another name, then linked to ``path``,
    which fails if the file exists: two processes making it at once agree
    on one key, and nobody reads a file not yet written.
    """
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=FOLDER_PERMISSIONS, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=directory, prefix=".checkpoint-key-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(_KEY_BYTES))
            with contextlib.suppress(FileExistsError):  # made meanwhile
                os.link(part, path)
        finally:
            os.remove(part)
        return os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"Cannot create the checkpoint key {path!r}: {exc.strerror or exc}. Set "
            f"{KEY_ENVIRONMENT_VARIABLE} to a file path this user can write.",
            path,
        ) from exc


# The key of a saved record of a fit stopped at fit_timeout: the limit, with
# its result (that of a failed fit) under "result". scikit-learn's results
# never have it.
_TIMED_OUT_AT = "sklearn_ipp_timed_out_at"


class SavedFits:
    """A backend's use of a checkpoint: fits looked up, and saved as they end.

    Parameters
    ----------
    checkpoint : DirectoryCheckpoint or MemoryCheckpoint
        Where the results are.
    fit_timeout : float or None, default=None
        The limit of the fits now: a fit saved as stopped at a limit runs
        again only under a larger one (or none).
    """

    def __init__(self, checkpoint, fit_timeout=None):
        self.checkpoint = checkpoint
        self.fit_timeout = fit_timeout
        self.keys = set()  # keys of the fits seen, saved or not
        # Whether a fit's key is computed when it is submitted, to look for
        # a saved result, or only once it is done, to save it: decided at
        # the first fit, by whether the checkpoint holds anything. Hashing a
        # fit's arguments takes about as long as preparing the rest of it,
        # and would otherwise delay the first messages of a search.
        self._look_up = None

    def look_up(self, task):
        """Return ``(True, result)`` if the fit task's result is saved."""
        if self._look_up is None:
            self._look_up = len(self.checkpoint) > 0
        if not self._look_up:
            return False, None
        found, result = self.checkpoint.get(self._key(task))
        if found and isinstance(result, dict) and _TIMED_OUT_AT in result:
            limit = result[_TIMED_OUT_AT]
            if self.fit_timeout is None or self.fit_timeout > limit:
                return False, None  # it may finish now
            return True, result["result"]
        return found, result

    def use_saved(self):
        """Look every fit up from now on, the checkpoint being no longer empty."""
        self._look_up = True

    def save(self, task, result):
        """Save a fit task's result; failed fits are fitted again next time.

        The failure of a fit (``fit_error``) may not be the candidate's, such
        as an engine out of memory. A fit stopped at ``fit_timeout`` is
        saved with the limit, and fitted again only under a larger one.
        """
        if isinstance(result, dict) and result.get("fit_error"):
            if task.timed_out is None or self.fit_timeout is None:
                return
            result = {_TIMED_OUT_AT: self.fit_timeout, "result": result}
        if isinstance(self.checkpoint, MemoryCheckpoint):
            self.checkpoint.put_unhashed(self._identity(task), result)
            return
        try:
            self.checkpoint.put(self._key(task), result)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fix = "free space there, or pass checkpoint_dir= another directory"
            else:
                fix = (
                    "check that the directory exists and that only this user can "
                    "write it, or pass checkpoint_dir= another directory"
                )
            raise OSError(
                exc.errno,
                f"Cannot save the result of a fit in the checkpoint directory "
                f"{getattr(self.checkpoint, 'path', '')!r}: {exc.strerror or exc}. "
                f"The results saved so far are kept: {fix}, and fit again.",
            ) from exc

    def _key(self, task):
        if task.checkpoint_key is None:
            task.checkpoint_key = _digest(*self._identity(task))
            self.keys.add(task.checkpoint_key)
        return task.checkpoint_key

    def _identity(self, task):
        data_names = {"X", "y", "train", "test", *task.fold.aligned_params}
        return fit_identity(task.split_key, task.arguments, data_names)
