"""``time_budget``: a search that must end by a deadline ends with what it has.

At the deadline the running call of the search (its ``Parallel`` over the
candidates and splits) is stopped with ``BudgetReached``: no fit starts, the
running ones are stopped. The candidates whose every split had finished are
then evaluated again by scikit-learn's own ``evaluate_candidates``, their
fits coming back from the search's checkpoint without running, so that
``cv_results_``, ``best_*`` and the refit are scikit-learn's, computed from
them alone, in the search's order. A halving search ends with the iteration
that was running; later ones do not start.

The searches run their fits candidate after candidate when a budget is set
(the data stored whole, see ``_stores_whole_data``), so that a budget ends
with whole candidates rather than many half-done ones.
"""

import threading
import time
import warnings

import numpy as np

from ._exceptions import TimeBudgetError

__all__ = ["BudgetEnded", "BudgetReached", "TimeBudget"]


class BudgetReached(Exception):
    """Ends the call that runs at the deadline (its tasks fail with it)."""

    def __init__(self):
        super().__init__("time_budget reached: the call was stopped.")


class BudgetEnded(Exception):
    """Ends ``_run_search`` when a call would start after the deadline."""


class TimeBudget:
    """The deadline of one fit of a search, and what happens at it.

    Parameters
    ----------
    seconds : float
        The search's ``time_budget``, counted from now.
    """

    def __init__(self, seconds):
        self.seconds = seconds
        self.start = time.monotonic()
        self.ended = False  # the deadline has passed
        # Candidates evaluated by each evaluate_candidates call that returned.
        self.evaluated = []
        self._warned = False  # that the budget ended the search
        self._timer = None
        self._lock = threading.Lock()

    def arm(self, stop_calls):
        """Call ``stop_calls(BudgetReached())`` at the deadline.

        It fails the running call's tasks, and those submitted after it,
        until the complete candidates are evaluated again.
        """
        delay = max(0.0, self.start + self.seconds - time.monotonic())
        self._timer = threading.Timer(delay, self._reach, (stop_calls,))
        self._timer.daemon = True
        self._timer.name = "sklearn_ipp-time-budget"
        self._timer.start()

    def disarm(self):
        """Stop counting: the candidates are evaluated (the refit is not counted)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _reach(self, stop_calls):
        with self._lock:
            self.ended = True
        stop_calls(BudgetReached())

    def evaluate(self, evaluate_candidates, candidate_params, args, kwargs, finish):
        """Run scikit-learn's ``evaluate_candidates`` within the budget.

        ``finish()`` returns the indices, in ``candidate_params``, of the
        candidates whose every split finished in the call that the deadline
        stopped, and the ``fit_time`` of each fit that finished in it, after
        making the fits of the next call come back from the checkpoint.
        Returns the results, of every candidate or of the complete ones.
        """
        if self.ended:
            self._end(len(candidate_params), [])
        try:
            results = evaluate_candidates(candidate_params, *args, **kwargs)
            n_evaluated = len(candidate_params)
        except BudgetReached:
            complete, fit_times = finish()
            if not complete:
                self._end(len(candidate_params), fit_times)
            args, kwargs = _only(complete, args, kwargs)
            results = evaluate_candidates(
                [candidate_params[i] for i in complete], *args, **kwargs
            )
            warnings.warn(
                f"time_budget={self.seconds:g} s ended the search: "
                f"{len(complete)} of {len(candidate_params)} candidates were "
                "evaluated on every split; cv_results_ and best_* come from "
                "them.",
                UserWarning,
                stacklevel=2,
            )
            self._warned = True
            n_evaluated = len(complete)
        self.evaluated.append(n_evaluated)
        return results

    def _end(self, n_candidates, fit_times):
        """End the search with the calls that returned, or fail without any."""
        if not self.evaluated:
            raise self.error(n_candidates, fit_times) from None
        if self._warned:
            raise BudgetEnded from None
        self._warned = True
        warnings.warn(
            f"time_budget={self.seconds:g} s ended the search after "
            f"{len(self.evaluated)} iteration(s); cv_results_ and best_* come "
            "from them.",
            UserWarning,
            stacklevel=3,
        )
        raise BudgetEnded from None

    def error(self, n_candidates, fit_times):
        """Return the error of a search that evaluated no candidate in time."""
        if fit_times:
            said = (
                f"{len(fit_times)} fits had finished, in "
                f"{np.mean(fit_times):.3g} s on average"
            )
        else:
            said = "no fit had finished"
        return TimeBudgetError(
            f"time_budget={self.seconds:g} s ended the search before any of "
            f"its {n_candidates} candidates was evaluated on every split "
            f"({said}): raise time_budget, or search fewer candidates or splits."
        )


def _only(indices, args, kwargs):
    """``evaluate_candidates``'s other arguments, for the candidates kept.

    ``more_results`` (halving's ``iter`` and ``n_resources``) has a value per
    candidate. scikit-learn's callback context (1.9 and later) already has
    the subtasks of the first evaluation, numbered as these would be: the
    fits, which only come back from the checkpoint, get none.
    """
    if kwargs.get("callback_ctx") is not None:
        kwargs = {**kwargs, "callback_ctx": None}
    args = list(args)
    more = args[1] if len(args) >= 2 else kwargs.get("more_results")
    if more:
        more = {
            key: list(np.asarray(values, dtype=object)[indices])
            for key, values in more.items()
        }
        if len(args) >= 2:
            args[1] = more
        else:
            kwargs = {**kwargs, "more_results": more}
    return tuple(args), kwargs
