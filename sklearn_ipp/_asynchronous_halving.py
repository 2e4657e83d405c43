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

import numpy as np
from sklearn.base import clone

from ._promotions import Promotions
from ._scheduler import Job

__all__ = ["AsynchronousHalving"]


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

    def first_level_task(self, task):
        """Mark a fit task of the first level's call, before it is queued."""
        candidate = task.arguments.get("candidate_progress")
        split = task.arguments.get("split_progress")
        if not self.recording or candidate is None or split is None:
            return
        task.halving = (candidate[0], 0, split[0])
        with self._condition:
            self.n_splits = split[1]
            self._templates[candidate[0], split[0]] = task

    def done(self, task, ok, value):
        """Take a fit's end (the scheduling thread); start the promotions it makes."""
        candidate, level, split = task.halving
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
