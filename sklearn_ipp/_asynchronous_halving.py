"""Asynchronous successive halving on the cluster, with k-fold scores.

The search hands scikit-learn's first round to the backend as usual (one
``evaluate_candidates`` call of every candidate at the first level). As the
fits of a candidate end, ``AsynchronousHalving`` tells ``Promotions`` its
mean test score, and starts the fits of each promoted candidate at the next
level at once, as tasks of that same call made from the candidate's own:
the same estimator, data, scorer and fit parameters, its parameters with
the next level's resource (or the next level's subsample of each split).
They go before the first level's waiting fits, the higher levels first.

Their results are saved in the search's checkpoint as they end. Once no fit
runs and none will start, the search asks scikit-learn to evaluate each
level's candidates in turn, as synchronous halving does: every result comes
from the checkpoint, so that ``cv_results_`` has scikit-learn's format,
halving's ``iter`` and ``n_resources`` columns, and its choice of the best.
"""

import threading
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.model_selection._search_successive_halving import (
    _SubsampleMetaSplitter,
)

from ._promotions import Promotions
from ._scheduler import Job
from ._search_run import random_order
from ._splits import Splits
from ._time_budget import BudgetReached

__all__ = ["AsynchronousHalving", "run_asynchronous_halving"]


class AsynchronousHalving:
    """One asynchronous halving search's promotions, run through a backend.

    Thread-safe: fits end in the scheduling thread, the search waits in its
    own.

    Parameters
    ----------
    backend : ClusterBackend
        Where the fits run.
    candidate_params : list of dict
        The candidates, at the first level without the resource.
    resources : list of int
        The resource of each level.
    resource : str
        The search's ``resource``.
    factor : float
        The search's ``factor``.
    splits : callable or None
        ``splits(level, arguments)``: the ``(train, test)`` of each split at a
        level, given a first-level fit's arguments; None when every level
        fits on the first level's splits (a resource other than
        ``n_samples``).
    """

    def __init__(self, backend, candidate_params, resources, resource, factor, splits):
        self._backend = backend
        self.candidate_params = candidate_params
        self.resources = resources
        self.resource = resource
        self._splits = splits
        self.promotions = Promotions(len(candidate_params), len(resources), factor)
        self._condition = threading.Condition()
        # (candidate, split) -> a first-level task: what its fits are made of.
        self._templates = {}
        self._scores = {}  # (candidate, level) -> {split: test score}
        self._level_splits = {}  # level -> [(train, test)], made once
        self.n_splits = None
        self._n_complete = 0  # levels complete, whose eliminated models went
        self._fit_times = []
        self.error = None
        self.recording = True  # while the first level's call runs

    # The backend's side -------------------------------------------------------

    def first_call_task(self, task):
        """Mark a fit task of the first level's call, before it is queued."""
        candidate = task.arguments.get("candidate_progress")
        split = task.arguments.get("split_progress")
        if not self.recording or candidate is None or split is None:
            return
        task.driven = (candidate[0], 0, split[0])
        with self._condition:
            self.n_splits = split[1]
            self._templates[candidate[0], split[0]] = task

    def call_offset(self, task):
        """Return a fit's level: its results are the level's call's, made last."""
        return task.driven[1]

    def done(self, task, ok, value):
        """Take a fit's end (the scheduling thread); start the promotions it makes."""
        candidate, level, split = task.driven
        if not ok:
            self._fail(value)
            return
        promotions = []
        with self._condition:
            if self.error is not None:
                return
            scores = self._scores.setdefault((candidate, level), {})
            scores[split] = value.get("test_scores", np.nan)
            self._fit_times.append(value.get("fit_time", 0.0))
            if len(scores) == self.n_splits:
                mean = float(np.mean([scores[k] for k in range(self.n_splits)]))
                promotions = self.promotions.finish(candidate, level, mean)
            eliminated = self._eliminated()
            self._condition.notify_all()
        try:
            rounds = self._backend.rounds
            if rounds is not None and eliminated:
                rounds.drop(eliminated)
            for promoted, next_level in promotions:
                self._start(promoted, next_level)
        except BaseException as exc:  # no fit may wait for a promotion lost
            self._fail(exc)

    def _eliminated(self):
        """Candidates of the levels just complete that went no higher."""
        started = self.promotions.started
        eliminated = []
        while self._n_complete < len(self.resources) - 1 and self.promotions.complete(
            self._n_complete
        ):
            level = self._n_complete
            higher = set(started[level + 1])
            eliminated += [
                self.candidate_params[c] for c in started[level] if c not in higher
            ]
            self._n_complete += 1
        return eliminated

    # The search's side -------------------------------------------------------

    def wait(self):
        """Wait until no fit runs and none will start; raise a fit's error."""
        with self._condition:
            while self.error is None and not self.promotions.done():
                self._condition.wait()
            if self.error is not None:
                raise self.error

    def level_candidates(self, level):
        """Return the parameters of the candidates that ran at ``level``, in order."""
        return [
            {**self.candidate_params[candidate], **self._resource_at(level)}
            for candidate in self.promotions.started[level]
        ]

    def splits_at(self, level):
        """Return the ``(train, test)`` of each split the fits at ``level`` ran on."""
        if level > 0 and self._splits is not None:
            return self._level_splits[level]
        with self._condition:
            first = min(self._templates)[0]
            return [
                (
                    self._templates[first, split].arguments["train"],
                    self._templates[first, split].arguments["test"],
                )
                for split in range(self.n_splits)
            ]

    def complete_only(self):
        """Keep, at every level, only the candidates finished there (a deadline)."""
        with self._condition:
            promotions = self.promotions
            for level, started in enumerate(promotions.started):
                promotions.started[level] = [
                    c for c in started if c in promotions.scores[level]
                ]

    def fit_times(self):
        """Return the ``fit_time`` of every fit that finished."""
        with self._condition:
            return list(self._fit_times)

    # Inside -----------------------------------------------------------------

    def _resource_at(self, level):
        if self.resource == "n_samples":
            return {}
        return {self.resource: self.resources[level]}

    def _fail(self, exc):
        with self._condition:
            if self.error is None:
                self.error = exc
            self._condition.notify_all()

    def _start(self, candidate, level):
        """Queue a promoted candidate's fits at ``level``, one per split."""
        position = self.promotions.started[level].index(candidate)
        # One dict for all the splits, as scikit-learn's tasks share theirs.
        parameters = {**self.candidate_params[candidate], **self._resource_at(level)}
        for split in range(self.n_splits):
            template = self._templates[candidate, split]
            arguments = dict(template.arguments)
            arguments["estimator"] = clone(arguments["estimator"])
            arguments["parameters"] = parameters
            arguments["candidate_progress"] = (position, len(self.candidate_params))
            if self._splits is not None:
                train, test = self._level_split(level, arguments)[split]
                arguments["train"], arguments["test"] = train, test
            self._backend.inject(
                template,
                arguments,
                (candidate, level, split),
                Job(1, self._job_done),
                # The higher levels first, before the first level's waiting fits.
                -level,
            )

    def _level_split(self, level, arguments):
        with self._condition:
            splits = self._level_splits.get(level)
        if splits is None:
            splits = self._splits(level, arguments)
            with self._condition:
                splits = self._level_splits.setdefault(level, splits)
        return splits

    def _job_done(self, job):
        # A fit that raised: done() took its end already, unless the task
        # never ran (the scheduler refused it, an abort dropped it).
        if job.exception is not None:
            self._fail(job.exception)


def run_asynchronous_halving(search, evaluate_candidates, callback_ctx=None):
    """Successive halving with asynchronous promotions (see :doc:`/adaptive`).

    The levels and their resources are scikit-learn's iterations; the
    first level is evaluated by scikit-learn, the promotions start as
    its fits end (``AsynchronousHalving``), and each later level is then
    evaluated by scikit-learn from the checkpoint, for ``cv_results_``.
    """
    candidate_params = list(search._generate_candidate_params())
    if search.resource != "n_samples" and any(
        search.resource in candidate for candidate in candidate_params
    ):
        raise ValueError(
            f"Cannot use parameter {search.resource} as the resource since "
            "it is part of the searched parameters."
        )
    resources = _level_resources(search, len(candidate_params))
    splits = None
    if search.resource == "n_samples":
        groups = search._run.fit_data[2].get("groups")

        def splits(level, arguments):
            return list(
                _level_cv(search, resources[level]).split(
                    arguments["X"], arguments["y"], groups=groups
                )
            )

    run = search._run
    halving = AsynchronousHalving(
        run.backend,
        candidate_params,
        resources,
        search.resource,
        search.factor,
        splits,
    )
    if run.backend.rounds is not None:
        run.backend.rounds.top_level = len(resources) - 1
    contexts = _level_contexts(search, callback_ctx, len(resources))
    run.backend.driver = halving
    first_level_ran = False
    try:
        _evaluate_level(
            search,
            evaluate_candidates,
            halving.level_candidates(0),
            _level_cv(search, resources[0]),
            0,
            resources[0],
            contexts,
            # A candidate is promoted when it ranks in the top of those
            # finished before it: in a grid's order, whose candidates
            # improve along one parameter (say), each one that finished
            # better than the last would be, and the levels would fill with
            # candidates synchronous halving drops. In a random order, the
            # first finished are a random sample of the level.
            positions=random_order(candidate_params),
        )
        first_level_ran = True
        halving.recording = False
        halving.wait()
        ended = False
    except BudgetReached:
        ended = True
    finally:
        run.backend.driver = None
    if ended:
        # What finished by the deadline: every level's candidates whose
        # splits all did, evaluated again from the checkpoint.
        run.finish_call()
        halving.complete_only()
        if not halving.level_candidates(0):
            raise run.budget.error(len(candidate_params), halving.fit_times())
        if not first_level_ran:
            _evaluate_level(
                search,
                evaluate_candidates,
                halving.level_candidates(0),
                Splits(halving.splits_at(0)),
                0,
                resources[0],
                None,
            )
    run.backend.saved_fits.use_saved()
    run.live.recording = False  # the levels' fits come back from the checkpoint
    search.n_resources_ = [resources[0]]
    search.n_candidates_ = [len(halving.level_candidates(0))]
    for level in range(1, len(resources)):
        params = halving.level_candidates(level)
        if not params:
            break
        search.n_resources_.append(resources[level])
        search.n_candidates_.append(len(params))
        _evaluate_level(
            search,
            evaluate_candidates,
            params,
            Splits(halving.splits_at(level)),
            level,
            resources[level],
            contexts,
        )
    if ended:
        warnings.warn(
            f"time_budget={run.budget.seconds:g} s ended the search: "
            f"{sum(search.n_candidates_)} evaluations of candidates on every "
            f"split, at {len(search.n_candidates_)} level(s), had finished; "
            "cv_results_ and best_* come from them.",
            UserWarning,
            stacklevel=2,
        )
    n_required, n_possible = search._halving_iterations(len(candidate_params))
    search.n_remaining_candidates_ = search.n_candidates_[-1]
    search.n_required_iterations_ = n_required
    search.n_possible_iterations_ = n_possible
    search.n_iterations_ = len(search.n_resources_)
    if contexts is not None:
        contexts[0].call_on_fit_task_end(estimator=search)


def _level_resources(search, n_candidates):
    """Return the resource of each iteration, as scikit-learn's halving sets it.

    Sets ``min_resources_`` as scikit-learn does for ``"exhaust"``.
    """
    n_required, _ = search._halving_iterations(n_candidates)
    if search.min_resources == "exhaust":
        search.min_resources_ = max(
            search.min_resources_,
            search.max_resources_ // search.factor ** (n_required - 1),
        )
    n_required, n_possible = search._halving_iterations(n_candidates)
    if search.aggressive_elimination:
        n_iterations = n_required
    else:
        n_iterations = min(n_possible, n_required)
    resources = []
    for iteration in range(n_iterations):
        power = iteration
        if search.aggressive_elimination:
            power = max(0, iteration - n_required + n_possible)
        n_resources = int(search.factor**power * search.min_resources_)
        resources.append(min(n_resources, search.max_resources_))
    return resources


def _level_cv(search, n_resources):
    """Return the cross-validation of a level, as scikit-learn's halving does."""
    if search.resource != "n_samples":
        return search._checked_cv_orig
    return _SubsampleMetaSplitter(
        base_cv=search._checked_cv_orig,
        fraction=n_resources / search._n_samples_orig,
        subsample_test=True,
        random_state=search.random_state,
    )


def _evaluate_level(
    search, evaluate, params, cv, level, n_resources, contexts, positions=None
):
    """Evaluate a level's candidates through scikit-learn, with halving's columns.

    ``positions``: the order the candidates' fits run in; None: as given.
    """
    more_results = {
        "iter": [level] * len(params),
        "n_resources": [n_resources] * len(params),
    }
    search._run.positions = positions
    if contexts is None:
        return evaluate(params, cv, more_results=more_results)
    context = (
        contexts[0]
        .subcontext(
            task_name="halving-iteration",
            max_subtasks=len(params) * search.n_splits_,
            sequential_subtasks=False,
        )
        .call_on_fit_task_begin(estimator=search)
    )
    results = evaluate(params, cv, more_results=more_results, callback_ctx=context)
    context.call_on_fit_task_end(estimator=search)
    return results


def _level_contexts(search, callback_ctx, n_levels):
    """Return the callback context of the whole search, as halving's, or None."""
    if callback_ctx is None:
        return None
    return [
        callback_ctx.subcontext(
            task_name="search", max_subtasks=n_levels
        ).call_on_fit_task_begin(estimator=search)
    ]
