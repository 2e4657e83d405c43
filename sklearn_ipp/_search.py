"""Drop-in replacements for sklearn's grid, randomized and halving searches.

They are sklearn's own classes, whose ``fit`` runs under sklearn_ipp's joblib
backend: sklearn still builds ``cv_results_``, picks the best candidate and
refits it, and only the evaluation of the candidates moves to the cluster.
"""

import inspect
import logging
import os
import pickle
from math import ceil, floor, log
from numbers import Integral, Real

import cloudpickle
import numpy as np
from joblib.parallel import get_active_backend
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    HalvingRandomSearchCV,
    RandomizedSearchCV,
)
from sklearn.utils._param_validation import Interval, StrOptions

from ._asynchronous_halving import run_asynchronous_halving
from ._cluster import resolve_cluster
from ._search_run import SearchRun, WatchedSearchMixin, random_order
from ._time_budget import BudgetEnded
from ._worker import running_a_task

__all__ = [
    "IPyParallelGridSearchCV",
    "IPyParallelHalvingGridSearchCV",
    "IPyParallelHalvingRandomSearchCV",
    "IPyParallelRandomizedSearchCV",
]

logger = logging.getLogger("sklearn_ipp")

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

    engine_wait : float, default=60
        Seconds to wait for engines when there are none: for the first one
        to register when ``fit`` starts (raise it for engines of a batch job
        still in the queue), and for one to come back when every engine was
        lost during the fit. When the time is up, ``fit`` raises
        :class:`~sklearn_ipp.EngineTimeoutError` (saying how many engines
        came) or :class:`~sklearn_ipp.EngineLostError`.

    reuse_prefixes : bool, default=True
        When the estimator is a ``Pipeline``, fit its leading steps once per
        split for all the candidates that give them the same parameters,
        and fit only the remaining steps per candidate, where this cannot
        change a result (see :ref:`repeated-work`). ``cv_results_`` are
        scikit-learn's; a candidate's ``fit_time`` and ``score_time``
        include its share of the prefix's. False fits every pipeline whole.

    time_budget : float or None, default=None
        Seconds the search may run, the refit excluded. At the deadline no
        fit starts, the running ones are stopped, and ``fit`` returns:
        ``cv_results_`` holds the candidates evaluated on every split by
        then, ``best_*`` and the refit come from them, and a warning says
        how many candidates were evaluated. Candidates run one after
        another, on all their splits. A halving search ends with the
        iteration that was running. With no candidate evaluated,
        :class:`~sklearn_ipp.TimeBudgetError`. None: no limit. See
        :doc:`/budgets`.

    fit_timeout : float or None, default=None
        Seconds each fit may run, counted from its start on its engine. A
        fit past it is stopped, its engine freed for the next fit, and it
        counts as failed, as a fit that raised
        :class:`~sklearn_ipp.FitTimeoutError`: its scores are
        ``error_score`` and a ``FitFailedWarning`` says so (with
        ``error_score="raise"``, ``fit`` raises the error). Its
        ``fit_time`` is the time it ran. None: no limit. See
        :doc:`/budgets`.
"""


_HALVING_PARAMETERS_DOC = """
    warm_start_rounds : bool or "always", default=True
        When ``resource`` is the parameter counting the iterations of the
        estimator (or of a ``Pipeline``'s last step), a promoted candidate
        continues, on each split, the model it fitted in the round before
        (``warm_start``), where that gives the model of a fit from scratch:
        forests and gradient boosting of scikit-learn, with an int or None
        ``random_state`` (see :doc:`/adaptive`). ``cv_results_`` are then
        scikit-learn's; ``fit_time`` is the model's whole training time.
        Other fits run from scratch; ``verbose`` says why. ``"always"``
        continues any estimator with ``warm_start``, whose results may then
        differ from scikit-learn's; False fits every round from scratch.

    asynchronous : bool, default=False
        Promote a candidate as soon as all its splits at its level are
        finished and it ranks in the top ``1/factor`` of the candidates
        finished at that level (asynchronous successive halving), instead of
        waiting for the whole level: no engine waits for the slowest fit of
        a round. A level complete promotes the best ``ceil(n / factor)``
        too, as synchronous halving does. ``cv_results_`` has halving's
        columns; ``n_candidates_`` and ``n_resources_`` say what ran at each
        level, and ``best_*`` come from the highest level reached. Results
        differ from scikit-learn's synchronous halving by design: more
        candidates reach the higher levels (see :doc:`/adaptive`).
"""


_CLUSTER_CONSTRAINTS = {
    # Anything resolve_cluster accepts; it raises a TypeError naming the rest.
    "client": [None, object],
    "store_dir": [None, str, os.PathLike],
    "checkpoint_dir": [None, str, os.PathLike],
    "retries": [Interval(Integral, 0, None, closed="left")],
    "engine_wait": [Interval(Real, 0, None, closed="left")],
    "reuse_prefixes": ["boolean"],
    "fit_timeout": [None, Interval(Real, 0, None, closed="neither")],
    "time_budget": [None, Interval(Real, 0, None, closed="neither")],
}


# scikit-learn >= 1.9 passes a callback context to _run_search, and only to
# an override that declares it.
_RUN_SEARCH_TAKES_CALLBACKS = (
    "callback_ctx" in inspect.signature(GridSearchCV._run_search).parameters
)


class _ClusterSearchMixin(WatchedSearchMixin):
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

        See Also
        --------
        fit_async : Start the same fit and return at once.
        """
        if running_a_task():
            # A search fitted inside a task on an engine (the estimator of
            # cross_validate on the cluster): as a search nested in a loky
            # worker, it runs there, rather than wait for engines that may
            # all be running the outer tasks.
            self._run = None
            return super().fit(X, y, **params)
        caller = self._check_fit()
        run = self._run = SearchRun(self, caller, previous=self._run)
        run.run(self.client, super().fit, X, y, params)
        return self

    def fit_async(self, X, y=None, **params):
        """Start :meth:`fit` in the background and return at once.

        The parameters and the connection to the cluster are checked before
        it returns; everything else happens in a background thread, whose
        progress :meth:`report` (:meth:`live_report` in Jupyter),
        :meth:`progress` and :meth:`partial_results` show while it runs.
        :meth:`wait` waits for the end (and raises the error of a failed
        fit), :meth:`abort` stops it. Once every fit is done and the best
        candidate refitted, the search is an ordinary fitted search:
        ``best_params_``, ``predict`` and so on.

        Parameters
        ----------
        X, y, **params
            As in :meth:`fit`. X and y must not change while the search runs.

        Returns
        -------
        self : object
            The search, not fitted until :meth:`done`: fitted attributes of an
            earlier fit are removed.
        """
        caller = self._check_fit()
        # Errors come at once.
        connection = resolve_cluster(self.client, timeout=self.engine_wait)
        try:
            run = SearchRun(self, caller, previous=self._run)
        except BaseException:
            connection.close()
            raise
        for name in [k for k in vars(self) if k.endswith("_") and k[0] != "_"]:
            delattr(self, name)  # not fitted until this fit is done
        self._run = run
        run.run_in_background(connection, super().fit, X, y, params)
        return self

    def _check_fit(self):
        """Check what can be before a fit; return the caller's joblib settings."""
        if not self.done():
            raise RuntimeError(
                "This search is still fitting (started with fit_async): call "
                "wait() or abort() before fitting it again."
            )
        # scikit-learn's own checks first, so that its errors come as usual.
        self._validate_params()
        self._check_picklable()
        # The refit runs in this process under the caller's joblib settings,
        # as in scikit-learn (see _run_search).
        return get_active_backend()

    def _evaluation_order(self, candidate_params):
        """Positions in which to run the candidates; None: the search's order."""
        return None

    def _stores_whole_data(self):
        """Whether the data is stored once, whole, rather than split by split.

        Successive halving runs its rounds one after another, each on new
        subsamples of the splits (or on the same splits with more of another
        resource): split by split, every round would store (and send to
        other hosts) its folds again; whole, the data is stored once and
        each round's tasks carry only their row numbers.
        """
        # Under a time budget too: candidates then run one after another on
        # all their splits, which folds stored one at a time would not allow.
        return self.time_budget is not None or _is_halving(self)

    def _ordered(self, evaluate_candidates):
        run = self._run

        def evaluate(candidate_params, *args, **kwargs):
            candidate_params = list(candidate_params)
            more_results = kwargs.get("more_results") or {}
            if _is_halving(self) and more_results.get("iter"):
                last = more_results["iter"][0] == self._n_halving_iterations() - 1
                run.new_round(candidate_params, last)
            if run.budget is None or not run.budget.ended:
                run.positions = self._evaluation_order(candidate_params)
            if run.budget is None:
                return evaluate_candidates(candidate_params, *args, **kwargs)
            return run.budget.evaluate(
                evaluate_candidates, candidate_params, args, kwargs, run.finish_call
            )

        return evaluate

    def _search_within_budget(self, run_search):
        """Run ``run_search()``; what ran once ``time_budget`` ended it is kept."""
        try:
            run_search()
        except BudgetEnded:
            self._budget_ended()
        self._run.leave_cluster_for_refit()

    def _budget_ended(self):
        """Say what ran, once ``time_budget`` kept an iteration from starting.

        Successive halving sets these at the end of its iterations: here,
        for the iterations that ran, with the candidates evaluated in each.
        """
        if not _is_halving(self):
            return
        evaluated = self._run.budget.evaluated
        planned = self.n_candidates_[0]
        self.n_candidates_ = list(evaluated)
        self.n_resources_ = self.n_resources_[: len(evaluated)]
        self.n_iterations_ = len(evaluated)
        self.n_remaining_candidates_ = ceil(evaluated[-1] / self.factor)
        self.n_required_iterations_, self.n_possible_iterations_ = (
            self._halving_iterations(planned)
        )

    def _halving_iterations(self, n_candidates):
        """``(n_required, n_possible)`` iterations, as successive halving counts.

        Given the candidates of the first iteration, once ``min_resources_``
        and ``max_resources_`` are set.
        """
        n_required = 1 + floor(log(n_candidates, self.factor))
        n_possible = 1 + floor(
            log(self.max_resources_ // self.min_resources_, self.factor)
        )
        return n_required, n_possible

    def _n_halving_iterations(self):
        """Return the iterations this halving search runs, once the first began."""
        n_required, n_possible = self._halving_iterations(self.n_candidates_[0])
        if self.aggressive_elimination:
            return n_required
        return min(n_required, n_possible)

    if _RUN_SEARCH_TAKES_CALLBACKS:

        def _run_search(self, evaluate_candidates, *, callback_ctx=None):
            if self._run is None:  # fitted inside a task, on an engine
                super()._run_search(evaluate_candidates, callback_ctx=callback_ctx)
            elif getattr(self, "asynchronous", False):
                self._search_within_budget(
                    lambda: run_asynchronous_halving(
                        self, evaluate_candidates, callback_ctx
                    )
                )
            else:
                self._search_within_budget(
                    lambda: super(_ClusterSearchMixin, self)._run_search(
                        self._ordered(evaluate_candidates), callback_ctx=callback_ctx
                    )
                )

    else:

        def _run_search(self, evaluate_candidates):
            if self._run is None:  # fitted inside a task, on an engine
                super()._run_search(evaluate_candidates)
            elif getattr(self, "asynchronous", False):
                self._search_within_budget(
                    lambda: run_asynchronous_halving(self, evaluate_candidates)
                )
            else:
                self._search_within_budget(
                    lambda: super(_ClusterSearchMixin, self)._run_search(
                        self._ordered(evaluate_candidates)
                    )
                )

    def _check_picklable(self):
        """Fail before any task is sent if something cannot reach the engines."""
        _check_picklable(self.estimator, "The estimator")
        for name, value in self._search_space_items():
            _check_picklable(value, name)
        if callable(self.scoring) or isinstance(self.scoring, dict):
            _check_picklable(self.scoring, "The scoring")

    # Parameters a clone shares rather than copies.
    _shared_parameters = ("client",)

    def __sklearn_clone__(self):
        # sklearn deep-copies parameters that are not estimators; a client or
        # a view holds live connections, so it is shared instead.
        params = self.get_params(deep=False)
        shared = {name: params.pop(name) for name in self._shared_parameters}
        cloned = {name: clone(value, safe=False) for name, value in params.items()}
        return type(self)(**cloned, **shared)

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the search keeps its client
        state.pop("_run", None)
        if not (state.get("client") is None or isinstance(state["client"], str)):
            # A connection cannot be pickled: the fitted model can, without it.
            state["client"] = None
        return state


def _is_halving(search):
    return isinstance(search, (HalvingGridSearchCV, HalvingRandomSearchCV))


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
        searches running longer than 10 s, on a terminal or in Jupyter,
        except those started with ``fit_async``).
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
        engine_wait=60.0,
        reuse_prefixes=True,
        fit_timeout=None,
        time_budget=None,
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
        self.engine_wait = engine_wait
        self.reuse_prefixes = reuse_prefixes
        self.fit_timeout = fit_timeout
        self.time_budget = time_budget

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
        engine_wait=60.0,
        reuse_prefixes=True,
        fit_timeout=None,
        time_budget=None,
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
        self.engine_wait = engine_wait
        self.reuse_prefixes = reuse_prefixes
        self.fit_timeout = fit_timeout
        self.time_budget = time_budget

    def _search_space_items(self):
        return _grid_items(self.param_distributions, "param_distributions")

    def _evaluation_order(self, candidate_params):
        # Candidates run in a random order, one after another, so that the
        # candidates finished when a search is stopped early are a random
        # sample of the candidates (scikit-learn keeps a grid's order when
        # n_iter covers all of it).
        return random_order(candidate_params)


class IPyParallelHalvingGridSearchCV(_ClusterSearchMixin, HalvingGridSearchCV):
    """Search over a grid with successive halving, on an ipyparallel cluster.

    A drop-in replacement for
    :class:`sklearn.model_selection.HalvingGridSearchCV` (importing
    sklearn_ipp enables scikit-learn's halving searches, as
    ``sklearn.experimental.enable_halving_search_cv`` does): same parameters,
    same ``cv_results_`` and attributes. The data is stored once per
    cross-validation split; each iteration's fits, on subsamples of those
    splits, carry only the row numbers of their subsample.

    Parameters
    ----------
    estimator : estimator object
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    param_grid : dict or list of dictionaries
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    factor : int or float, default=3
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    resource : 'n_samples' or str, default='n_samples'
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    max_resources : int, default='auto'
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    min_resources : {{'exhaust', 'smallest'}} or int, default='exhaust'
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    aggressive_elimination : bool, default=False
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    cv : int, cross-validation generator or iterable, default=5
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    scoring : str, callable, or None, default=None
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    refit : bool or callable, default=True
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`; the
        refit runs in this process.
    error_score : 'raise' or numeric, default=np.nan
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    return_train_score : bool, default=True
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    random_state : int, RandomState instance or None, default=None
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.
    n_jobs : int or None, default=None
        Accepted for compatibility and ignored: the cluster's engines decide
        the parallelism.
    verbose : int, default=0
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`; above 0
        a progress bar of finished fits is shown too.
    {cluster_parameters}
    {halving_parameters}

    Attributes
    ----------
    n_resources_, n_candidates_, n_remaining_candidates_, max_resources_, \
min_resources_, n_iterations_, n_possible_iterations_, n_required_iterations_, \
cv_results_, best_estimator_, best_score_, best_params_, best_index_, \
scorer_, n_splits_, refit_time_, multimetric_, classes_, n_features_in_, \
feature_names_in_
        As in :class:`~sklearn.model_selection.HalvingGridSearchCV`.

    See Also
    --------
    IPyParallelHalvingRandomSearchCV : Halving over sampled candidates.
    sklearn.model_selection.HalvingGridSearchCV : The class this replaces.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.svm import SVC
    >>> from sklearn_ipp import IPyParallelHalvingGridSearchCV
    >>> X, y = load_iris(return_X_y=True)
    >>> search = IPyParallelHalvingGridSearchCV(
    ...     SVC(), {{"C": [0.1, 1, 10], "gamma": [0.01, 0.1]}}, random_state=0)
    >>> search.fit(X, y).best_params_  # doctest: +SKIP
    """

    _parameter_constraints = {
        **HalvingGridSearchCV._parameter_constraints,
        **_CLUSTER_CONSTRAINTS,
        "warm_start_rounds": ["boolean", StrOptions({"always"})],
        "asynchronous": ["boolean"],
    }

    def __init__(
        self,
        estimator,
        param_grid,
        *,
        factor=3,
        resource="n_samples",
        max_resources="auto",
        min_resources="exhaust",
        aggressive_elimination=False,
        cv=5,
        scoring=None,
        refit=True,
        error_score=np.nan,
        return_train_score=True,
        random_state=None,
        n_jobs=None,
        verbose=0,
        client=None,
        store_dir=None,
        checkpoint_dir=None,
        retries=3,
        engine_wait=60.0,
        reuse_prefixes=True,
        fit_timeout=None,
        time_budget=None,
        warm_start_rounds=True,
        asynchronous=False,
    ):
        super().__init__(
            estimator,
            param_grid,
            factor=factor,
            resource=resource,
            max_resources=max_resources,
            min_resources=min_resources,
            aggressive_elimination=aggressive_elimination,
            cv=cv,
            scoring=scoring,
            refit=refit,
            error_score=error_score,
            return_train_score=return_train_score,
            random_state=random_state,
            n_jobs=n_jobs,
            verbose=verbose,
        )
        self.client = client
        self.store_dir = store_dir
        self.checkpoint_dir = checkpoint_dir
        self.retries = retries
        self.engine_wait = engine_wait
        self.reuse_prefixes = reuse_prefixes
        self.fit_timeout = fit_timeout
        self.time_budget = time_budget
        self.warm_start_rounds = warm_start_rounds
        self.asynchronous = asynchronous

    def _search_space_items(self):
        return _grid_items(self.param_grid, "param_grid")


class IPyParallelHalvingRandomSearchCV(_ClusterSearchMixin, HalvingRandomSearchCV):
    """Randomized search with successive halving, on an ipyparallel cluster.

    A drop-in replacement for
    :class:`sklearn.model_selection.HalvingRandomSearchCV` (importing
    sklearn_ipp enables scikit-learn's halving searches): same parameters,
    same ``cv_results_`` and attributes, with the data stored once per
    cross-validation split and each iteration's fits carrying only the row
    numbers of their subsample.

    Parameters
    ----------
    estimator : estimator object
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    param_distributions : dict or list of dicts
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    n_candidates : 'exhaust' or int, default='exhaust'
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    factor : int or float, default=3
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    resource : 'n_samples' or str, default='n_samples'
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    max_resources : int, default='auto'
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    min_resources : {{'exhaust', 'smallest'}} or int, default='smallest'
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    aggressive_elimination : bool, default=False
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    cv : int, cross-validation generator or an iterable, default=5
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    scoring : str, callable, or None, default=None
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    refit : bool or callable, default=True
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    error_score : 'raise' or numeric, default=np.nan
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    return_train_score : bool, default=True
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    random_state : int, RandomState instance or None, default=None
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.
    n_jobs : int or None, default=None
        Accepted for compatibility and ignored: the cluster's engines decide
        the parallelism.
    verbose : int, default=0
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`; above
        0 a progress bar of finished fits is shown too.
    {cluster_parameters}
    {halving_parameters}

    Attributes
    ----------
    n_resources_, n_candidates_, n_remaining_candidates_, max_resources_, \
min_resources_, n_iterations_, n_possible_iterations_, n_required_iterations_, \
cv_results_, best_estimator_, best_score_, best_params_, best_index_, \
scorer_, n_splits_, refit_time_, multimetric_, classes_, n_features_in_, \
feature_names_in_
        As in :class:`~sklearn.model_selection.HalvingRandomSearchCV`.

    See Also
    --------
    IPyParallelHalvingGridSearchCV : Halving over a grid.
    sklearn.model_selection.HalvingRandomSearchCV : The class this replaces.

    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.svm import SVC
    >>> from sklearn_ipp import IPyParallelHalvingRandomSearchCV
    >>> X, y = load_iris(return_X_y=True)
    >>> search = IPyParallelHalvingRandomSearchCV(
    ...     SVC(), {{"C": loguniform(1e-2, 1e2)}}, random_state=0)
    >>> search.fit(X, y).best_params_  # doctest: +SKIP
    """

    _parameter_constraints = {
        **HalvingRandomSearchCV._parameter_constraints,
        **_CLUSTER_CONSTRAINTS,
        "warm_start_rounds": ["boolean", StrOptions({"always"})],
        "asynchronous": ["boolean"],
    }

    def __init__(
        self,
        estimator,
        param_distributions,
        *,
        n_candidates="exhaust",
        factor=3,
        resource="n_samples",
        max_resources="auto",
        min_resources="smallest",
        aggressive_elimination=False,
        cv=5,
        scoring=None,
        refit=True,
        error_score=np.nan,
        return_train_score=True,
        random_state=None,
        n_jobs=None,
        verbose=0,
        client=None,
        store_dir=None,
        checkpoint_dir=None,
        retries=3,
        engine_wait=60.0,
        reuse_prefixes=True,
        fit_timeout=None,
        time_budget=None,
        warm_start_rounds=True,
        asynchronous=False,
    ):
        super().__init__(
            estimator,
            param_distributions,
            n_candidates=n_candidates,
            factor=factor,
            resource=resource,
            max_resources=max_resources,
            min_resources=min_resources,
            aggressive_elimination=aggressive_elimination,
            cv=cv,
            scoring=scoring,
            refit=refit,
            error_score=error_score,
            return_train_score=return_train_score,
            random_state=random_state,
            n_jobs=n_jobs,
            verbose=verbose,
        )
        self.client = client
        self.store_dir = store_dir
        self.checkpoint_dir = checkpoint_dir
        self.retries = retries
        self.engine_wait = engine_wait
        self.reuse_prefixes = reuse_prefixes
        self.fit_timeout = fit_timeout
        self.time_budget = time_budget
        self.warm_start_rounds = warm_start_rounds
        self.asynchronous = asynchronous

    def _search_space_items(self):
        return _grid_items(self.param_distributions, "param_distributions")


for _cls in (
    IPyParallelGridSearchCV,
    IPyParallelRandomizedSearchCV,
    IPyParallelHalvingGridSearchCV,
    IPyParallelHalvingRandomSearchCV,
):
    _cls.__doc__ = _cls.__doc__.format(
        cluster_parameters=_CLUSTER_PARAMETERS_DOC,
        halving_parameters=_HALVING_PARAMETERS_DOC,
    )
