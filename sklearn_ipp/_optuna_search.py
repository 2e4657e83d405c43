"""A search whose candidates an Optuna study proposes from the scores so far.

``IPyParallelOptunaSearchCV`` takes a randomized search's parameters and
``param_distributions`` unchanged. Its candidates come from an Optuna study
(TPE by default) as engines free up, and each candidate's mean test score
is told to the study once its last split ends (see ``_proposals``). Once
every candidate is evaluated, scikit-learn's own ``evaluate_candidates``
evaluates them again from the checkpoint, in the order they were proposed,
so that ``cv_results_``, ``best_*`` and the refit are scikit-learn's.
"""

import logging
import threading
import warnings
from numbers import Integral

import joblib
import numpy as np
from sklearn.model_selection import RandomizedSearchCV
from sklearn.model_selection._search import BaseSearchCV
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from ._optuna_space import OptunaSpace, import_optuna
from ._proposals import AsynchronousProposals, Record
from ._search import (
    _CLUSTER_CONSTRAINTS,
    _CLUSTER_PARAMETERS_DOC,
    _RUN_SEARCH_TAKES_CALLBACKS,
    _ClusterSearchMixin,
    _grid_items,
)
from ._splits import Splits
from ._time_budget import BudgetReached

__all__ = ["IPyParallelOptunaSearchCV"]

# Optuna's messages of a study's life (a study made, each trial finished),
# at INFO on its loggers: a search shows them only with verbose > 1, as
# RandomizedSearchCV shows no message per candidate.
_OPTUNA_LOGGERS = (
    "optuna.storages._in_memory",
    "optuna.storages._rdb.storage",
    "optuna.storages.journal._storage",
    "optuna.study.study",
    "optuna.study._tell",
)


class IPyParallelOptunaSearchCV(_ClusterSearchMixin, BaseSearchCV):
    """Search proposed by Optuna from the scores so far, on an ipyparallel cluster.

    A drop-in replacement for
    :class:`~sklearn.model_selection.RandomizedSearchCV` whose ``n_iter``
    candidates are proposed by an Optuna study (TPE by default), each from
    the scores of those evaluated before it. Model-based proposals usually
    reach a randomized search's best score in fewer fits (see
    :doc:`/model_based`). The same ``param_distributions`` work unchanged.

    Candidates are proposed as engines free up: whenever no more fits wait
    than the engines take next, the study is asked for one, and each
    candidate's mean test score is told to it once its last split ends.
    Candidates still running are known to the study, whose default sampler
    proposes away from them (``constant_liar``): engines never wait for a
    batch. ``cv_results_`` lists the candidates in the order they were
    proposed. Requires Optuna (``pip install "sklearn_ipp[optuna]"``).

    Parameters
    ----------
    estimator : estimator object
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    param_distributions : dict or list of dicts
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`: a list
        of values is a choice among them; ``scipy.stats`` distributions
        ``uniform``, ``loguniform`` (or ``reciprocal``) and ``randint`` are
        Optuna's float, log-float and int ranges; Optuna's own distributions
        (``optuna.distributions.FloatDistribution`` and so on) are taken as
        they are. In a list of dicts, the study chooses the dict too. Other
        distributions raise an error saying what to use instead.
    n_iter : int, default=10
        Candidates to evaluate. When every parameter is a list with fewer
        combinations, as many as there are, with a warning (as in
        :class:`~sklearn.model_selection.RandomizedSearchCV`); a study that
        proposes only candidates it has ends the search sooner.
    scoring : str, callable, list, tuple or dict, default=None
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`. With
        several metrics, the study is told ``refit``'s (the first metric by
        name when ``refit`` is not a metric's name).
    n_jobs : int, default=None
        Accepted for compatibility and ignored: the cluster's engines decide
        the parallelism.
    refit : bool, str, or callable, default=True
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    cv : int, cross-validation generator or an iterable, default=None
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    verbose : int, default=0
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`; above 0
        a progress bar of finished fits is shown too, above 1 Optuna's
        message for each trial.
    pre_dispatch : int or str, default="all"
        Accepted for compatibility: the candidates are handed over one at a
        time.
    random_state : int, RandomState instance or None, default=None
        Seeds the default sampler; with an int, a search run again proposes
        the same candidates given the same order of completions.
    error_score : 'raise' or numeric, default=np.nan
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`. A
        candidate with a failed fit scored ``np.nan`` is told to the study as
        a failed trial.
    return_train_score : bool, default=False
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`.
    sampler : optuna.samplers.BaseSampler or None, default=None
        Proposes the candidates. None: ``TPESampler`` seeded from
        ``random_state``, with ``constant_liar=True`` so that the candidates
        running are taken as scoring the worst so far, and
        ``n_startup_trials`` a fifth of ``n_iter`` (between 1 and Optuna's
        10): the candidates drawn at random before the model proposes.
        Ignored with ``study``.
    study : optuna.Study or None, default=None
        A study to ask and tell, used as it is: in a storage shared by several
        searches (an RDB such as SQLite), every search's trials inform the
        others'. It must maximize (scikit-learn's scores are greater for
        better). None: a new study in memory, ``study_`` after the fit.
    {cluster_parameters}

    Attributes
    ----------
    cv_results_, best_estimator_, best_score_, best_params_, best_index_, \
scorer_, n_splits_, refit_time_, multimetric_, classes_, n_features_in_, \
feature_names_in_
        As in :class:`~sklearn.model_selection.RandomizedSearchCV`, with the
        candidates in the order they were proposed.
    study_ : optuna.Study
        The study asked and told: ``study_.trials`` holds a trial per
        candidate proposed (and per repeated proposal).

    See Also
    --------
    IPyParallelRandomizedSearchCV : Candidates drawn at random, all at once.
    sklearn.model_selection.RandomizedSearchCV : The search this replaces.

    Notes
    -----
    Resume: with ``checkpoint_dir`` (or, without it, fitting the same search
    object again after an interruption), the trials asked are recorded with
    the fits. A search fitted again asks the study for the same trials first,
    in the same order; their fits come from the checkpoint, and the search
    goes on from there. With a ``study`` of the user's, nothing is asked
    again: the study keeps its own trials.

    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.svm import SVC
    >>> from sklearn_ipp import IPyParallelOptunaSearchCV
    >>> X, y = load_iris(return_X_y=True)
    >>> search = IPyParallelOptunaSearchCV(
    ...     SVC(), {{"C": loguniform(1e-2, 1e2)}}, n_iter=8, random_state=0)
    >>> search.fit(X, y).best_params_  # doctest: +SKIP
    """

    _parameter_constraints = {
        **RandomizedSearchCV._parameter_constraints,
        **_CLUSTER_CONSTRAINTS,
        "n_iter": [Interval(Integral, 1, None, closed="left")],
        # Checked at fit, with Optuna imported.
        "sampler": [None, object],
        "study": [None, object],
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
        sampler=None,
        study=None,
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
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            pre_dispatch=pre_dispatch,
            error_score=error_score,
            return_train_score=return_train_score,
        )
        self.param_distributions = param_distributions
        self.n_iter = n_iter
        self.random_state = random_state
        self.sampler = sampler
        self.study = study
        self.client = client
        self.store_dir = store_dir
        self.checkpoint_dir = checkpoint_dir
        self.retries = retries
        self.engine_wait = engine_wait
        self.reuse_prefixes = reuse_prefixes
        self.fit_timeout = fit_timeout
        self.time_budget = time_budget

    # Checks -------------------------------------------------------------------

    def _check_fit(self):
        caller = super()._check_fit()
        optuna = import_optuna()
        OptunaSpace(self.param_distributions)  # its errors, before any fit
        if self.sampler is not None and not isinstance(
            self.sampler, optuna.samplers.BaseSampler
        ):
            raise TypeError(
                "sampler must be an Optuna sampler (optuna.samplers.TPESampler(), "
                f"say) or None; got {type(self.sampler).__name__}."
            )
        if self.study is not None:
            if not isinstance(self.study, optuna.Study):
                raise TypeError(
                    "study must be an optuna.Study (optuna.create_study("
                    'direction="maximize", ...)) or None; got '
                    f"{type(self.study).__name__}."
                )
            if len(self.study.directions) != 1 or (
                self.study.direction != optuna.study.StudyDirection.MAXIMIZE
            ):
                raise ValueError(
                    "study must maximize a single objective, as scikit-learn's "
                    "scores are greater for better: make it with "
                    'optuna.create_study(direction="maximize", ...).'
                )
        return caller

    def _search_space_items(self):
        return _grid_items(self.param_distributions, "param_distributions")

    def _stores_whole_data(self):
        # Every candidate runs on every split, one candidate after another:
        # the data is stored once, and each fit carries its rows.
        return True

    # A study is shared, as the client: a copy would not see its trials, nor
    # its trials the copy's.
    _shared_parameters = ("client", "study")

    # The search -----------------------------------------------------------

    if _RUN_SEARCH_TAKES_CALLBACKS:

        def _run_search(self, evaluate_candidates, *, callback_ctx=None):
            self._search(evaluate_candidates, callback_ctx)

    else:

        def _run_search(self, evaluate_candidates):
            self._search(evaluate_candidates, None)

    def _search(self, evaluate_candidates, callback_ctx):
        space = OptunaSpace(self.param_distributions)
        n_iter = self._n_iter(space)
        with _quiet_optuna(self.verbose):
            study, own = self._make_study(n_iter)
            self.study_ = study
            if self._run is None:  # fitted inside a task, on an engine
                _run_in_turn(self, evaluate_candidates, callback_ctx, space, n_iter)
            else:
                self._search_within_budget(
                    lambda: _run_proposals(
                        self, evaluate_candidates, callback_ctx, space, n_iter, own
                    )
                )

    def _n_iter(self, space):
        n_candidates = space.n_candidates
        if n_candidates is not None and n_candidates < self.n_iter:
            # As scikit-learn's ParameterSampler says it.
            warnings.warn(
                f"The total space of parameters {n_candidates} is smaller "
                f"than n_iter={self.n_iter}. Running {n_candidates} iterations. "
                "For exhaustive searches, use GridSearchCV.",
                UserWarning,
                stacklevel=5,
            )
            return n_candidates
        return self.n_iter

    def _make_study(self, n_iter):
        """Return the study to ask and tell, and whether this search made it."""
        if self.study is not None:
            return self.study, False
        optuna = import_optuna()
        sampler = self.sampler
        if sampler is None:
            with warnings.catch_warnings():
                # constant_liar was experimental in Optuna 3.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = optuna.samplers.TPESampler(
                    n_startup_trials=_startup_trials(n_iter),
                    seed=_seed(self.random_state),
                    constant_liar=True,
                )
        return optuna.create_study(direction="maximize", sampler=sampler), True


def _startup_trials(n_iter):
    """Return how many candidates the default sampler draws at random first.

    Optuna's 10 is a small part of the hundreds of trials a study often
    has; a search of 30 candidates would spend a third of its budget at
    random. A fifth of the budget, at most 10, leaves the model most of it.
    """
    return max(1, min(10, n_iter // 5))


def _seed(random_state):
    if random_state is None or isinstance(random_state, Integral):
        return random_state
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _run_proposals(search, evaluate_candidates, callback_ctx, space, n_iter, own):
    """Evaluate the study's proposals on the cluster (see ``_proposals``)."""
    run = search._run
    backend = run.backend
    study = search.study_
    record = None
    if own:
        record = Record(backend.saved_fits, _record_key(search, backend, run))
        with warnings.catch_warnings():
            # enqueue_trial was experimental in early Optuna 3 releases.
            warnings.simplefilter("ignore")
            for params in record.previous:
                study.enqueue_trial(params)
    proposals = AsynchronousProposals(
        backend, study, space.suggest, n_iter, search._report_metric(), record
    )
    context = None
    if callback_ctx is not None:
        context = callback_ctx.subcontext(
            task_name="search", max_subtasks=2
        ).call_on_fit_task_begin(estimator=search)
    first = proposals.first()
    first_ran = ended = False
    backend.driver = proposals
    try:
        proposals.start()
        _evaluate(search, evaluate_candidates, [first], None, context)
        first_ran = True
        proposals.recording = False
        proposals.wait()
    except BudgetReached:
        ended = True
    finally:
        backend.driver = None
        proposals.stop()
    candidates = proposals.candidates
    complete = range(len(candidates))
    if ended:
        run.finish_call()
        complete = proposals.complete()
        if not complete:
            raise run.budget.error(len(candidates), proposals.fit_times())
    backend.saved_fits.use_saved()
    run.live.recording = False  # the fits come back from the checkpoint
    rest = [candidates[i].params for i in complete if not (first_ran and i == 0)]
    if rest:
        _evaluate(
            search,
            evaluate_candidates,
            rest,
            Splits(proposals.splits()),
            None if ended else context,
        )
    if context is not None:
        context.call_on_fit_task_end(estimator=search)
    if ended:
        warnings.warn(
            f"time_budget={run.budget.seconds:g} s ended the search: "
            f"{len(complete)} of the {len(candidates)} candidates proposed were "
            "evaluated on every split; cv_results_ and best_* come from them.",
            UserWarning,
            stacklevel=2,
        )


def _evaluate(search, evaluate_candidates, params, cv, context):
    """Evaluate candidates through scikit-learn, each call in its callback context."""
    if context is None:
        return evaluate_candidates(params, cv)
    call_context = context.subcontext(
        task_name="proposals",
        max_subtasks=len(params) * search.n_splits_,
        sequential_subtasks=False,
    ).call_on_fit_task_begin(estimator=search)
    results = evaluate_candidates(params, cv, callback_ctx=call_context)
    call_context.call_on_fit_task_end(estimator=search)
    return results


def _run_in_turn(search, evaluate_candidates, callback_ctx, space, n_iter):
    """Ask, evaluate and tell one candidate after another, in this process.

    A search fitted inside a task on an engine (the estimator of a
    cross-validation on the cluster) runs there, as a search nested in a
    loky worker does.
    """
    study = search.study_
    metric = f"mean_test_{search._report_metric()}"
    context = None
    if callback_ctx is not None:
        context = callback_ctx.subcontext(
            task_name="search", max_subtasks=n_iter
        ).call_on_fit_task_begin(estimator=search)
    for _ in range(n_iter):
        trial = study.ask()
        params = space.suggest(trial)
        results = _evaluate(search, evaluate_candidates, [params], None, context)
        scores = results.get(metric, results.get("mean_test_score"))
        mean = float(scores[-1])
        if np.isfinite(mean):
            study.tell(trial, mean)
        else:
            study.tell(trial, state=import_optuna().trial.TrialState.FAIL)
    if context is not None:
        context.call_on_fit_task_end(estimator=search)


def _record_key(search, backend, run):
    """Return the key of a search's record of trials: its data, estimator and space.

    Everything that changes what the trials would score, as for a fit's
    key, and the seed of the sampler when one is given.
    """
    X, y, params = run.fit_data
    folds = backend.folds
    data = (
        folds.hash(X),
        None if y is None else folds.hash(y),
        {name: folds.hash(value) for name, value in params.items()},
    )
    settings = {
        name: value
        for name, value in search.get_params(deep=False).items()
        if name
        not in {
            "client",
            "store_dir",
            "checkpoint_dir",
            "retries",
            "engine_wait",
            "verbose",
            "n_jobs",
            "pre_dispatch",
            "n_iter",
            "time_budget",
            "fit_timeout",
            "study",
            "sampler",
            "refit",
            "reuse_prefixes",
        }
    }
    if not isinstance(settings["random_state"], (Integral, type(None))):
        settings["random_state"] = "RandomState"
    sampler = search.sampler
    settings["sampler"] = None if sampler is None else type(sampler).__qualname__
    return "proposals-" + joblib.hash(("sklearn_ipp proposals", data, settings))


class _quiet_optuna:
    """Keep Optuna's INFO messages of this thread and the proposals' quiet."""

    def __init__(self, verbose):
        self._verbose = verbose
        self._loggers = []

    def filter(self, record):
        if record.levelno > logging.INFO:
            return True
        name = record.threadName
        return not (
            record.thread == self._thread or name.startswith("sklearn_ipp-proposals")
        )

    def __enter__(self):
        if self._verbose > 1:
            return self
        self._thread = threading.get_ident()
        self._loggers = [logging.getLogger(name) for name in _OPTUNA_LOGGERS]
        for logger in self._loggers:
            logger.addFilter(self)
        return self

    def __exit__(self, *exc_info):
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers = []


IPyParallelOptunaSearchCV.__doc__ = IPyParallelOptunaSearchCV.__doc__.format(
    cluster_parameters=_CLUSTER_PARAMETERS_DOC
)
