"""Text report of the best candidates, as the tutorial prints it."""

import numpy as np

__all__ = ["format_top_candidates", "split_scores"]


def split_scores(cv_results, prefix):
    """Return the per-split scores ``{prefix}{i}_...`` as (n_candidates, n_splits).

    Parameters
    ----------
    cv_results : dict
        A search's ``cv_results_``.
    prefix : str
        ``"test_score"`` or ``"train_score"`` (or ``"test_<metric>"``...).

    Returns
    -------
    scores : ndarray of shape (n_candidates, n_splits)
    """
    columns = []
    split = 0
    while f"split{split}_{prefix}" in cv_results:
        columns.append(np.asarray(cv_results[f"split{split}_{prefix}"], dtype=float))
        split += 1
    return np.column_stack(columns)


def _mean_and_sem(scores):
    """Mean over splits and its standard error (ddof=1), per candidate."""
    n_splits = scores.shape[1]
    mean = scores.mean(axis=1)
    if n_splits < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, scores.std(axis=1, ddof=1) / np.sqrt(n_splits)


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
        A search's ``cv_results_``, complete or partial.
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
    order = np.argsort(
        np.where(np.isnan(test_mean), -np.inf, -test_mean), kind="stable"
    )
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
