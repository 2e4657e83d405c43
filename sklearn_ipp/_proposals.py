"""Candidates proposed by an Optuna study as engines free up, their scores told back.

The search hands scikit-learn's first call one candidate, the study's first
proposal. Its fits, one per split, are the templates of all the others:
each new candidate's fits are that candidate's, with other parameters,
queued as tasks of the same call (``ClusterBackend.inject``), so that they
share its estimator, data, scorer and fit parameters.

``AsynchronousProposals`` keeps the engines busy: whenever no more fits are
waiting than engines would take next, it asks the study for a candidate.
A candidate's mean test score is told to the study once its last split
ends; until then its trial is running, which the study's sampler sees (the
default TPE sampler, with ``constant_liar``, proposes away from them).
Asking and telling happen in a thread of their own, so that neither holds
the scheduling thread, nor does a study in a remote storage.

Every trial asked is recorded, in order, in the search's checkpoint: a
search fitted again asks the study for the same trials first, whose fits
come from the checkpoint, and goes on from where it stopped.
"""

import threading

import joblib
import numpy as np
from sklearn.base import clone

from ._scheduler import Job

__all__ = ["AsynchronousProposals"]

# Trials in a row that repeat a candidate, after which a space is taken as
# exhausted: a study that keeps proposing what it has is done.
MAX_REPEATS = 100


class _Candidate:
    """One candidate: its parameters, trial, and the test score of each split."""

    def __init__(self, params, trial):
        self.params = params
        self.trial = trial
        self.scores = {}  # split -> test score
        self.fit_times = []
        self.told = False
        self.twins = []  # later trials that proposed the same parameters


class AsynchronousProposals:
    """One search's proposals, run through a backend (see the module docstring).

    Thread-safe: fits end in the scheduling thread, proposals are made in a
    thread of their own, the search waits in its own.

    Parameters
    ----------
    backend : ClusterBackend
        Where the fits run.
    study : optuna.Study
        Asked for candidates, told their scores.
    suggest : callable
        ``suggest(trial)``: the estimator's parameters of a trial.
    n_iter : int
        Candidates to evaluate.
    metric : str or None
        The test score told, with several metrics; None: the only one.
    record : _Record or None
        Where the trials asked are recorded, and those of an earlier fit read.
    """

    def __init__(self, backend, study, suggest, n_iter, metric, record=None):
        self._backend = backend
        self.study = study
        self._suggest = suggest
        self.n_iter = n_iter
        self._metric = metric
        self._record = record
        self._condition = threading.Condition()
        self.candidates = []  # in the order proposed
        self._by_hash = {}  # joblib.hash(params) -> _Candidate
        self._templates = {}  # split -> a fit task of the first candidate
        self.n_splits = None
        self._n_fits_done = 0
        self._to_tell = []  # candidates whose last split ended
        self._n_repeats = 0  # trials in a row that repeated a candidate
        self.exhausted = False  # the study repeats itself: no more candidates
        self.error = None
        self.recording = True  # while the first call runs
        self._thread = None
        self._stopping = False

    # The search's side -------------------------------------------------------

    def first(self):
        """Ask for the first candidate (made by the search's first call)."""
        candidate = self._ask()
        return candidate.params

    def start(self):
        """Start proposing in the background, as the first call's fits end."""
        self._thread = threading.Thread(
            target=self._propose, name="sklearn_ipp-proposals", daemon=True
        )
        self._thread.start()

    def wait(self):
        """Wait until every candidate is evaluated and told; raise a fit's error."""
        with self._condition:
            while self.error is None and not self._finished():
                self._condition.wait()
            if self.error is not None:
                raise self.error

    def stop(self):
        """Stop proposing; tell the study the trials left running failed.

        A study shared with others (a storage) must not keep them running:
        its samplers would take them as pending for ever.
        """
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
        state = _trial_state().FAIL
        for candidate in self.candidates:
            for trial in [candidate.trial, *candidate.twins]:
                if not candidate.told:
                    self.study.tell(trial, state=state, skip_if_finished=True)

    def complete(self):
        """Return the indices of the candidates finished on every split."""
        with self._condition:
            return [
                index
                for index, candidate in enumerate(self.candidates)
                if self.n_splits is not None and len(candidate.scores) == self.n_splits
            ]

    def fit_times(self):
        """Return the ``fit_time`` of every fit that finished."""
        with self._condition:
            return [t for c in self.candidates for t in c.fit_times]

    def splits(self):
        """Return the ``(train, test)`` of each split, as the fits ran on them."""
        with self._condition:
            return [
                (
                    self._templates[split].arguments["train"],
                    self._templates[split].arguments["test"],
                )
                for split in range(self.n_splits)
            ]

    # The backend's side -------------------------------------------------------

    def first_call_task(self, task):
        """Mark a fit task of the first call, before it is queued."""
        candidate = task.arguments.get("candidate_progress")
        split = task.arguments.get("split_progress")
        if not self.recording or candidate is None or split is None:
            return
        task.driven = (candidate[0], split[0])
        with self._condition:
            self.n_splits = split[1]
            self._templates[split[0]] = task
            self._condition.notify_all()

    def call_offset(self, task):
        """Every candidate's fits are results of the first call."""
        return 0

    def done(self, task, ok, value):
        """Take a fit's end (the scheduling thread)."""
        index, split = task.driven
        if not ok:
            self._fail(value)
            return
        with self._condition:
            candidate = self.candidates[index]
            if split in candidate.scores:
                return
            candidate.scores[split] = _test_score(value, self._metric)
            candidate.fit_times.append(value.get("fit_time", 0.0))
            self._n_fits_done += 1
            if len(candidate.scores) == self.n_splits:
                self._to_tell.append(candidate)
            self._condition.notify_all()

    # Inside -------------------------------------------------------------------

    def _finished(self):
        n_wanted = self.n_iter if not self.exhausted else len(self.candidates)
        return len(self.candidates) >= n_wanted and all(c.told for c in self.candidates)

    def _wants_more(self):
        """Whether to propose now: no fit would be waiting for an engine."""
        if self.exhausted or len(self.candidates) >= self.n_iter:
            return False
        if self.n_splits is None or len(self._templates) < self.n_splits:
            return False  # the first call's fits are still being made
        n_left = len(self.candidates) * self.n_splits - self._n_fits_done
        # Asked as an engine takes the last waiting fit, the next candidate
        # is queued before that engine (or another) would idle.
        return n_left <= self._n_engines()

    def _n_engines(self):
        try:
            return max(1, len(self._backend.connection.engine_ids))
        except Exception:
            return 1

    def _propose(self):
        try:
            while True:
                with self._condition:
                    while not (
                        self._stopping
                        or self.error is not None
                        or self._to_tell
                        or self._wants_more()
                        or self._finished()
                    ):
                        self._condition.wait()
                    if self._stopping or self.error is not None or self._finished():
                        return
                    to_tell, self._to_tell = self._to_tell, []
                for candidate in to_tell:
                    self._tell(candidate)
                with self._condition:
                    wants_more = self._wants_more()
                if wants_more:
                    self._new_candidate()
        except BaseException as exc:  # the search must not wait for ever
            self._fail(exc)

    def _ask(self):
        """Ask the study for a new candidate; return it (repeats are twins)."""
        while True:
            trial = self.study.ask()
            params = self._suggest(trial)
            if self._record is not None:
                self._record.add(trial.params)
            key = joblib.hash(params)
            with self._condition:
                original = self._by_hash.get(key)
                if original is None:
                    candidate = _Candidate(params, trial)
                    self._by_hash[key] = candidate
                    self.candidates.append(candidate)
                    self._n_repeats = 0
                    return candidate
                self._n_repeats += 1
                told = original.told
                if not told:
                    original.twins.append(trial)
                if self._n_repeats >= MAX_REPEATS:
                    self.exhausted = True
            if told:
                # The study proposed a candidate it has: tell it the score.
                self._tell_trial(trial, original)
            if self.exhausted:
                with self._condition:
                    self._condition.notify_all()
                return None

    def _new_candidate(self):
        candidate = self._ask()
        if candidate is None:
            return
        with self._condition:
            index = len(self.candidates) - 1
            templates = [self._templates[split] for split in range(self.n_splits)]
        for split, template in enumerate(templates):
            arguments = dict(template.arguments)
            arguments["estimator"] = clone(arguments["estimator"])
            # One dict for all the splits, as scikit-learn's tasks share theirs.
            arguments["parameters"] = candidate.params
            arguments["candidate_progress"] = (index, self.n_iter)
            self._backend.inject(
                template,
                arguments,
                (index, split),
                Job(1, self._job_done),
                # The candidates proposed first are finished first.
                index,
            )

    def _tell(self, candidate):
        for trial in [candidate.trial, *candidate.twins]:
            self._tell_trial(trial, candidate)
        with self._condition:
            candidate.told = True
            self._condition.notify_all()

    def _tell_trial(self, trial, candidate):
        scores = [candidate.scores[split] for split in range(self.n_splits)]
        mean = float(np.mean(scores))
        if np.isfinite(mean):
            self.study.tell(trial, mean)
        else:  # a failed fit, scored error_score=np.nan
            self.study.tell(trial, state=_trial_state().FAIL)

    def _job_done(self, job):
        # A fit that raised: done() took its end already, unless the task
        # never ran (the scheduler refused it, an abort dropped it).
        if job.exception is not None:
            self._fail(job.exception)

    def _fail(self, exc):
        with self._condition:
            if self.error is None:
                self.error = exc
            self._condition.notify_all()


def _test_score(value, metric):
    scores = value.get("test_scores", np.nan)
    if isinstance(scores, dict):
        if metric not in scores:
            metric = sorted(scores)[0]
        return scores[metric]
    return scores


def _trial_state():
    from optuna.trial import TrialState

    return TrialState


class Record:
    """The trials a search asked for, in order, saved in its checkpoint.

    Parameters
    ----------
    saved_fits : SavedFits
        The search's checkpoint, where the record is kept with the fits
        (and removed with them).
    key : str
        The record's key: that of the search, data and space.
    """

    def __init__(self, saved_fits, key):
        self._checkpoint = saved_fits.checkpoint
        self.key = key
        found, trials = self._checkpoint.get(key)
        # The params of each trial an earlier fit asked for, to ask again.
        self.previous = list(trials) if found and isinstance(trials, list) else []
        self._trials = []
        self._lock = threading.Lock()
        saved_fits.keys.add(key)  # kept after a complete fit, as the fits

    def add(self, params):
        """Record a trial's params; save the record if it grew past the last."""
        with self._lock:
            self._trials.append(dict(params))
            if len(self._trials) <= len(self.previous):
                return  # asked again, as recorded
            self._checkpoint.put(self.key, list(self._trials))
