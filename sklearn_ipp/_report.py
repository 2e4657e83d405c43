"""Text report of the best candidates, as the tutorial prints it."""

import numpy as np

__all__ = [
    "best_first",
    "finished_mean_std",
    "format_progress",
    "format_top_candidates",
    "split_scores",
]


def split_scores(cv_results, prefix):
    """Return the per-split scores ``{prefix}{i}_...`` as (n_candidates, n_splits).

    Parameters
    ----------
    cv_results : dict
        A search's ``cv_results_``, or the partial one of a running search,
        whose unfinished splits are masked.
    prefix : str
        ``"test_score"`` or ``"train_score"`` (or ``"test_<metric>"``...).

    Returns
    -------
    scores : MaskedArray of shape (n_candidates, n_splits)
        Masked where a split has not finished yet.
    """
    columns = []
    split = 0
    while f"split{split}_{prefix}" in cv_results:
        columns.append(np.ma.asarray(cv_results[f"split{split}_{prefix}"], dtype=float))
        split += 1
    return np.ma.column_stack(columns)


def finished_mean_std(scores, ddof=0):
    """Return the mean and standard deviation over the finished splits.

    Parameters
    ----------
    scores : MaskedArray of shape (n_candidates, n_splits)
        Masked where a split has not finished.
    ddof : int, default=0
        Delta degrees of freedom of the standard deviation.

    Returns
    -------
    mean, std : ndarray of shape (n_candidates,)
        NaN for a candidate with a failed fit (a NaN score), as in sklearn;
        std is NaN too with ``ddof`` or fewer finished splits.
    """
    counts = scores.count(axis=1)
    mean = scores.mean(axis=1).filled(np.nan)
    std = np.full(len(mean), np.nan)
    enough = counts > ddof
    if enough.any():
        std[enough] = scores[enough].std(axis=1, ddof=ddof).filled(np.nan)
    # numpy's masked mean says NaN for a NaN score, its masked std would not.
    failed = np.isnan(scores.filled(0.0)).any(axis=1)
    mean[failed] = std[failed] = np.nan
    return mean, std


def best_first(means):
    """Return candidate indices by decreasing mean, NaN (failed) last.

    Ties keep the search's order.
    """
    means = np.asarray(means, dtype=float)
    return np.argsort(np.where(np.isnan(means), np.inf, -means), kind="stable")


def _mean_and_sem(scores):
    """Mean over finished splits and its standard error (ddof=1), per candidate."""
    mean, std = finished_mean_std(scores, ddof=1)
    return mean, std / np.sqrt(scores.count(axis=1))


def _plain(params):
    """Parameters with numpy scalars shown as Python numbers."""
    return {
        name: value.item() if isinstance(value, np.generic) else value
        for name, value in params.items()
    }


def format_top_candidates(cv_results, n_top=5, metric="score"):
    """Format the ``n_top`` best candidates with mean ± standard error.

    Parameters
    ----------
    cv_results : dict
        A search's ``cv_results_``, or the partial one of a running search
        (means and standard errors are then over the finished splits).
    n_top : int, default=5
        How many candidates to show.
    metric : str, default="score"
        The metric name: ``"score"``, or a key of a multi-metric ``scoring``.

    Returns
    -------
    text : str
        One block per rank, best first (ties keep the search's order)::

            Rank 1: validation: 0.99022 (+/-0.00151) train: 0.99896 (+/-0.00038):
            {'C': 1.0, 'gamma': 0.001}

        The train part is left out when train scores were not computed.
    """
    test_mean, test_sem = _mean_and_sem(split_scores(cv_results, f"test_{metric}"))
    has_train = f"split0_train_{metric}" in cv_results
    if has_train:
        train_mean, train_sem = _mean_and_sem(
            split_scores(cv_results, f"train_{metric}")
        )
    # NaN scores (failed fits) rank last, like sklearn's rank_test_score.
    order = best_first(test_mean)
    blocks = []
    for rank, index in enumerate(order[:n_top], start=1):
        line = (
            f"Rank {rank}: validation: {test_mean[index]:.5f} "
            f"(+/-{test_sem[index]:.5f})"
        )
        if has_train:
            line += f" train: {train_mean[index]:.5f} (+/-{train_sem[index]:.5f})"
        blocks.append(f"{line}:\n{_plain(cv_results['params'][index])}")
    return "\n".join(blocks)


def format_progress(n_done, n_total, status=None):
    """Return the tutorial's progress line, ``Progress: 42% (042/100)``.

    Parameters
    ----------
    n_done, n_total : int
        Fits finished, and fits in the search (0 while not known yet).
    status : str or None, default=None
        Appended after a comma, such as ``"aborted"``.

    Returns
    -------
    line : str
    """
    percent = 100 * n_done // n_total if n_total else 0
    width = len(str(n_total))
    line = f"Progress: {percent:02d}% ({n_done:0{width}d}/{n_total})"
    return line if status is None else f"{line}, {status}"
