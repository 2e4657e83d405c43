"""One fit of a search on the cluster, in the foreground or the background.

``SearchRun`` runs scikit-learn's own ``fit`` of the search inside
``on_cluster``, and owns what the search needs while and after it runs: the
live results, the backend (to abort it), the switch back to the caller's
joblib settings for the refit, the order in which candidates run, and the
results of the fits that finished should the fit not complete.
``WatchedSearchMixin`` gives the searches their methods to watch and stop
their run: ``report``, ``live_report``, ``progress``, ``partial_results``,
``abort``...
"""

import contextlib
import logging
import threading

import joblib
import numpy as np
from joblib import parallel_config

from ._backend import on_cluster
from ._checkpoint import DirectoryCheckpoint, MemoryCheckpoint
from ._report import LiveReport
from ._results import (
    LiveResults,
    best_first,
    format_progress,
    format_report,
    top_candidates,
)
from ._time_budget import TimeBudget

__all__ = [
    "ABORTED",
    "COMPLETED",
    "FAILED",
    "RUNNING",
    "STOPPED",
    "Aborted",
    "SearchRun",
    "WatchedSearchMixin",
    "random_order",
]

logger = logging.getLogger("sklearn_ipp")

# A run's status: running, then exactly one of the others.
RUNNING = "running"
COMPLETED = "completed"  # fitted, refit included
ABORTED = "aborted"  # by abort()
FAILED = "failed"  # with an error that wait() raises
STOPPED = "stopped"  # a blocking fit that raised: its caller has the error


def random_order(candidate_params):
    """Return positions that run ``candidate_params`` in a random order.

    The order comes from the candidates (which come from ``random_state``):
    reproducible, and ``random_state`` is not drawn from again.
    """
    seed = int(joblib.hash(candidate_params)[:16], 16)
    order = np.random.default_rng(seed).permutation(len(candidate_params))
    positions = np.empty(len(order), dtype=int)
    positions[order] = np.arange(len(order))
    return positions


class Aborted(Exception):
    """Ends a fit stopped by ``abort()``."""

    def __init__(self):
        super().__init__("The search was aborted.")


class SearchRun:
    """One fit of a search: its results so far, and how to stop it.

    Parameters
    ----------
    search : IPyParallelGridSearchCV or IPyParallelRandomizedSearchCV
        The search, whose parameters are read once here.
    caller : (ParallelBackendBase, int)
        joblib's active backend and ``n_jobs`` where ``fit`` was called: the
        refit runs under them, as in scikit-learn.
    previous : SearchRun or None
        The search's last run; the fits it finished are not run again if it
        did not complete (and no ``checkpoint_dir`` keeps them).
    """

    def __init__(self, search, caller, previous=None):
        self.live = LiveResults(search.return_train_score, search.error_score)
        self.status = RUNNING
        self.error = None  # of a failed run
        self.finished = threading.Event()
        # Candidate index -> position in the order candidates are run; set
        # by the search once it has its candidates (see _run_search).
        self.positions = None
        self.fit_data = None  # (X, y, fit params) while the fit runs
        # Read now, as the docstring says; keeping the search itself would
        # tie it and its run in a reference cycle.
        self._cluster_options = {
            "store_dir": search.store_dir,
            "retries": search.retries,
            "engine_wait": search.engine_wait,
            "reuse_prefixes": search.reuse_prefixes,
            "fit_timeout": search.fit_timeout,
            "verbose": search.verbose,
            "whole_data": search._stores_whole_data(),
        }
        # A halving search's fits may continue the models of the round before.
        mode = getattr(search, "warm_start_rounds", False)
        self._rounds = (search.estimator, search.resource, mode) if mode else None
        self._caller = caller
        self._lock = threading.Lock()
        self._backend = None  # while the candidates are evaluated
        self._abort_requested = False
        self._after_search = None  # ExitStack of the refit's joblib settings
        if search.checkpoint_dir is not None:
            self._checkpoint = DirectoryCheckpoint(search.checkpoint_dir)
        else:
            kept = None if previous is None else previous.unfinished
            self._checkpoint = kept or MemoryCheckpoint()
        self.unfinished = None  # the MemoryCheckpoint of a run that failed
        # Its deadline, counted from now: the fit starts.
        self.budget = (
            None if search.time_budget is None else TimeBudget(search.time_budget)
        )

    def run(self, connection, sklearn_fit, X, y, params, keep_error=False):
        """Fit the search on ``connection``; set the status at the end.

        ``sklearn_fit`` is scikit-learn's ``fit`` of the search. An error is
        raised, and kept for ``wait()`` if ``keep_error``.
        """
        try:
            self._fit(connection, sklearn_fit, X, y, params)
        except Aborted:
            self.status = ABORTED
            raise
        except BaseException as exc:
            if keep_error:
                self.status, self.error = FAILED, exc
            else:
                self.status = STOPPED
            raise
        else:
            self.status = COMPLETED
        finally:
            self.finished.set()

    def run_in_background(self, connection, sklearn_fit, X, y, params):
        """Start :meth:`run` in a thread; its errors are kept for ``wait``.

        No progress bar shows after a delay, only with ``verbose``: the
        caller has moved on, and the bar would appear wherever its output is
        by then (a later cell of a notebook). report() and progress() show
        how far the search is.
        """
        self._cluster_options["delayed_bar"] = False

        def run():
            try:
                with connection:
                    self.run(connection, sklearn_fit, X, y, params, keep_error=True)
            except Aborted:
                pass
            except BaseException as exc:
                logger.warning(
                    "The search failed: %s: %s (wait() raises it).",
                    type(exc).__name__,
                    exc,
                )

        threading.Thread(target=run, name="sklearn_ipp-search", daemon=True).start()

    @property
    def backend(self):
        """The ``ClusterBackend`` while the candidates are evaluated, else None."""
        return self._backend

    def _fit(self, connection, sklearn_fit, X, y, params):
        # What the searches that drive their own fits read while they run:
        # the splitter's groups (asynchronous halving), the data's identity
        # (proposals). Not kept after the fit.
        self.fit_data = (X, y, params)
        checkpoint = self._checkpoint
        cluster = on_cluster(
            connection,
            X,
            **self._cluster_options,
            checkpoint=checkpoint,
            on_progress=lambda n_done, n_submitted: self.live.set_total(n_submitted),
            on_result=self.live.add,
            candidate_position=self.candidate_position,
            caller_backend=self._caller[0],
        )
        try:
            with cluster as backend, contextlib.ExitStack() as after_search:
                self._after_search = after_search
                if self._rounds is not None:
                    backend.continue_rounds(*self._rounds)
                with self._lock:
                    self._backend = backend
                    if self._abort_requested:
                        backend.cancel(Aborted())
                if self.budget is not None:
                    self.budget.arm(backend.cancel)
                    after_search.callback(self.budget.disarm)
                try:
                    sklearn_fit(X, y, **params)
                finally:
                    with self._lock:
                        self._backend = None
        except BaseException:
            if isinstance(checkpoint, MemoryCheckpoint) and len(checkpoint):
                self.unfinished = checkpoint
            raise
        finally:
            self._after_search = None
            self.fit_data = None
        if isinstance(checkpoint, DirectoryCheckpoint):
            checkpoint.keep_only(backend.checkpoint_keys)

    def finish_call(self):
        """After the deadline stopped a call: its complete candidates, fit times.

        The candidates' fits, saved in the checkpoint as they finished, come
        back from it when they are evaluated again (see ``TimeBudget``); that
        evaluation adds nothing to the live results.
        """
        backend = self._backend
        finished = self.live.finished_in(backend.last_call_number)
        backend.saved_fits.use_saved()
        backend.resume_calls()
        self.live.recording = False
        return finished

    def new_round(self, candidate_params, last):
        """Tell the backend that a halving round of ``candidate_params`` starts.

        ``last``: no round follows it.
        """
        backend = self._backend
        if backend is not None and backend.rounds is not None:
            backend.rounds.new_round(candidate_params, last)

    def candidate_position(self, candidate):
        """Return a candidate's position in the running order (for the backend)."""
        return 0 if self.positions is None else self.positions[candidate]

    def leave_cluster_for_refit(self):
        """Run what follows in this process under the caller's joblib settings.

        Called once the candidates are evaluated: the refit of the best one
        runs in this process, and the estimator's own Parallel calls
        (``n_jobs=None`` means "the active backend") must not go to the
        cluster and send the data there again, but run as they would in
        scikit-learn. The settings are left before the cluster backend is.
        """
        backend = self._backend
        if self.budget is not None:
            self.budget.disarm()
        if self._cluster_options["verbose"] > 0 and backend is not None:
            n_fits, n_on = backend.n_prefix_fits, backend.n_on_prefix
            if n_on:
                print(
                    f"Fitted {n_fits} pipeline prefixes once per split for "
                    f"{n_on} fits: {max(0, n_on - n_fits)} prefix fits saved"
                )
            elif backend.prefix_note is not None:
                print(
                    "Fitted every pipeline whole, its leading steps for each "
                    f"candidate: {backend.prefix_note}"
                )
            rounds = backend.rounds
            if rounds is not None and rounds.n_continued:
                print(
                    f"Continued {rounds.n_continued} of {rounds.n_fits} fits from "
                    f"the models of the round before: {rounds.units_fitted} "
                    f"{rounds.resource} fitted instead of {rounds.units_planned}"
                )
            elif rounds is not None and rounds.note is not None:
                print(f"Fitted every halving round from scratch: {rounds.note}")
        # joblib's parallel_config takes effect when made, not when entered.
        caller_backend, caller_n_jobs = self._caller
        self._after_search.enter_context(
            parallel_config(backend=caller_backend, n_jobs=caller_n_jobs)
        )

    def abort(self):
        """Stop the run; return once it has stopped."""
        if self.finished.is_set():
            return
        with self._lock:
            self._abort_requested = True
            backend = self._backend
        if backend is not None:
            backend.cancel(Aborted())
        self.finished.wait()


class WatchedSearchMixin:
    """What a search shows of its last run, and how it is waited for or stopped."""

    _run = None  # the SearchRun of the last fit

    @property
    def _unfinished_fits(self):
        # The finished fits of a fit that did not complete, run again by none
        # of the next fits.
        unfinished = None if self._run is None else self._run.unfinished
        if unfinished is None:
            raise AttributeError("_unfinished_fits")
        return unfinished

    # While it runs ---------------------------------------------------------

    def done(self):
        """Whether no fit of this search is running.

        Returns
        -------
        done : bool
            True once a fit started with :meth:`fit_async` has ended: fitted,
            aborted or failed (:meth:`wait` raises the error). True as well
            when no fit was started.
        """
        run = self._run
        return run is None or run.finished.is_set()

    def wait(self, timeout=None):
        """Wait for a fit started with :meth:`fit_async` to end.

        Parameters
        ----------
        timeout : float or None, default=None
            Seconds to wait at most; None waits for the end.

        Returns
        -------
        done : bool
            False if the fit is still running after ``timeout``.

        Raises
        ------
        Exception
            The error that ended the fit, if it failed (not if aborted).
        """
        run = self._run
        if run is None:
            return True
        if not run.finished.wait(timeout):
            return False
        if run.error is not None:
            raise run.error
        return True

    def abort(self):
        """Stop a running fit; keep the results of the fits finished so far.

        Queued fits are dropped and running ones interrupted on their
        engines. The search is then not fitted, but :meth:`report` and
        :meth:`partial_results` show what finished, and the next ``fit`` of
        this search runs only the fits that did not. When every fit has
        already finished, the refit completes and the search is fitted.
        Returns once the fit has stopped.
        """
        if self._run is not None:
            self._run.abort()

    def progress(self):
        """Return the fits finished and the fits of the search so far.

        Returns
        -------
        n_done : int
            Finished fits, including results reused from a checkpoint.
        n_total : int
            Fits of the search (candidates times splits); 0 before the search
            has handed them over.
        """
        run = self._run
        if run is None:
            if not hasattr(self, "cv_results_"):
                return 0, 0
            n_fits = len(self.cv_results_["params"]) * self.n_splits_
            return n_fits, n_fits
        return run.live.n_done, run.live.n_total

    def partial_results(self):
        """Return the ``cv_results_`` of the fits finished so far.

        Usable while the search runs, after :meth:`abort` and after a
        failed or interrupted fit. The keys are those of ``cv_results_``,
        for the candidates with at least one finished split, in the search's
        order; split scores of unfinished splits are masked
        (``numpy.ma``), and means, standard deviations and ranks are over
        the finished splits. Once the search is fitted, its ``cv_results_``.

        Returns
        -------
        results : dict or None
            None while no fit has finished.
        """
        run = self._run
        if (run is None or run.status == COMPLETED) and hasattr(self, "cv_results_"):
            return self.cv_results_
        return None if run is None else run.live.cv_results()

    def find_bests(self, n_top=5):
        """Return the best candidates so far, as the tutorial's ``find_bests``.

        Parameters
        ----------
        n_top : int, default=5
            How many candidates to return.

        Returns
        -------
        bests : list of (float, dict)
            ``(mean validation score, parameters)``, best first, over the
            finished splits of each candidate (for a multi-metric search,
            the ``refit`` metric).
        """
        results = self.partial_results()
        if results is None:
            return []
        means = np.asarray(results[f"mean_test_{self._report_metric()}"], dtype=float)
        best = best_first(means)[:n_top]
        return [(float(means[i]), results["params"][i]) for i in best]

    def report(self, n_top=5):
        """Return the tutorial's text report of the best candidates.

        Usable while the search runs and after it ended: a progress line,
        then for each of the ``n_top`` best candidates the mean validation
        (and train, with ``return_train_score=True``) score ± its standard
        error over the finished splits, and its parameters::

            Progress: 100% (100/100)
            Rank 1: validation: 0.99022 (+/-0.00151) train: 0.99896 (+/-0.00038):
            {'C': 1.0, 'gamma': 0.001}

        Parameters
        ----------
        n_top : int, default=5
            How many candidates to show.

        Returns
        -------
        report : str
        """
        progress, candidates, _ = self._report_content(n_top)
        return format_report(progress, candidates)

    def live_report(self, n_top=5):
        """Return the report as a table in Jupyter, refreshed on demand.

        Displayed in a Jupyter notebook, the returned object is an HTML
        table of the search's state at that moment: the progress line of
        :meth:`report`, then one row per best candidate with its rank, mean
        validation (and train) score ± standard error, finished splits and
        parameters. Its ``refresh()`` method recomputes it and updates in
        place every output where it is displayed, without adding one. Its
        text (``print``, a console) is :meth:`report`.

        Parameters
        ----------
        n_top : int, default=5
            How many candidates to show.

        Returns
        -------
        report : LiveReport
            Displays as the table; ``report.refresh()`` updates it. Outside
            a Jupyter kernel, ``refresh()`` does nothing.

        See Also
        --------
        report : The same report as text.

        Examples
        --------
        In a notebook cell, while the search runs in the background::

            search.fit_async(X, y)
            report = search.live_report()
            report  # shows the table

        then, in a later cell, update the table above::

            report.refresh()
        """
        return LiveReport(self, n_top)

    def __sklearn_is_fitted__(self):
        # Not while a fit runs (or after it was aborted or failed), even if
        # scikit-learn has set some fitted attributes already.
        run = self._run
        if run is not None and run.status != COMPLETED:
            return False
        return hasattr(self, "cv_results_")

    def _report_content(self, n_top):
        """Return the report's progress line, best candidates and metric, now.

        The candidates are None while no fit has finished.
        """
        progress = format_progress(*self.progress(), self._status())
        metric = self._report_metric()
        results = self.partial_results()
        if results is None:
            return progress, None, metric
        return progress, top_candidates(results, n_top, metric), metric

    def _status(self):
        run = self._run
        if run is None:
            return None
        ended = run.budget is not None and run.budget.ended
        if run.status == COMPLETED:
            return "time_budget ended it" if ended else None
        if run.status == FAILED:
            return f"failed: {type(run.error).__name__}: {run.error}"
        return f"{run.status}, time_budget ended it" if ended else run.status

    def _report_metric(self):
        if callable(self.scoring) or not isinstance(self.scoring, (list, tuple, dict)):
            return "score"
        if isinstance(self.refit, str):
            return self.refit
        return sorted(self.scoring)[0]
