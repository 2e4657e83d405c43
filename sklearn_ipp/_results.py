"""Results of a search while it runs, and how they are shown.

``LiveResults`` collects every finished ``_fit_and_score`` result as the
backend hands it over (its ``on_result``) and builds from them, at any time,
a ``cv_results_`` of the fits finished so far (the tutorial's
``find_bests``). ``top_candidates`` computes the report's rows, which
``format_progress`` and ``format_candidates`` write as the tutorial's
text report; ``FitProgress`` is the progress bar of finished fits (tqdm,
which ipyparallel already needs), a widget in a Jupyter kernel with
ipywidgets.
"""

import os
import sys
import threading
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata
from tqdm.std import tqdm

__all__ = [
    "FitProgress",
    "LiveResults",
    "TopCandidate",
    "best_first",
    "finished_mean_std",
    "format_candidates",
    "format_progress",
    "format_report",
    "in_kernel",
    "rank_by_mean",
    "split_scores",
    "top_candidates",
]


# The report ----------------------------------------------------------------


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


class TopCandidate(NamedTuple):
    """One candidate of the report, with its scores over its finished splits."""

    rank: int
    params: dict  # numpy scalars as Python numbers
    test_mean: float
    test_sem: float  # standard error of the mean
    train_mean: float | None  # None when train scores were not computed
    train_sem: float | None
    n_finished: int  # splits finished
    n_splits: int


def top_candidates(cv_results, n_top=5, metric="score"):
    """Return the ``n_top`` best candidates with mean ± standard error.

    Parameters
    ----------
    cv_results : dict
        A search's ``cv_results_``, or the partial one of a running search
        (means and standard errors are then over the finished splits).
    n_top : int, default=5
        How many candidates to return.
    metric : str, default="score"
        The metric name: ``"score"``, or a key of a multi-metric ``scoring``.

    Returns
    -------
    candidates : list of TopCandidate
        Best first; ties keep the search's order and NaN scores (failed
        fits) rank last, like sklearn's ``rank_test_score``.
    """
    test_scores = split_scores(cv_results, f"test_{metric}")
    test_mean, test_sem = _mean_and_sem(test_scores)
    n_finished = test_scores.count(axis=1)
    has_train = f"split0_train_{metric}" in cv_results
    if has_train:
        train_mean, train_sem = _mean_and_sem(
            split_scores(cv_results, f"train_{metric}")
        )
    candidates = []
    for rank, index in enumerate(best_first(test_mean)[:n_top], start=1):
        candidates.append(
            TopCandidate(
                rank=rank,
                params=_plain(cv_results["params"][index]),
                test_mean=float(test_mean[index]),
                test_sem=float(test_sem[index]),
                train_mean=float(train_mean[index]) if has_train else None,
                train_sem=float(train_sem[index]) if has_train else None,
                n_finished=int(n_finished[index]),
                n_splits=test_scores.shape[1],
            )
        )
    return candidates


def format_report(progress, candidates):
    """Write the tutorial's text report: the progress line, then the candidates.

    Parameters
    ----------
    progress : str
        The progress line (:func:`format_progress`).
    candidates : list of TopCandidate or None
        The best candidates (:func:`top_candidates`); None while no fit has
        finished, for the progress line alone.

    Returns
    -------
    report : str
    """
    if candidates is None:
        return progress
    return f"{progress}\n{format_candidates(candidates)}"


def format_candidates(candidates):
    """Write the rows of :func:`top_candidates` as the tutorial's text blocks.

    Parameters
    ----------
    candidates : list of TopCandidate

    Returns
    -------
    text : str
        One block per rank, best first::

            Rank 1: validation: 0.99022 (+/-0.00151) train: 0.99896 (+/-0.00038):
            {'C': 1.0, 'gamma': 0.001}

        The train part is left out when train scores were not computed.
    """
    blocks = []
    for c in candidates:
        line = f"Rank {c.rank}: validation: {c.test_mean:.5f} (+/-{c.test_sem:.5f})"
        if c.train_mean is not None:
            line += f" train: {c.train_mean:.5f} (+/-{c.train_sem:.5f})"
        blocks.append(f"{line}:\n{c.params}")
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


# Partial results -----------------------------------------------------------


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
        # False once the fits that finish are no longer new (see time_budget).
        self.recording = True

    def add(self, call, arguments, result):
        """Record one finished fit (the backend's ``on_result``)."""
        candidate = arguments.get("candidate_progress")
        split = arguments.get("split_progress")
        if candidate is None or split is None or not self.recording:
            return  # not a search's fit, or one seen already
        with self._lock:
            _, splits = self._candidates.setdefault(
                (call, candidate[0]), (arguments["parameters"], {})
            )
            if split[0] not in splits:
                self.n_done += 1
            splits[split[0]] = result
            self._n_splits[call] = split[1]

    def finished_in(self, call):
        """Return the candidates of ``call`` finished on every split, and fit times.

        The candidates by their index in the call, sorted; the ``fit_time``
        of every fit of the call that finished.
        """
        with self._lock:
            n_splits = self._n_splits.get(call)
            fits = {
                candidate: splits
                for (number, candidate), (_, splits) in self._candidates.items()
                if number == call
            }
        complete = sorted(c for c, splits in fits.items() if len(splits) == n_splits)
        times = [r["fit_time"] for splits in fits.values() for r in splits.values()]
        return complete, times

    def set_total(self, n_total):
        """Record how many fits were handed to the backend so far.

        The finished ones are counted by ``add``: the backend's count of
        finished tasks includes failed ones, such as those dropped by an
        abort. Fits evaluated again from the checkpoint, once ``recording``
        is off, are not new: they are not counted.
        """
        if self.recording:
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


# The progress bar ----------------------------------------------------------

# Without verbose, a bar appears only for a search still running after this
# many seconds, so short searches stay quiet.
QUIET_DELAY_SECONDS = 10.0

# Where the bar's text is no terminal (a log file, a captured stream), each
# update is kept as written: update it this often at most, not ten times a
# second as on a terminal, so that a log holds a few lines per search.
LOG_INTERVAL_SECONDS = 10.0


def in_kernel():
    """Whether this process is a Jupyter kernel, whose outputs go to a notebook.

    IPython is not imported for this: a process that has not imported it is
    no kernel.
    """
    ipython = sys.modules.get("IPython")
    shell = None if ipython is None else ipython.get_ipython()
    return getattr(shell, "kernel", None) is not None


def _bar_class():
    """Return tqdm's widget bar in a kernel with ipywidgets, else its text bar.

    Not ``tqdm.auto``: in a kernel without ipywidgets it warns "IProgress not
    found" when imported, and older tqdm (4.62, for one) picks the widget bar
    anyway, which raises ImportError when made.
    """
    # Qt consoles and Spyder run kernels that show no widgets (tqdm.auto's test).
    qt_console = any(
        name == "QT_API" or name.startswith("SPYDER") for name in os.environ
    )
    if in_kernel() and not qt_console:
        # tqdm.notebook imports without ipywidgets, with IProgress None.
        from tqdm.notebook import IProgress
        from tqdm.notebook import tqdm as widget_bar

        if IProgress is not None:
            return widget_bar
    return tqdm


def _on_screen():
    """Whether the bar is seen as it changes: a terminal, or a kernel's output."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return in_kernel() or bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class FitProgress:
    """Count finished fits on a tqdm bar, safely from any thread.

    The bar is a widget in a Jupyter kernel where ipywidgets can be
    imported, and text otherwise.

    Parameters
    ----------
    verbose : int
        The search's ``verbose``: above 0 the bar shows at once, else only
        once the search has run for ``QUIET_DELAY_SECONDS``.
    description : str, default="fits"
        Text before the bar.
    delayed : bool, default=True
        Whether the bar shows after the delay when ``verbose`` is 0; if
        False, it shows only with ``verbose``.
    """

    def __init__(self, verbose, description="fits", delayed=True):
        self._lock = threading.Lock()
        self._verbose = verbose
        self._delayed = delayed
        self._description = description
        self._bar = None  # made at the first result, after sklearn's own output

    def update(self, n_done, n_submitted):
        """Show ``n_done`` of ``n_submitted`` fits finished."""
        with self._lock:
            if self._bar is None:
                if not (self._verbose > 0 or self._delayed):
                    return
                self._bar = _bar_class()(
                    total=n_submitted,
                    desc=self._description,
                    unit="fit",
                    delay=0 if self._verbose > 0 else QUIET_DELAY_SECONDS,
                    # On a terminal or in Jupyter (whose streams are no
                    # terminal); in logs only when asked for.
                    disable=False if self._verbose > 0 or in_kernel() else None,
                    leave=self._verbose > 0,
                    mininterval=0.1 if _on_screen() else LOG_INTERVAL_SECONDS,
                )
            if self._bar.total != n_submitted:
                self._bar.total = n_submitted
            self._bar.update(n_done - self._bar.n)

    def close(self):
        """Remove or finish the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
