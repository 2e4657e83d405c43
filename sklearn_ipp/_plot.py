"""Plots of search results and learning curves, as scikit-learn Displays.

matplotlib is an optional dependency (the ``plot`` extra),
imported only when something is drawn.
"""

import numbers
from collections.abc import Mapping

import numpy as np
from sklearn.model_selection import LearningCurveDisplay as _SklearnLearningCurve
from sklearn.model_selection import ValidationCurveDisplay as _SklearnValidationCurve

from ._backend import DEFAULT_RETRIES
from ._cluster import DEFAULT_TIMEOUT
from ._learning_curve import curve_on_cluster
from ._results import split_scores

__all__ = [
    "LearningCurveDisplay",
    "ParameterBoxplotDisplay",
    "ScoreHeatmapDisplay",
    "ValidationCurveDisplay",
]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed: install it "
            "with `pip install matplotlib`, or sklearn_ipp's plot extra "
            '(`pip install ".[plot]"` in its checkout).'
        ) from exc
    return plt


def _search_results(search_or_results, metric):
    """``(cv_results, metric)`` of a search (running or not) or a results dict.

    ``metric`` None means the search's own (its ``refit`` metric), or the
    only one of the results.
    """
    if isinstance(search_or_results, dict):
        return search_or_results, _metric_of(search_or_results, metric)
    partial = getattr(search_or_results, "partial_results", None)
    results = partial() if partial is not None else None
    if results is None:
        results = getattr(search_or_results, "cv_results_", None)
    if results is None:
        raise ValueError(
            f"{type(search_or_results).__name__} has no results yet: fit it "
            "first, or wait until some of its fits have finished."
        )
    report_metric = getattr(search_or_results, "_report_metric", None)
    if metric is None and report_metric is not None:
        metric = report_metric()
    return results, _metric_of(results, metric)


def _metric_of(results, metric):
    if metric is not None:
        key = f"mean_test_{metric}"
    elif "mean_test_score" in results:
        return "score"
    else:
        names = sorted(
            k[len("mean_test_") :] for k in results if k.startswith("mean_test_")
        )
        raise ValueError(
            "These results have several metrics "
            f"({', '.join(names)}): pass metric= one of them."
        )
    if key not in results:
        raise ValueError(f"The results have no metric {metric!r} ({key} is missing).")
    return metric


def _varying_parameters(params):
    """Names of the parameters taking more than one value, in first-seen order."""
    names = []
    for candidate in params:
        names.extend(name for name in candidate if name not in names)
    return [name for name in names if len(_distinct_values(params, name)) > 1]


def _distinct_values(params, name):
    """Return the values of a parameter, sorted when they are all numbers."""
    return _unique(candidate[name] for candidate in params if name in candidate)


def _unique(values):
    """Return ``values`` once each (by repr), sorted when they are all numbers."""
    unique = {}
    for value in values:
        unique.setdefault(repr(value), value)
    distinct = list(unique.values())
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in distinct):
        distinct.sort()
    return distinct


def _grid_values(search, name):
    """Return the values a search's grid lists for ``name``, else none.

    A running or stopped search has results for some candidates only: the
    heatmap shows the whole grid, where a blank cell is a candidate not
    evaluated (yet), rather than only the values that some result has. None
    are listed when ``name`` is drawn from a distribution or the search has
    no grid (a ``cv_results_`` dict).
    """
    grid = getattr(search, "param_grid", None)
    if grid is None:
        grid = getattr(search, "param_distributions", None)
    if grid is None:
        return []
    values = []
    for space in [grid] if isinstance(grid, Mapping) else grid:
        listed = space.get(name, ()) if isinstance(space, Mapping) else ()
        if hasattr(listed, "rvs") or isinstance(listed, (str, bytes)):
            return []
        try:
            values.extend(listed)
        except TypeError:  # neither a list nor a distribution: not a grid
            return []
    return values


def _label(value):
    if isinstance(value, numbers.Real) and not isinstance(
        value, (bool, numbers.Integral)
    ):
        return f"{float(value):g}"
    return str(value)


def _same(a, b):
    return repr(a) == repr(b)


class ParameterBoxplotDisplay:
    """Score distribution for each value of each parameter of a search.

    The tutorial's ``boxplot_parameters``: one subplot per parameter that
    takes several values; for each value, a box of the validation scores of
    every finished split of every candidate with that value (and of the
    train scores, next to it, when asked for). Create it with
    :meth:`from_search`.

    Parameters
    ----------
    param_names : list of str
        The parameters, one subplot each.
    param_values : list of list
        For each parameter, its values (one box each).
    test_scores : list of list of ndarray
        For each parameter and value, the validation scores.
    train_scores : list of list of ndarray or None, default=None
        Likewise for the train scores; None to leave them out.
    score_name : str, default="score"
        The y-axis label.

    Attributes
    ----------
    axes_ : ndarray of matplotlib Axes
        One per parameter.
    figure_ : matplotlib Figure
    boxplots_ : list of dict
        What ``Axes.boxplot`` returned, per parameter (validation boxes).
    train_boxplots_ : list of dict or None
        Likewise for the train boxes.
    """

    def __init__(
        self,
        *,
        param_names,
        param_values,
        test_scores,
        train_scores=None,
        score_name="score",
    ):
        self.param_names = param_names
        self.param_values = param_values
        self.test_scores = test_scores
        self.train_scores = train_scores
        self.score_name = score_name

    @classmethod
    def from_search(
        cls, search, *, display_train=False, metric=None, score_name=None, ax=None
    ):
        """Plot the score distribution per parameter value of a search.

        Parameters
        ----------
        search : fitted or running search, or a ``cv_results_`` dict
            Uses the fits finished so far while a search runs.
        display_train : bool, default=False
            Also show train scores (the search needs
            ``return_train_score=True``).
        metric : str or None, default=None
            For a multi-metric search, which one; None uses the search's
            ``refit`` metric.
        score_name : str or None, default=None
            The score's name on the y axis, such as ``"accuracy"``; None uses
            the metric's name.
        ax : array of matplotlib Axes or None, default=None
            One per varying parameter; None makes a new figure.

        Returns
        -------
        display : ParameterBoxplotDisplay
        """
        results, metric = _search_results(search, metric)
        if display_train and f"split0_train_{metric}" not in results:
            raise ValueError(
                "display_train=True needs train scores: fit the search with "
                "return_train_score=True."
            )
        params = results["params"]
        names = _varying_parameters(params)
        if not names:
            raise ValueError(
                "No parameter of the search takes more than one value: there "
                "is nothing to compare."
            )
        test = split_scores(results, f"test_{metric}")
        train = split_scores(results, f"train_{metric}") if display_train else None
        values, test_scores, train_scores = [], [], []
        for name in names:
            values.append(_distinct_values(params, name))
            rows = [
                [i for i, p in enumerate(params) if name in p and _same(p[name], v)]
                for v in values[-1]
            ]
            test_scores.append([test[r].compressed() for r in rows])
            if train is not None:
                train_scores.append([train[r].compressed() for r in rows])
        display = cls(
            param_names=names,
            param_values=values,
            test_scores=test_scores,
            train_scores=train_scores if display_train else None,
            score_name=metric if score_name is None else score_name,
        )
        return display.plot(ax=ax)

    def plot(self, ax=None):
        """Draw the boxes.

        Parameters
        ----------
        ax : array of matplotlib Axes or None, default=None
            One per parameter; None makes a new figure.

        Returns
        -------
        display : ParameterBoxplotDisplay
        """
        plt = _pyplot()
        n_params = len(self.param_names)
        if ax is None:
            # One y scale for all: the parameters are compared with each other.
            _, ax = plt.subplots(
                1,
                n_params,
                figsize=(1.0 + 4.0 * n_params, 4.0),
                sharey=True,
                squeeze=False,
                layout="constrained",
            )
        axes = np.ravel(ax)
        if len(axes) != n_params:
            raise ValueError(f"ax must hold {n_params} Axes, one per parameter.")
        self.boxplots_, self.train_boxplots_ = [], [] if self.train_scores else None
        for index, (axis, name) in enumerate(zip(axes, self.param_names, strict=True)):
            labels = [_label(v) for v in self.param_values[index]]
            n_values = len(labels)
            width = 0.35 if self.train_scores else 0.6
            shift = width / 2 if self.train_scores else 0.0
            positions = np.arange(1, n_values + 1)
            self.boxplots_.append(
                _boxes(axis, self.test_scores[index], positions - shift, width, "C0")
            )
            if self.train_scores:
                self.train_boxplots_.append(
                    _boxes(
                        axis, self.train_scores[index], positions + shift, width, "C1"
                    )
                )
            axis.set_xticks(positions)
            axis.set_xticklabels(labels, rotation=45 if n_values > 6 else 0)
            axis.set_xlabel(name)
            axis.grid(axis="y", alpha=0.3)
            if index == 0:
                kind = "" if self.train_scores else "validation "
                axis.set_ylabel(f"{kind}{self.score_name}")
        if self.train_scores:
            # One legend for the figure, beside the boxes rather than on them.
            axes[0].figure.legend(
                [self.boxplots_[0]["boxes"][0], self.train_boxplots_[0]["boxes"][0]],
                ["validation", "train"],
                loc="outside right upper",
            )
        self.axes_ = axes
        self.figure_ = axes[0].figure
        return self


def _boxes(axis, scores, positions, width, color):
    """Draw one box per value, filled with ``color``; return Axes.boxplot's dict."""
    return axis.boxplot(
        scores,
        positions=positions,
        widths=width,
        patch_artist=True,
        boxprops={"facecolor": color, "alpha": 0.6},
        # Black medians show on both colours; small fliers do not hide boxes.
        medianprops={"color": "black"},
        flierprops={"marker": "o", "markersize": 3, "alpha": 0.5},
    )


class ScoreHeatmapDisplay:
    """Mean validation score over a grid of two parameters.

    Create it with :meth:`from_search`.

    Parameters
    ----------
    scores : ndarray of shape (n_y_values, n_x_values)
        Mean validation score; NaN where no fit of that pair has finished.
    x_param, y_param : str
        The parameters along the columns and the rows.
    x_values, y_values : list
        Their values.
    score_name : str, default="score"
        The colour bar's label.

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    im_ : matplotlib AxesImage
    colorbar_ : matplotlib Colorbar
    text_ : ndarray of matplotlib Text, of shape (n_y_values, n_x_values)
        The score written in each cell.
    """

    def __init__(
        self, *, scores, x_param, y_param, x_values, y_values, score_name="score"
    ):
        self.scores = scores
        self.x_param, self.y_param = x_param, y_param
        self.x_values, self.y_values = x_values, y_values
        self.score_name = score_name

    @classmethod
    def from_search(
        cls,
        search,
        *,
        x_param=None,
        y_param=None,
        metric=None,
        score_name=None,
        ax=None,
        cmap="viridis",
    ):
        """Plot the mean validation score of a two-parameter grid.

        Parameters
        ----------
        search : fitted or running search, or a ``cv_results_`` dict
            Uses the fits finished so far while a search runs.
        x_param, y_param : str or None, default=None
            The parameters along x and y; None for the search's two varying
            parameters, in the order of its grid.
        metric : str or None, default=None
            For a multi-metric search, which one.
        score_name : str or None, default=None
            The score's name on the colour bar, such as ``"accuracy"``; None
            uses the metric's name.
        ax : matplotlib Axes or None, default=None
            Where to draw; None makes a new figure.
        cmap : str or matplotlib Colormap, default="viridis"
            The colour map.

        Returns
        -------
        display : ScoreHeatmapDisplay
        """
        results, metric = _search_results(search, metric)
        params = results["params"]
        varying = _varying_parameters(params)
        if x_param is None and y_param is None:
            if len(varying) != 2:
                raise ValueError(
                    "A heatmap shows two parameters; this search varies "
                    f"{len(varying)} ({', '.join(varying) or 'none'}): pass "
                    "x_param= and y_param=."
                )
            y_param, x_param = varying
        elif x_param is None or y_param is None:
            raise ValueError("Pass both x_param= and y_param=, or neither.")
        for name in (x_param, y_param):
            if name not in varying:
                raise ValueError(
                    f"{name!r} is not a parameter that the search varies "
                    f"({', '.join(varying)})."
                )
        # A search that did not run every candidate still shows its whole
        # grid: the cells not evaluated stay blank.
        x_values, y_values = (
            _unique([*_grid_values(search, name), *_distinct_values(params, name)])
            for name in (x_param, y_param)
        )
        means = np.asarray(results[f"mean_test_{metric}"], dtype=float)
        scores = np.full((len(y_values), len(x_values)), np.nan)
        for row, y_value in enumerate(y_values):
            for column, x_value in enumerate(x_values):
                matching = [
                    means[i]
                    for i, p in enumerate(params)
                    if _same(p.get(x_param), x_value) and _same(p.get(y_param), y_value)
                ]
                if len(matching) == 1:
                    scores[row, column] = matching[0]
                elif matching:
                    # Other parameters vary too: the best over them.
                    scores[row, column] = np.nanmax(matching)
        display = cls(
            scores=scores,
            x_param=x_param,
            y_param=y_param,
            x_values=x_values,
            y_values=y_values,
            score_name=metric if score_name is None else score_name,
        )
        return display.plot(ax=ax, cmap=cmap)

    def plot(self, ax=None, cmap="viridis"):
        """Draw the heatmap.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Where to draw; None makes a new figure.
        cmap : str or matplotlib Colormap, default="viridis"
            The colour map.

        Returns
        -------
        display : ScoreHeatmapDisplay
        """
        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots(layout="constrained")
        self.im_ = ax.imshow(self.scores, cmap=cmap, origin="lower", aspect="auto")
        # Cells without a score (not evaluated) show the background: grey,
        # so that they read as missing rather than as a colour of the scale.
        ax.set_facecolor("0.9")
        n_rows, n_columns = self.scores.shape
        fontsize = 10 if max(n_rows, n_columns) <= 6 else 8
        self.colorbar_ = ax.figure.colorbar(self.im_, ax=ax)
        self.colorbar_.set_label(f"mean validation {self.score_name}")
        ax.set_xticks(np.arange(len(self.x_values)))
        ax.set_xticklabels([_label(v) for v in self.x_values])
        ax.set_yticks(np.arange(len(self.y_values)))
        ax.set_yticklabels([_label(v) for v in self.y_values])
        ax.set_xlabel(self.x_param)
        ax.set_ylabel(self.y_param)
        self.text_ = np.empty(self.scores.shape, dtype=object)
        for (row, column), score in np.ndenumerate(self.scores):
            label = "" if np.isnan(score) else f"{score:.3f}"
            # Dark text on light cells, light text on dark ones.
            red, green, blue, _ = self.im_.cmap(self.im_.norm(score))
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            self.text_[row, column] = ax.text(
                column,
                row,
                label,
                ha="center",
                va="center",
                color="black" if light else "white",
                fontsize=fontsize,
            )
        self.ax_ = ax
        self.figure_ = ax.figure
        return self


class _ClusterCurveDisplay:
    """What the curve displays add to scikit-learn's: fits on the cluster."""

    @staticmethod
    def _on_cluster(client, X, store_dir, retries, engine_wait, kwargs, fit_timeout):
        """Return the context that runs the curve's fits on the cluster.

        Fails at once without matplotlib, before any fit.
        """
        _pyplot()
        return curve_on_cluster(
            client, X, store_dir, retries, engine_wait, kwargs, fit_timeout
        )


class LearningCurveDisplay(_ClusterCurveDisplay, _SklearnLearningCurve):
    """scikit-learn's LearningCurveDisplay, computed on the cluster.

    :meth:`from_estimator` runs :func:`sklearn_ipp.learning_curve`; the rest
    is :class:`sklearn.model_selection.LearningCurveDisplay`.
    """

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y,
        *,
        client=None,
        store_dir=None,
        retries=DEFAULT_RETRIES,
        engine_wait=DEFAULT_TIMEOUT,
        fit_timeout=None,
        **kwargs,
    ):
        """Compute a learning curve on the cluster and plot it.

        Parameters
        ----------
        estimator : estimator object
            The estimator to evaluate.
        X, y : array-like
            The data.
        client : None, str, ipyparallel.Client, View or Cluster, default=None
            The cluster, as in :func:`sklearn_ipp.resolve_cluster`.
        store_dir : str, path or None, default=None
            Where the splits are stored.
        retries : int, default=3
            Times a fit is sent again when the engine running it dies.
        engine_wait : float, default=60
            Seconds to wait for engines when there are none, as in
            :func:`sklearn_ipp.learning_curve`.
        fit_timeout : float or None, default=None
            Seconds each fit may run on its engine; a fit past it is stopped
            and fails, its scores ``error_score``, as in
            :class:`~sklearn_ipp.IPyParallelGridSearchCV` (see :doc:`/budgets`).
        **kwargs
            The parameters of
            :meth:`sklearn.model_selection.LearningCurveDisplay.from_estimator`
            (``train_sizes``, ``cv``, ``scoring``, ``ax``, ``score_type``...);
            ``n_jobs`` is ignored.

        Returns
        -------
        display : LearningCurveDisplay
        """
        with cls._on_cluster(
            client, X, store_dir, retries, engine_wait, kwargs, fit_timeout
        ):
            return super().from_estimator(estimator, X, y, **kwargs)


class ValidationCurveDisplay(_ClusterCurveDisplay, _SklearnValidationCurve):
    """scikit-learn's ValidationCurveDisplay, computed on the cluster.

    :meth:`from_estimator` runs :func:`sklearn_ipp.validation_curve`; the
    rest is :class:`sklearn.model_selection.ValidationCurveDisplay`.
    """

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y,
        *,
        param_name,
        param_range,
        client=None,
        store_dir=None,
        retries=DEFAULT_RETRIES,
        engine_wait=DEFAULT_TIMEOUT,
        fit_timeout=None,
        **kwargs,
    ):
        """Compute a validation curve on the cluster and plot it.

        Parameters
        ----------
        estimator : estimator object
            The estimator to evaluate.
        X, y : array-like
            The data.
        param_name : str
            The parameter that varies.
        param_range : array-like
            Its values.
        client : None, str, ipyparallel.Client, View or Cluster, default=None
            The cluster, as in :func:`sklearn_ipp.resolve_cluster`.
        store_dir : str, path or None, default=None
            Where the splits are stored.
        retries : int, default=3
            Times a fit is sent again when the engine running it dies.
        engine_wait : float, default=60
            Seconds to wait for engines when there are none, as in
            :func:`sklearn_ipp.learning_curve`.
        fit_timeout : float or None, default=None
            Seconds each fit may run on its engine; a fit past it is stopped
            and fails, its scores ``error_score``, as in
            :class:`~sklearn_ipp.IPyParallelGridSearchCV` (see :doc:`/budgets`).
        **kwargs
            The parameters of
            :meth:`sklearn.model_selection.ValidationCurveDisplay.from_estimator`
            (``cv``, ``scoring``, ``ax``...); ``n_jobs`` is ignored.

        Returns
        -------
        display : ValidationCurveDisplay
        """
        with cls._on_cluster(
            client, X, store_dir, retries, engine_wait, kwargs, fit_timeout
        ):
            return super().from_estimator(
                estimator,
                X,
                y,
                param_name=param_name,
                param_range=param_range,
                **kwargs,
            )
