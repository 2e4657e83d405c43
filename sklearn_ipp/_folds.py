"""scikit-learn's fit-and-score tasks, and the folds their data is stored in.

A task that is sklearn's ``_fit_and_score`` takes the *fold path*: the data of
its cross-validation split (X, y and the sample-aligned fit and score
parameters) is written once into the store as ``[train rows | test rows]``,
and the task is rewritten to carry a reference to it plus
``train=RowRange(0, n_train), test=RowRange(n_train, n)``, which the stored
arrays answer with zero-copy memory-mapped views. A task whose ``train`` is a
prefix of a stored split's (learning curves) uses that split's files too.

A search that fits on ever-changing subsamples of its splits (successive
halving) stores instead the whole data once, as one fold of every row: its
tasks carry the row numbers of their train and test sets, which the engines
index the stored arrays with, as they would the data itself.

``FoldIndex`` finds the fold of a task by the content of its data and split,
and decides when folds are stored: small folds all at once, so that tasks run
in the order they came, larger data fold by fold, so that at most
``max_live_folds`` folds take memory at a time.
"""

import functools
import itertools
import threading
import weakref

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import _num_samples

from ._fit_and_score import indexable, split_arguments
from ._prefix import PrefixFold
from ._store import RowRange, content_hash

__all__ = [
    "SMALL_FOLDS_BYTES",
    "Fold",
    "FoldIndex",
]

# Folds are stored together while they take at most this many bytes; larger
# data is stored one fold at a time (or ``max_live_folds``), which keeps the
# memory of a big search near one copy of the data while small searches
# never wait for a fold to be written.
SMALL_FOLDS_BYTES = 256 * 2**20


class Fold:
    """One cross-validation split of one dataset, and its stored files.

    Parameters
    ----------
    key : tuple
        Content hashes of the data and of the first split seen.
    sequence : int
        Folds are stored in the order they came.
    X, y, aligned_params, train, test
        The data and the split; ``aligned_params`` are the fit and score
        parameters with one value per sample, split as X is.
    pairwise : bool
        Whether X is a precomputed kernel, whose columns are split too.
    """

    def __init__(self, key, sequence, X, y, aligned_params, train, test, pairwise):
        self.key = key
        self.sequence = sequence
        self.X, self.y, self.aligned_params = X, y, aligned_params
        self.test, self.pairwise = test, pairwise
        self.refs = None  # name -> StoredData, while the fold is stored
        self.storing = False  # chosen to be stored: its rows are final
        self.pinned = False  # kept stored until the index is cleared
        self.n_outstanding = 0  # tasks queued or running (the scheduler's)
        self._set_train(train)

    @property
    def stored(self):
        return self.refs is not None

    def _set_train(self, train):
        self.train = train
        n_rows = len(train) + len(self.test)
        self.nbytes = _nbytes(self.X, n_rows, n_rows if self.pairwise else None)

    def _relation(self, train):
        """How ``train`` relates to the fold's train rows.

        "prefix" when it starts them, "extends" when it continues them, else
        None.
        """
        n_own, n_other = len(self.train), len(train)
        if n_other <= n_own and np.array_equal(self.train[:n_other], train):
            return "prefix"
        if n_other > n_own and np.array_equal(train[:n_own], self.train):
            return "extends"
        return None

    def materialise(self, write):
        """Store the fold with ``write(obj, rows=None, columns=None)``."""
        rows = np.concatenate([self.train, self.test])
        # A precomputed kernel stays square, as sklearn checks it is.
        columns = rows if self.pairwise else None
        refs = {"X": write(indexable(self.X), rows, columns)}
        if self.y is not None:
            refs["y"] = write(indexable(self.y), rows)
        for name, value in self.aligned_params.items():
            refs["param:" + name] = write(indexable(value), rows)
        self.refs = refs

    def release(self, remove):
        """Remove the fold's files with ``remove(ref)``."""
        refs, self.refs = self.refs, None
        for ref in refs.values():
            remove(ref)

    def rewrite(self, arguments, rows):
        """Return ``(args, kwargs)`` of a task pointed at the stored fold.

        Parameters
        ----------
        arguments : dict
            The task's ``_fit_and_score`` arguments by name.
        rows : int or (ndarray, ndarray)
            An int ``n``: the task trains on the fold's first ``n`` rows and
            tests on its test rows. Else the positions in the fold of the
            task's train and test rows.
        """
        arguments = dict(arguments)
        arguments["X"] = self.refs["X"]
        if self.y is not None:
            arguments["y"] = self.refs["y"]
        if isinstance(rows, tuple):
            arguments["train"], arguments["test"] = rows
        else:
            # Contiguous ranges, which stored arrays answer with views; sent
            # as two numbers, not as n_samples indices.
            arguments["train"] = RowRange(0, rows)
            arguments["test"] = RowRange(
                len(self.train), len(self.train) + len(self.test)
            )
        if _without_callbacks(arguments):
            # scikit-learn >= 1.9 gives every task a callback context and the
            # whole search (fitted attributes included) for its callbacks;
            # with no callback registered anywhere both do nothing, so they
            # stay here instead of being pickled into every message.
            arguments["callback_ctx"] = None
            arguments["caller"] = None
        for group in ("fit_params", "score_params"):
            params = arguments.get(group)
            if params:
                arguments[group] = {
                    name: self.refs.get("param:" + name, value)
                    for name, value in params.items()
                }
        return split_arguments(arguments)


class FoldIndex:
    """The folds of a backend's tasks, found by content, and when to store them.

    Thread-safe: tasks are indexed in the caller's thread while the
    scheduling thread stores and releases folds.

    Parameters
    ----------
    write : callable
        ``write(obj, rows=None, columns=None) -> StoredData``: store the
        given rows (and columns) of data on every host.
    remove : callable
        ``remove(ref)``: remove stored data.
    max_live_folds : int, default=1
        How many folds may be stored at once when they take more than
        ``small_folds_bytes`` together.
    small_folds_bytes : int, default=SMALL_FOLDS_BYTES
        Folds are all stored at once while they take at most this much.
    whole_data : bool, default=False
        Store each dataset once, whole, for all the splits of its tasks
        (which then carry their row numbers), and keep it stored until the
        index is cleared: for searches whose splits change from one round
        of tasks to the next.
    """

    def __init__(
        self,
        write,
        remove,
        max_live_folds=1,
        small_folds_bytes=SMALL_FOLDS_BYTES,
        whole_data=False,
    ):
        self._write, self._remove = write, remove
        self.whole_data = whole_data
        self.max_live_folds = max_live_folds
        self.small_folds_bytes = small_folds_bytes
        self.max_stored_bytes = 0  # the most that was stored at once
        self._lock = threading.Lock()
        self._folds = {}  # fold key -> Fold
        # Content of a task's split -> its fold; several when train sets are
        # prefixes of one another (learning curves).
        self._fold_of_split = {}
        self._rows_of_split = {}  # the whole-data rows of a split, made once
        self._folds_by_data = {}  # everything but train -> [Fold]
        self._sequence = itertools.count()
        self._hash = _PerObject(content_hash)
        # scikit-learn's count of samples, costly for what it does (ABC
        # checks), asked for every task of the same X.
        self._n_samples = _PerObject(_num_samples)
        # Fit tasks of the running call that scikit-learn said would come
        # (candidates x splits), and that came: once all have, a prefix no
        # candidate waits for any more is not needed again.
        self._n_expected = None
        self._n_fit_tasks = 0
        self.n_prefix_fits = 0  # prefixes fitted, over every call
        # Changes when a fold is chosen, stored or released: with the task
        # queues' own version (new tasks, and the folds made for them before
        # they are queued), it tells the scheduler when to_store() may have
        # another answer, so that it is not asked at every reply.
        self.version = 0

    def fold_of(self, arguments):
        """Return ``(split_key, fold, rows)`` of a ``_fit_and_score`` task.

        ``split_key`` names the content of the task's data and split;
        ``rows`` are the task's rows of ``fold``, as :meth:`Fold.rewrite`
        takes them.
        """
        X, y = arguments["X"], arguments["y"]
        n_samples = self._n_samples(X)
        train = _row_numbers(arguments["train"])
        test = _row_numbers(arguments["test"])
        aligned = {}
        for group in ("fit_params", "score_params"):
            for name, value in (arguments.get(group) or {}).items():
                if _is_sample_aligned(value, n_samples):
                    aligned[name] = value
        pairwise = _is_pairwise(arguments["estimator"], arguments["parameters"], X)
        data_key = (
            self._hash(X),
            None if y is None else self._hash(y),
            tuple((name, self._hash(value)) for name, value in sorted(aligned.items())),
            self._hash(arguments["test"]),
            pairwise,
        )
        split_key = (*data_key, self._hash(arguments["train"]))
        self._expect(arguments)
        if self.whole_data:
            return self._whole_data_fold(
                split_key, data_key, X, y, aligned, train, test, pairwise
            )
        with self._lock:
            fold = self._fold_of_split.get(split_key)
            if fold is None and not pairwise:
                fold = self._fold_sharing_rows(data_key, train)
            if fold is None:
                sequence = next(self._sequence)
                fold = Fold(split_key, sequence, X, y, aligned, train, test, pairwise)
                self._folds[split_key] = fold
                self._folds_by_data.setdefault(data_key, []).append(fold)
            self._fold_of_split[split_key] = fold
        return split_key, fold, len(train)

    def _whole_data_fold(
        self, split_key, data_key, X, y, aligned, train, test, pairwise
    ):
        # The dataset's one fold, keyed by everything but the split.
        data_key = (*data_key[:3], data_key[4])
        with self._lock:
            fold = self._folds.get(data_key)
            if fold is None:
                every_row = np.arange(self._n_samples(X))
                empty = every_row[:0]
                fold = Fold(
                    data_key,
                    next(self._sequence),
                    X,
                    y,
                    aligned,
                    every_row,
                    empty,
                    pairwise,
                )
                fold.pinned = True
                self._folds[data_key] = fold
            self._fold_of_split[split_key] = fold
            # The same arrays for every task of a split: a large one is
            # stored once, not sent with every task.
            rows = self._rows_of_split.setdefault(split_key, (train, test))
        return split_key, fold, rows

    def _fold_sharing_rows(self, data_key, train):
        # sklearn's learning curves train on prefixes of each split's train
        # set: they all use one stored fold, the longest, instead of a copy
        # of the data per train size.
        for fold in self._folds_by_data.get(data_key, ()):
            relation = fold._relation(train)
            if relation == "prefix":
                return fold
            if relation == "extends" and not fold.storing:
                fold._set_train(train)
                return fold
        return None

    def _expect(self, arguments):
        candidates = arguments.get("candidate_progress")
        splits = arguments.get("split_progress")
        with self._lock:
            self._n_fit_tasks += 1
            if candidates and splits and self._n_expected is None:
                self._n_expected = candidates[1] * splits[1]

    def n_fit_tasks_to_come(self):
        """How many fit tasks of the running search scikit-learn has yet to give.

        0 when the call is no search (its tasks do not say their number).
        """
        with self._lock:
            if self._n_expected is None:
                return 0
            return self._n_expected - self._n_fit_tasks

    def _all_submitted(self):
        return self._n_expected is not None and self._n_fit_tasks >= self._n_expected

    def prefix_of(self, split_key, fold, rows, plan, arguments):
        """Return the ``PrefixFold`` a fit task's candidate shares, made once.

        ``plan`` is :func:`prefix_plan`'s; the fit parameters are part of
        what the prefix's fit depends on.
        """
        levels, token = plan
        params = tuple(
            (name, self._hash(value))
            for name, value in sorted((arguments.get("fit_params") or {}).items())
        )
        key = ("prefix", split_key, levels, token, params)
        with self._lock:
            prefix = self._folds.get(key)
            if prefix is None:
                prefix = self._folds[key] = PrefixFold(key, fold, levels, rows)
            prefix.n_candidates += 1
        return prefix

    def store_prefix(self, prefix, output):
        """Store a prefix task's ``PrefixOutput`` (None: its candidates run whole)."""
        prefix.materialise(self._write, output)
        with self._lock:
            self.version += 1
            if output is not None:
                self.n_prefix_fits += 1
            self._note_stored_bytes()

    def hash(self, obj):
        """Return the content hash of ``obj``, computed once per object."""
        return self._hash(obj)

    def to_store(self, keys):
        """Return the next fold among ``keys`` to store now, or None.

        The earliest unstored fold, while the stored ones leave room for it:
        folds are stored together while they are small, so that tasks can
        run in their order across folds (a candidate's splits one after
        another); larger ones ``max_live_folds`` at a time.

        A ``PrefixFold`` is returned as soon as its split's fold is chosen:
        the caller then fits the prefix. Its candidates run whole at once
        (``plain``) when no other candidate shares it.
        """
        with self._lock:
            waiting = [self._folds[key] for key in keys if key is not None]
            for fold in waiting:
                if _is_prefix(fold) and not fold.storing and fold.base.storing:
                    fold.storing = True
                    self.version += 1
                    if fold.n_candidates < 2 and self._all_submitted():
                        fold.plain = True
                    return fold
            splits = {}
            for f in waiting:
                split = f.base if _is_prefix(f) else f
                splits.setdefault(id(split), split)
            unstored = [fold for fold in splits.values() if not fold.storing]
            if not unstored:
                return None
            fold = min(unstored, key=lambda f: f.sequence)
            stored = [f for f in self._folds.values() if f.storing]
            # Prefixes' rows take room, but only splits count as live folds.
            n_splits = sum(not _is_prefix(f) for f in stored)
            room = (
                not n_splits
                or sum(f.nbytes for f in stored) + fold.nbytes <= self.small_folds_bytes
                or n_splits < self.max_live_folds
            )
            if not room:
                return None
            fold.storing = True
            self.version += 1
            return fold

    def store(self, fold):
        """Write a fold chosen by :meth:`to_store`."""
        fold.materialise(self._write)
        with self._lock:
            self._note_stored_bytes()

    def _note_stored_bytes(self):
        stored = sum(f.nbytes for f in self._folds.values() if f.refs is not None)
        self.max_stored_bytes = max(self.max_stored_bytes, stored)

    def release_idle(self):
        """Remove the files of stored folds that no task needs any more.

        A prefix whose candidates are done is kept while more fit tasks of
        the call may come (joblib hands them over a few at a time under
        scikit-learn's own searches) and the prefixes kept take at most
        ``small_folds_bytes``, the oldest going first.
        """
        with self._lock:
            idle = [
                fold
                for fold in self._folds.values()
                if fold.stored
                and fold.n_outstanding == 0
                and not getattr(fold, "pinned", False)
            ]
            if not self._all_submitted():
                kept = [f for f in idle if _is_prefix(f)]
                room = self.small_folds_bytes
                for prefix in sorted(kept, key=lambda f: f.sequence, reverse=True):
                    room -= prefix.nbytes
                    if room >= 0:
                        idle.remove(prefix)
            if idle:
                self.version += 1
            for fold in idle:
                fold.storing = False
                if _is_prefix(fold):
                    fold.plain = False
        for fold in idle:
            fold.release(self._remove)

    def clear(self):
        """Remove every stored fold and forget them all."""
        with self._lock:
            folds = list(self._folds.values())
            self._folds.clear()
            self._fold_of_split.clear()
            self._rows_of_split.clear()
            self._folds_by_data.clear()
            self._hash = _PerObject(content_hash)
            self._n_samples = _PerObject(_num_samples)
            self._n_expected, self._n_fit_tasks = None, 0
            self.version += 1
        for fold in folds:
            if fold.refs is not None:
                fold.release(self._remove)


def _is_prefix(fold):
    return getattr(fold, "is_prefix", False)


class _PerObject:
    """``function(obj)`` of the objects seen, computed once, forgotten with them.

    The same arrays come back in every task of a search: they are hashed
    (and counted) once. Entries are keyed by ``id()`` and dropped by a weak
    reference's callback when the object is freed, so that a new object at
    the same address is never taken for it and no array is kept alive for
    the value (as joblib's ``_WeakArrayKeyMap``). Objects without weak
    references (lists) are kept until the index is cleared.
    """

    def __init__(self, function):
        self._function = function
        self._entries = {}  # id(obj) -> (reference, value)

    def __call__(self, obj):
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        value = self._function(obj)
        entries, key = self._entries, id(obj)
        try:
            ref = weakref.ref(obj, lambda _: entries.pop(key, None))
        except TypeError:
            ref = _StrongReference(obj)
        entries[key] = (ref, value)
        return value


class _StrongReference:
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        return self.obj


def _row_numbers(rows):
    """Return the row numbers of a split's train or test set.

    scikit-learn accepts boolean masks as well as integer indices of any
    type (``_safe_indexing``); folds are stored from row numbers.
    """
    rows = np.asarray(rows)
    if rows.dtype == bool:
        return np.flatnonzero(rows)
    return rows.astype(np.intp, copy=False)


def _without_callbacks(arguments):
    """Whether no callback can run in a task: not the search's, not a fit's.

    A callback set on the searched estimator, one of its steps, or an
    estimator among the candidate's parameters runs inside the fit, in the
    search's callback context.
    """
    context = arguments.get("callback_ctx")
    if context is None or getattr(context, "_callbacks", True):
        return False  # none to leave out (scikit-learn < 1.9), or the search's
    estimators = [arguments["estimator"], *(arguments.get("parameters") or {}).values()]
    while estimators:
        estimator = estimators.pop()
        if getattr(estimator, "_skl_callbacks", None):
            return False
        if hasattr(estimator, "get_params") and not isinstance(estimator, type):
            estimators.extend(_shallow_params(estimator).values())
    return True


def _shallow_params(estimator):
    """Return ``estimator.get_params(deep=False)``, quicker for most.

    scikit-learn's ``get_params`` reads the parameter names from the
    signature of ``__init__`` on every call, which takes longer than a tiny
    fit's scheduling; for classes that keep ``BaseEstimator.get_params`` the
    names are read once per class.
    """
    if type(estimator).get_params is not BaseEstimator.get_params:
        return estimator.get_params(deep=False)
    return {name: getattr(estimator, name) for name in _param_names(type(estimator))}


@functools.cache
def _param_names(cls):
    return cls._get_param_names()


def _nbytes(X, n_rows, n_columns=None):
    """Bytes a fold of ``n_rows`` rows of X takes (an estimate for non-arrays)."""
    shape = getattr(X, "shape", None)
    itemsize = getattr(getattr(X, "dtype", None), "itemsize", 8)
    if shape is None or len(shape) == 0 or not shape[0]:
        return 0
    row_items = n_columns if n_columns is not None else int(np.prod(shape[1:]))
    if hasattr(X, "nnz"):  # sparse: stored entries only
        return int(X.nnz / shape[0] * n_rows * (itemsize + 4))
    return int(n_rows * row_items * itemsize)


def _is_sample_aligned(value, n_samples):
    # The rule sklearn's _check_method_params uses to split fit parameters.
    if not hasattr(value, "__len__") and not hasattr(value, "shape"):
        return False
    if np.isscalar(value) or isinstance(value, (str, bytes, dict)):
        return False
    try:
        return _num_samples(value) == n_samples
    except TypeError:
        return False


def _is_pairwise(estimator, parameters, X):
    """Whether sklearn will index X as a precomputed kernel for this task."""
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        return False  # only a square X can be pairwise: skip the clone below
    candidate = estimator
    if parameters:
        from sklearn.base import clone

        candidate = clone(estimator).set_params(**clone(parameters, safe=False))
    try:
        from sklearn.utils import get_tags  # scikit-learn >= 1.6
    except ImportError:
        from sklearn.utils._tags import _safe_tags

        return bool(_safe_tags(candidate, key="pairwise"))
    return bool(get_tags(candidate).input_tags.pairwise)
