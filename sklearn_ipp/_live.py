"""Results of a search while it runs: progress and partial ``cv_results_``.

The backend hands every finished ``_fit_and_score`` result to
``LiveResults.add`` as it arrives; the search builds from them, at any time, a
``cv_results_`` of the fits finished so far (the tutorial's ``find_bests``).
"""

import threading

import numpy as np
from scipy.stats import rankdata

from ._report import finished_mean_std

__all__ = ["LiveResults", "rank_by_mean"]


class LiveResults:
    """Collect the results of a search's fits as they finish, thread-safely.

    Parameters
    ----------
    return_train_score : bool
        Whether the fits compute train scores (the search's parameter).
    error_score : 'raise' or float
        The score of a failed fit (the search's parameter).
    """

    def __init__(self, return_train_score, error_score):
        self._lock = threading.Lock()
        self._return_train_score = return_train_score
        self._error_score = error_score
        self._candidates = {}  # (call, candidate index) -> (params, {split: result})
        self._n_splits = {}  # call -> number of splits
        self.n_done = 0
        self.n_total = 0

    def add(self, call, arguments, result):
        """Record one finished fit (the backend's ``on_result``)."""
        candidate = arguments.get("candidate_progress")
        split = arguments.get("split_progress")
        if candidate is None or split is None:
            return  # not a search's fit
        with self._lock:
            _, splits = self._candidates.setdefault(
                (call, candidate[0]), (arguments["parameters"], {})
            )
            if split[0] not in splits:
                self.n_done += 1
            splits[split[0]] = result
            self._n_splits[call] = split[1]

    def set_progress(self, n_done, n_total):
        """Record the fits handed to the backend (its ``on_progress``).

        ``n_done`` counts failed tasks too, such as those dropped by an
        abort: the finished fits are counted by ``add``.
        """
        self.n_total = n_total

    def cv_results(self):
        """Return a ``cv_results_`` of the candidates with a finished fit.

        The keys and their meaning are those of scikit-learn's
        ``cv_results_``; candidates are in the search's order. Split columns
        are masked arrays in which the splits not finished yet are masked;
        means, standard deviations and ranks are over the finished splits.

        Returns
        -------
        results : dict of str -> ndarray or list, or None
            None while no fit has finished.
        """
        with self._lock:
            if not self._candidates:
                return None
            keys = sorted(self._candidates)
            candidates = [
                (self._candidates[k][0], dict(self._candidates[k][1])) for k in keys
            ]
            n_splits = max(self._n_splits.values())
        return _format_partial(
            candidates, n_splits, self._return_train_score, self._error_score
        )


def _format_partial(candidates, n_splits, return_train_score, error_score):
    params = [candidate_params for candidate_params, _ in candidates]
    results = {}
    finished = np.zeros((len(candidates), n_splits), dtype=bool)
    for row, (_, splits) in enumerate(candidates):
        finished[row, list(splits)] = True

    def column(name, metric=None):
        values = np.full((len(candidates), n_splits), np.nan)
        for row, (_, splits) in enumerate(candidates):
            for split, result in splits.items():
                values[row, split] = _value(result, name, metric, error_score)
        return np.ma.MaskedArray(values, mask=~finished)

    def store(name, values, splits=False, rank=False):
        if splits:
            for split in range(n_splits):
                results[f"split{split}_{name}"] = values[:, split]
        # Over the finished splits; a failed fit makes them NaN, as in sklearn.
        results[f"mean_{name}"], results[f"std_{name}"] = finished_mean_std(values)
        if rank:
            results[f"rank_{name}"] = rank_by_mean(results[f"mean_{name}"])

    store("fit_time", column("fit_time"))
    store("score_time", column("score_time"))
    names = sorted({name for candidate_params in params for name in candidate_params})
    for name in names:
        values = np.ma.MaskedArray(np.empty(len(params), dtype=object), mask=True)
        for row, candidate_params in enumerate(params):
            if name in candidate_params:
                values[row] = candidate_params[name]
        results[f"param_{name}"] = values
    results["params"] = params
    for metric in _metrics(candidates):
        suffix = "score" if metric is None else metric
        store(f"test_{suffix}", column("test_scores", metric), splits=True, rank=True)
        if return_train_score:
            store(f"train_{suffix}", column("train_scores", metric), splits=True)
    return results


def _metrics(candidates):
    """Return the scorer names, [None] for a single metric."""
    for _, splits in candidates:
        for result in splits.values():
            if isinstance(result["test_scores"], dict):
                return sorted(result["test_scores"])
    return [None]


def _value(result, name, metric, error_score):
    value = result[name]
    if metric is None:
        return value
    # A failed fit of a multi-metric search has one score for every metric.
    return value[metric] if isinstance(value, dict) else error_score


def rank_by_mean(means):
    """Rank as sklearn ranks ``mean_test_*``: NaN means tie with the worst."""
    means = np.asarray(means, dtype=float)
    if np.isnan(means).all():
        return np.ones(len(means), dtype=np.int32)
    filled = np.where(np.isnan(means), np.nanmin(means) - 1, means)
    return rankdata(-filled, method="min").astype(np.int32)
