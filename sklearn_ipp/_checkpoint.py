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
import os
import pickle
import stat
import tempfile

import cloudpickle
import joblib
import sklearn

from ._store import FOLDER_PERMISSIONS, check_private_directory
from ._version import __version__

__all__ = [
    "KEPT_RESULTS_NOTE",
    "DirectoryCheckpoint",
    "MemoryCheckpoint",
    "SavedFits",
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
    rest = {}
    for name, value in arguments.items():
        if name in _IGNORED_ARGUMENTS or name in data_names:
            continue
        if name in ("fit_params", "score_params") and value:
            value = {k: v for k, v in value.items() if k not in data_names}
        rest[name] = value
    digest = hashlib.sha256()
    digest.update(repr((fold_key, sklearn.__version__, __version__)).encode())
    try:
        digest.update(joblib.hash(rest).encode())
    except Exception:
        # Objects joblib cannot hash (defined interactively, say) by value.
        digest.update(cloudpickle.dumps(rest))
    return digest.hexdigest()


class MemoryCheckpoint:
    """Finished results kept in this process, for a fit that did not finish."""

    def __init__(self):
        self._results = {}

    def __len__(self):
        return len(self._results)

    def get(self, key):
        """Return ``(True, result)`` if saved, else ``(False, None)``."""
        if key in self._results:
            return True, self._results[key]
        return False, None

    def put(self, key, result):
        """Save a finished result."""
        self._results[key] = result


class DirectoryCheckpoint:
    """Finished results saved in a directory, one file each, as they arrive.

    Parameters
    ----------
    path : str or path-like
        The directory; made (mode 0700) if missing. It must belong to this
        user and be writable by nobody else, since results are unpickled.
    """

    def __init__(self, path):
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
        check_private_directory(self.path)
        if not os.access(self.path, os.W_OK):
            raise PermissionError(
                errno.EACCES,
                f"The checkpoint directory {self.path!r} is not writable "
                f"(mode {stat.filemode(os.stat(self.path).st_mode)}).",
                self.path,
            )

    def __len__(self):
        return sum(name.endswith(_SUFFIX) for name in os.listdir(self.path))

    def get(self, key):
        """Return ``(True, result)`` if saved, else ``(False, None)``."""
        try:
            with open(os.path.join(self.path, key + _SUFFIX), "rb") as f:
                result = pickle.load(f)
        except FileNotFoundError:
            return False, None
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError):
            return False, None  # unreadable: fit again
        return True, result

    def put(self, key, result):
        """Save a finished result (atomically: never a partial file)."""
        fd, tmp_path = tempfile.mkstemp(dir=self.path, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                cloudpickle.dump(result, f)
            os.replace(tmp_path, os.path.join(self.path, key + _SUFFIX))
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp_path)
            raise

    def keep_only(self, keys):
        """Remove saved results whose key is not in ``keys``.

        Called after a complete fit: what another grid, data or estimator
        left there no longer applies.
        """
        for name in os.listdir(self.path):
            if name.endswith(_SUFFIX) and name[: -len(_SUFFIX)] not in keys:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.path, name))


class SavedFits:
    """A backend's use of a checkpoint: fits looked up, and saved as they end.

    Parameters
    ----------
    checkpoint : DirectoryCheckpoint or MemoryCheckpoint
        Where the results are.
    """

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
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
        return self.checkpoint.get(self._key(task))

    def save(self, task, result):
        """Save a fit task's result; failed fits are fitted again next time.

        The failure of a fit (``fit_error``) may not be the candidate's, such
        as an engine out of memory.
        """
        if isinstance(result, dict) and result.get("fit_error"):
            return
        try:
            self.checkpoint.put(self._key(task), result)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"Cannot save the result of a fit in the checkpoint directory "
                f"{getattr(self.checkpoint, 'path', '')!r}: {exc.strerror or exc}. "
                "The results saved so far are kept: free space there, or pass "
                "checkpoint_dir= another directory, and fit again.",
            ) from exc

    def _key(self, task):
        if task.checkpoint_key is None:
            data_names = {"X", "y", "train", "test", *task.fold.aligned_params}
            task.checkpoint_key = fit_key(task.split_key, task.arguments, data_names)
            self.keys.add(task.checkpoint_key)
        return task.checkpoint_key
