"""A fit that runs past ``fit_timeout`` is stopped and scored as failed.

An engine stops a task at its time limit (``_worker._TimeLimit``) and replies
``(TIMED_OUT, seconds)``; the client then sends the task again as
:func:`fail_fit`, which runs scikit-learn's own ``_fit_and_score`` with the
estimator's ``fit`` raising :class:`FitTimeoutError` at once. The scores,
``fit_error``, the ``FitFailedWarning`` and what ``error_score="raise"`` does
are then scikit-learn's for a fit that raised, whatever the version; only
``fit_time`` is set to the time the fit ran. It runs on an engine, where the
fold is memory-mapped, so that the client never copies a training set.

A fit inside compiled code that does not return to Python does not see the
engine's signal: the client, which knows when the task started, ends its
engine (see ``Messenger.take_overdue``) and sends the task again all the same.
"""

import numbers

from ._exceptions import FitTimeoutError
from ._fit_and_score import fit_and_score_arguments

__all__ = ["check_fit_timeout", "fail_fit", "fit_timeout_error"]


def fit_timeout_error(limit, engine_id, hostname):
    """Return the error of a fit stopped at ``limit`` seconds on an engine."""
    return FitTimeoutError(
        f"fit exceeded fit_timeout={limit:g} s on engine {engine_id} "
        f"(host {hostname}) and was stopped"
    )


def fail_fit(function, error, seconds, *args, **kwargs):
    """Run the ``_fit_and_score`` task ``function(*args, **kwargs)`` failing.

    The estimator's ``fit`` raises ``error`` at once; the result's
    ``fit_time`` is ``seconds``. With ``error_score="raise"`` the error
    propagates, as scikit-learn's does.
    """
    estimator = fit_and_score_arguments(function, args, kwargs)["estimator"]

    def fit(*fit_args, **fit_kwargs):
        # The estimator goes back in the result with return_estimator:
        # without this stand-in.
        del estimator.fit
        raise error

    estimator.fit = fit
    result = function(*args, **kwargs)
    result["fit_time"] = seconds
    return result


def check_fit_timeout(value, name="fit_timeout"):
    """Return ``value`` as a float of seconds, or None; else a ValueError.

    Infinity is no limit: None.
    """
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0:
        return None if value == float("inf") else float(value)
    raise ValueError(
        f"{name} must be None or a number of seconds greater than 0, got {value!r}."
    )
