"""Drop-in replacements for sklearn's GridSearchCV and RandomizedSearchCV.

They are sklearn's own classes, whose ``fit`` runs under sklearn_ipp's joblib
backend: sklearn still builds ``cv_results_``, picks the best candidate and
refits it, and only the evaluation of the candidates moves to the cluster.
"""

import contextlib
import inspect
import os
import pickle
from numbers import Integral

import cloudpickle
import numpy as np
from joblib import parallel_config
from joblib.parallel import get_active_backend
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.utils._param_validation import Interval

from ._backend import ClusterBackend
from ._checkpoint import DirectoryCheckpoint, MemoryCheckpoint
from ._cluster import resolve_cluster
from ._progress import FitProgress
from ._store import Store

__all__ = ["IPyParallelGridSearchCV", "IPyParallelRandomizedSearchCV"]

_CLUSTER_PARAMETERS_DOC = """
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster to run on, as in :func:`sklearn_ipp.resolve_cluster`:
        None uses a running cluster of the default profile, else a local
        cluster started for this process; a string names a profile.

    store_dir : str, path or None, default=None
        Where the cross-validation folds are written for the engines to
        memory-map: a private subdirectory (mode 0700) is made there and
        removed after ``fit``. None uses ``/dev/shm`` when it has room, else
        the temporary directory. Engines on hosts that do not see it get a
        copy of the data, sent once per host.

    checkpoint_dir : str, path or None, default=None
        A directory (made with mode 0700 if missing) where the result of
        each (candidate, split) fit is saved as it arrives. Fitting again
        after an interruption runs only the fits whose results are missing;
        results no longer match once the data, the estimator, the grid or
        the cross-validation change. Use one directory per search: after a
        complete fit, results of other fits are removed from it. None keeps
        the finished results of a fit that fails (or is interrupted) on the
        search object instead, for the next ``fit`` of the same object.

    retries : int, default=3
        Times a fit is sent again when the engine running it dies. An
        exception raised by the estimator is handled by ``error_score``,
        never retried.
"""


_CLUSTER_CONSTRAINTS = {
    # Anything resolve_cluster accepts; it raises a TypeError naming the rest.
    "client": [None, object],
    "store_dir": [None, str, os.PathLike],
    "checkpoint_dir": [None, str, os.PathLike],
    "retries": [Interval(Integral, 0, None, closed="left")],
}


# scikit-learn >= 1.9 passes a callback context to _run_search, and only to
# an override that declares it.
_RUN_SEARCH_TAKES_CALLBACKS = (
    "callback_ctx" in inspect.signature(GridSearchCV._run_search).parameters
)


class _ClusterSearchMixin:
    """``fit`` on the cluster, plus what makes the search a good estimator."""

    def fit(self, X, y=None, **params):
        """Run fit with all sets of parameters, on the cluster.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, n_samples)
            Training vectors; a square precomputed kernel or distance matrix
            for pairwise estimators.
        y : array-like of shape (n_samples, n_output) or (n_samples,), \
                default=None
            Target relative to X; None for unsupervised learning.
        **params : dict of str -> object
            Parameters passed to the ``fit`` method of the estimator, the
            scorer and the CV splitter, as in scikit-learn. Array-likes with
            one value per sample are split with the folds.

        Returns
        -------
        self : object
            Instance of fitted estimator.
        """
        # scikit-learn's own checks first, so that its errors come as usual.
        self._validate_params()
        self._check_picklable()
        if self.checkpoint_dir is not None:
            checkpoint = DirectoryCheckpoint(self.checkpoint_dir)
        else:
            # Kept on the search only if this fit does not complete.
            checkpoint = self.__dict__.get("_unfinished_fits") or MemoryCheckpoint()
        # The refit runs in this process under the caller's joblib settings,
        # as in scikit-learn (see _run_search).
        caller_backend, caller_n_jobs = get_active_backend()
        with resolve_cluster(self.client) as connection:
            store = Store(self.store_dir, expected_nbytes=getattr(X, "nbytes", 0))
            progress = FitProgress(self.verbose)
            backend = ClusterBackend(
                connection,
                store,
                on_progress=progress.update,
                retries=self.retries,
                checkpoint=checkpoint,
            )
            try:
                with (
                    parallel_config(backend=backend),
                    contextlib.ExitStack() as after_search,
                ):
                    self._after_search = (after_search, caller_backend, caller_n_jobs)
                    super().fit(X, y, **params)
            except BaseException:
                if isinstance(checkpoint, MemoryCheckpoint) and len(checkpoint):
                    self._unfinished_fits = checkpoint
                raise
            finally:
                self.__dict__.pop("_after_search", None)
                backend.close()
                progress.close()
                store.close()
        self.__dict__.pop("_unfinished_fits", None)
        if isinstance(checkpoint, DirectoryCheckpoint):
            checkpoint.keep_only(backend.checkpoint_keys)
        return self

    if _RUN_SEARCH_TAKES_CALLBACKS:

        def _run_search(self, evaluate_candidates, *, callback_ctx=None):
            super()._run_search(evaluate_candidates, callback_ctx=callback_ctx)
            self._leave_cluster_for_refit()

    else:

        def _run_search(self, evaluate_candidates):
            super()._run_search(evaluate_candidates)
            self._leave_cluster_for_refit()

    def _leave_cluster_for_refit(self):
        # The candidates are evaluated. What follows, the refit of the best
        # one, runs in this process: the estimator's own Parallel calls
        # (n_jobs=None means "the active backend") must not go to the cluster
        # and send the data there again, but run as they would in
        # scikit-learn. The stack is left before the cluster backend is.
        after_search, caller_backend, caller_n_jobs = self._after_search
        after_search.enter_context(
            parallel_config(backend=caller_backend, n_jobs=caller_n_jobs)
        )

    def _check_picklable(self):
        """Fail before any task is sent if something cannot reach the engines."""
        _check_picklable(self.estimator, "The estimator")
        for name, value in self._search_space_items():
            _check_picklable(value, name)
        if callable(self.scoring) or isinstance(self.scoring, dict):
            _check_picklable(self.scoring, "The scoring")

    def __sklearn_clone__(self):
        # sklearn deep-copies parameters that are not estimators; a client or
        # a view holds live connections, so it is shared instead.
        params = self.get_params(deep=False)
        client = params.pop("client")
        cloned = {name: clone(value, safe=False) for name, value in params.items()}
        return type(self)(**cloned, client=client)

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the search keeps its client
        state.pop("_unfinished_fits", None)
        if not (state.get("client") is None or isinstance(state["client"], str)):
            # A connection cannot be pickled: the fitted model can, without it.
            state["client"] = None
        return state


def _check_picklable(obj, name):
    try:
        cloudpickle.dumps(obj)
    except Exception as exc:
        raise pickle.PicklingError(
            f"{name} {obj!r} cannot be pickled, so it cannot be sent to the "
            f"engines: {type(exc).__name__}: {exc}. Use objects that pickle, or "
            "define them in an importable module installed on every engine."
        ) from exc


def _grid_items(grid, label):
    if isinstance(grid, dict):
        grids = [grid]
    elif isinstance(grid, (list, tuple)) and all(isinstance(g, dict) for g in grid):
        grids = list(grid)
    else:
        return  # scikit-learn rejects it with its own message
    for index, one_grid in enumerate(grids):
        prefix = label if len(grids) == 1 else f"{label}[{index}]"
        for key, values in one_grid.items():
            candidates = (
                values if isinstance(values, (list, tuple, np.ndarray)) else [values]
            )
            for position, value in enumerate(candidates):
                yield f"The value {prefix}[{key!r}][{position}]", value


class IPyParallelGridSearchCV(_ClusterSearchMixin, GridSearchCV):
    """Exhaustive search over a parameter grid, on an ipyparallel cluster.

    A drop-in replacement for :class:`sklearn.model_selection.GridSearchCV`:
    same parameters, same ``cv_results_`` and attributes. X, y and the
    sample-aligned fit parameters are written once per cross-validation split
    into a private store that the engines memory-map read-only; tasks carry a
    reference to the data, never the data.

    Parameters
    ----------
    estimator : estimator object
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    param_grid : dict or list of dictionaries
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    scoring : str, callable, list, tuple or dict, default=None
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    n_jobs : int, default=None
        Accepted for compatibility and ignored: the cluster's engines decide
        the parallelism. Estimators' own ``n_jobs`` still apply on engines.
    refit : bool, str, or callable, default=True
        As in :class:`~sklearn.model_selection.GridSearchCV`; the refit runs
        in this process.
    cv : int, cross-validation generator or an iterable, default=None
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    verbose : int, default=0
        As in :class:`~sklearn.model_selection.GridSearchCV`; above 0 a
        progress bar of finished fits is shown too (without, it appears for
        searches running longer than 10 s, on a terminal or in Jupyter).
    pre_dispatch : int or str, default="all"
        How many tasks joblib hands to the scheduler before the first result.
        Tasks are a few KB each whatever the data size, so all of them are
        handed over by default, which lets the scheduler run them one
        cross-validation split at a time and store one split at a time.
    error_score : 'raise' or numeric, default=np.nan
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    return_train_score : bool, default=False
        As in :class:`~sklearn.model_selection.GridSearchCV`.
    {cluster_parameters}

    Attributes
    ----------
    cv_results_, best_estimator_, best_score_, best_params_, best_index_, \
scorer_, n_splits_, refit_time_, multimetric_, classes_, n_features_in_, \
feature_names_in_
        As in :class:`~sklearn.model_selection.GridSearchCV`.

    See Also
    --------
    IPyParallelRandomizedSearchCV : Randomized search on the cluster.
    sklearn.model_selection.GridSearchCV : The class this replaces.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.svm import SVC
    >>> from sklearn_ipp import IPyParallelGridSearchCV
    >>> X, y = load_iris(return_X_y=True)
    >>> search = IPyParallelGridSearchCV(SVC(), {{"C": [1, 10]}})
    >>> search.fit(X, y).best_params_  # doctest: +SKIP
    {{'C': 1}}
    """

    _parameter_constraints = {
        **GridSearchCV._parameter_constraints,
        **_CLUSTER_CONSTRAINTS,
    }

    def __init__(
        self,
        estimator,
        param_grid,
        *,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        pre_dispatch="all",
        error_score=np.nan,
        return_train_score=False,
        client=None,
        store_dir=None,
        checkpoint_dir=None,
        retries=3,
    ):
        super().__init__(
            estimator=estimator,
            param_grid=param_grid,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            pre_dispatch=pre_dispatch,
            error_score=error_score,
            return_train_score=return_train_score,
        )
        self.client = client
        self.store_dir = store_dir
        self.checkpoint_dir = checkpoint_dir
        self.retries = retries

    def _search_space_items(self):
        return _grid_items(self.param_grid, "param_grid")


class IPyParallelRandomizedSearchCV(_ClusterSearchMixin, RandomizedSearchCV):
    """Randomized search over parameters, on an ipyparallel cluster.

    A drop-in replacement for
    :class:`sklearn.model_selection.RandomizedSearchCV`: same parameters,
    same ``cv_results_`` and attributes, with the data stored once per
    cross-validation split and memory-mapped read-only by the engines.

    Parameters
    ----------
    estimator : estimator object
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    param_distributions : dict or list of dicts
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    n_iter : int, default=10
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    scoring : str, callable, list, tuple or dict, default=None
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    n_jobs : int, default=None
        Accepted for compatibility and ignored: the cluster's engines decide
        the parallelism.
    refit : bool, str, or callable, default=True
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    cv : int, cross-validation generator or an iterable, default=None
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    verbose : int, default=0
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`; above 0 a
        progress bar of finished fits is shown too.
    pre_dispatch : int or str, default="all"
        See :class:`IPyParallelGridSearchCV`.
    random_state : int, RandomState instance or None, default=None
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    error_score : 'raise' or numeric, default=np.nan
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    return_train_score : bool, default=False
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    {cluster_parameters}

    Attributes
    ----------
    cv_results_, best_estimator_, best_score_, best_params_, best_index_, \
scorer_, n_splits_, refit_time_, multimetric_, classes_, n_features_in_, \
feature_names_in_
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.

    See Also
    --------
    IPyParallelGridSearchCV : Exhaustive search on the cluster.
    sklearn.model_selection.RandomizedSearchCV : The class this replaces.

    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.svm import SVC
    >>> from sklearn_ipp import IPyParallelRandomizedSearchCV
    >>> X, y = load_iris(return_X_y=True)
    >>> search = IPyParallelRandomizedSearchCV(
    ...     SVC(), {{"C": loguniform(1e-2, 1e2)}}, n_iter=8, random_state=0)
    >>> search.fit(X, y).best_params_  # doctest: +SKIP
    """

    _parameter_constraints = {
        **RandomizedSearchCV._parameter_constraints,
        **_CLUSTER_CONSTRAINTS,
    }

    def __init__(
        self,
        estimator,
        param_distributions,
        *,
        n_iter=10,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        pre_dispatch="all",
        random_state=None,
        error_score=np.nan,
        return_train_score=False,
        client=None,
        store_dir=None,
        checkpoint_dir=None,
        retries=3,
    ):
        super().__init__(
            estimator=estimator,
            param_distributions=param_distributions,
            n_iter=n_iter,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            pre_dispatch=pre_dispatch,
            random_state=random_state,
            error_score=error_score,
            return_train_score=return_train_score,
        )
        self.client = client
        self.store_dir = store_dir
        self.checkpoint_dir = checkpoint_dir
        self.retries = retries

    def _search_space_items(self):
        return _grid_items(self.param_distributions, "param_distributions")


for _cls in (IPyParallelGridSearchCV, IPyParallelRandomizedSearchCV):
    _cls.__doc__ = _cls.__doc__.format(cluster_parameters=_CLUSTER_PARAMETERS_DOC)
