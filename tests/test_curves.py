"""Learning and validation curves on the cluster, and the plots.

The curves must equal scikit-learn's and store each split once, whatever the
number of train sizes; the Displays are checked by what they draw.
"""

import re
import sys

import matplotlib
import numpy as np
import pytest
from joblib import parallel_config
from scipy.stats import loguniform
from sklearn import model_selection
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import GridSearchCV, KFold, ShuffleSplit
from sklearn.naive_bayes import GaussianNB

import sklearn_ipp
from sklearn_ipp import (
    IPyParallelGridSearchCV,
    LearningCurveDisplay,
    ParameterBoxplotDisplay,
    ScoreHeatmapDisplay,
    ValidationCurveDisplay,
)
from sklearn_ipp._backend import ClusterBackend

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TRAIN_SIZES = [0.1, 0.3, 0.5, 0.8, 1.0]
N_SPLITS = 3


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _digits():
    return load_digits(return_X_y=True)


def test_learning_curve_equals_sklearns(client):
    X, y = _digits()
    cv = ShuffleSplit(n_splits=N_SPLITS, test_size=0.25, random_state=0)
    kwargs = {
        "train_sizes": TRAIN_SIZES,
        "cv": cv,
        "shuffle": True,
        "random_state": 0,
        "return_times": True,
    }
    ours = sklearn_ipp.learning_curve(GaussianNB(), X, y, client=client, **kwargs)
    reference = model_selection.learning_curve(GaussianNB(), X, y, **kwargs)
    assert len(ours) == len(reference) == 5
    for actual, expected in zip(ours[:3], reference[:3], strict=True):
        np.testing.assert_array_equal(actual, expected)
    for times in ours[3:]:  # fit and score times, of the fits on the engines
        assert times.shape == reference[1].shape
        assert (times > 0).all()


def test_learning_curve_stores_each_split_once(client):
    X, y = _digits()
    backend = ClusterBackend(client)
    written = []
    write = backend._write

    def counting_write(obj, rows=None, columns=None):
        written.append(len(rows))
        return write(obj, rows, columns)

    backend._write = counting_write
    try:
        with parallel_config(backend=backend):
            scores = model_selection.learning_curve(
                GaussianNB(), X, y, train_sizes=TRAIN_SIZES, cv=KFold(N_SPLITS)
            )
    finally:
        backend.close()
    expected = model_selection.learning_curve(
        GaussianNB(), X, y, train_sizes=TRAIN_SIZES, cv=KFold(N_SPLITS)
    )
    for actual, reference in zip(scores, expected, strict=True):
        np.testing.assert_array_equal(actual, reference)
    # X and y of each split once, with all its rows: the train sizes are
    # views of it, not copies.
    assert written == [len(X)] * 2 * N_SPLITS
    assert backend.n_fold_tasks_sent == len(TRAIN_SIZES) * N_SPLITS
    # A task carries a reference and two row ranges, not rows.
    assert backend.payload_bytes / backend.n_tasks_sent < 20_000 < X.nbytes


def test_validation_curve_equals_sklearns(client):
    X, y = make_classification(n_samples=300, random_state=0)
    kwargs = {"param_name": "alpha", "param_range": [0.01, 1.0, 100.0], "cv": N_SPLITS}
    ours = sklearn_ipp.validation_curve(
        RidgeClassifier(), X, y, client=client, **kwargs
    )
    reference = model_selection.validation_curve(RidgeClassifier(), X, y, **kwargs)
    for actual, expected in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(actual, expected)


def _two_parameter_search(client, **kwargs):
    X, y = make_classification(n_samples=200, random_state=0)
    grid = {"alpha": [0.01, 1.0, 100.0], "fit_intercept": [True, False]}
    search = IPyParallelGridSearchCV(
        RidgeClassifier(), grid, cv=N_SPLITS, client=client, **kwargs
    )
    reference = GridSearchCV(RidgeClassifier(), grid, cv=N_SPLITS, **kwargs)
    return search.fit(X, y), reference.fit(X, y)


def test_parameter_boxplots_show_every_split_score_per_value(client):
    search, _ = _two_parameter_search(client, return_train_score=True)
    results = search.cv_results_
    display = ParameterBoxplotDisplay.from_search(search, display_train=True)
    assert display.param_names == ["alpha", "fit_intercept"]
    assert len(display.axes_) == 2
    assert [ax.get_xlabel() for ax in display.axes_] == ["alpha", "fit_intercept"]
    labels = [[t.get_text() for t in ax.get_xticklabels()] for ax in display.axes_]
    assert labels == [["0.01", "1", "100"], ["True", "False"]]
    for kind, boxplots in (
        ("test", display.boxplots_),
        ("train", display.train_boxplots_),
    ):
        scores = np.column_stack(
            [results[f"split{s}_{kind}_score"] for s in range(N_SPLITS)]
        )
        for axis_index, name in enumerate(display.param_names):
            values = display.param_values[axis_index]
            boxes = boxplots[axis_index]
            assert len(boxes["boxes"]) == len(values)
            for value, median in zip(values, boxes["medians"], strict=True):
                rows = [i for i, p in enumerate(results["params"]) if p[name] == value]
                expected = scores[rows].ravel()
                assert len(expected) == len(rows) * N_SPLITS
                assert median.get_ydata()[0] == pytest.approx(np.median(expected))
    # Without train scores only the validation boxes, one per value.
    display = ParameterBoxplotDisplay.from_search(search.cv_results_)
    assert display.train_boxplots_ is None
    assert [len(b["boxes"]) for b in display.boxplots_] == [3, 2]


def test_score_heatmap_holds_the_mean_validation_scores(client):
    search, reference = _two_parameter_search(client)
    display = ScoreHeatmapDisplay.from_search(search)
    assert (display.y_param, display.x_param) == ("alpha", "fit_intercept")
    expected = np.array(reference.cv_results_["mean_test_score"]).reshape(3, 2)
    np.testing.assert_allclose(display.im_.get_array(), expected)
    assert display.text_[2, 1].get_text() == f"{expected[2, 1]:.3f}"
    assert display.ax_.get_xlabel() == "fit_intercept"
    assert display.colorbar_.ax.get_ylabel() == "mean validation score"
    swapped = ScoreHeatmapDisplay.from_search(
        search, x_param="alpha", y_param="fit_intercept"
    )
    np.testing.assert_allclose(swapped.scores, expected.T)
    with pytest.raises(ValueError, match="'gamma' is not a parameter that the search"):
        ScoreHeatmapDisplay.from_search(search, x_param="gamma", y_param="alpha")


class _StoppedSearch:
    """A search stopped early: its search space, and some candidates' results."""

    def __init__(self, results, keep, **space):
        vars(self).update(space)  # param_grid= or param_distributions=
        self._partial = {
            key: [value[i] for i in keep]
            if key == "params"
            else np.asarray(value)[keep]
            for key, value in results.items()
        }

    def partial_results(self):
        return self._partial


def _all_but_alpha_1_and_one_more(results):
    return [
        i
        for i, p in enumerate(results["params"])
        if p["alpha"] != 1.0 and (p["alpha"], p["fit_intercept"]) != (100.0, False)
    ]


def test_heatmap_of_a_stopped_search_shows_its_whole_grid(client):
    search, _ = _two_parameter_search(client)
    results = search.cv_results_
    keep = _all_but_alpha_1_and_one_more(results)
    stopped = _StoppedSearch(results, keep, param_grid=search.param_grid)
    display = ScoreHeatmapDisplay.from_search(stopped, score_name="accuracy")
    assert display.y_values == [0.01, 1.0, 100.0]
    assert display.x_values == [True, False]
    expected = np.asarray(results["mean_test_score"]).reshape(3, 2)
    expected[1, :] = expected[2, 1] = np.nan
    np.testing.assert_array_equal(display.im_.get_array().filled(np.nan), expected)
    assert display.text_[1, 0].get_text() == display.text_[2, 1].get_text() == ""
    assert display.text_[2, 0].get_text() == f"{expected[2, 0]:.3f}"
    assert display.colorbar_.ax.get_ylabel() == "mean validation accuracy"
    # A cv_results_ dict has no grid: only the values that have results.
    from_dict = ScoreHeatmapDisplay.from_search(stopped.partial_results())
    assert from_dict.y_values == [0.01, 100.0]


def test_heatmap_takes_a_drawn_parameter_from_the_results(client):
    search, _ = _two_parameter_search(client)
    results = search.cv_results_
    keep = _all_but_alpha_1_and_one_more(results)
    space = {"alpha": loguniform(0.01, 100.0), "fit_intercept": [True, False]}
    stopped = _StoppedSearch(results, keep, param_distributions=space)
    display = ScoreHeatmapDisplay.from_search(stopped)
    assert display.y_values == [0.01, 100.0]
    assert display.x_values == [True, False]


def test_boxplots_share_one_scale_and_name_the_score(client):
    search, _ = _two_parameter_search(client, return_train_score=True)
    display = ParameterBoxplotDisplay.from_search(
        search, display_train=True, score_name="accuracy"
    )
    first, second = display.axes_
    assert first.get_ylabel() == "accuracy"
    assert first.get_shared_y_axes().joined(first, second)
    # One legend for the figure, none on the axes the boxes are drawn on.
    assert [t.get_text() for t in display.figure_.legends[0].get_texts()] == [
        "validation",
        "train",
    ]
    assert first.get_legend() is None and second.get_legend() is None


def test_heatmap_needs_two_parameters(client):
    X, y = make_classification(n_samples=100, random_state=0)
    search = IPyParallelGridSearchCV(
        RidgeClassifier(), {"alpha": [0.1, 1.0]}, cv=N_SPLITS, client=client
    ).fit(X, y)
    with pytest.raises(ValueError, match=r"varies 1 \(alpha\): pass x_param="):
        ScoreHeatmapDisplay.from_search(search)
    with pytest.raises(ValueError, match="display_train=True needs train scores"):
        ParameterBoxplotDisplay.from_search(search, display_train=True)


def test_curve_displays_are_sklearns_computed_on_the_cluster(client):
    X, y = _digits()
    cv = KFold(N_SPLITS)
    display = LearningCurveDisplay.from_estimator(
        GaussianNB(), X, y, train_sizes=TRAIN_SIZES, cv=cv, client=client
    )
    reference = model_selection.LearningCurveDisplay.from_estimator(
        GaussianNB(), X, y, train_sizes=TRAIN_SIZES, cv=cv
    )
    assert isinstance(display, LearningCurveDisplay)
    np.testing.assert_array_equal(display.test_scores, reference.test_scores)
    np.testing.assert_array_equal(display.train_sizes, reference.train_sizes)
    assert len(display.lines_) == len(reference.lines_) == 2
    validation = ValidationCurveDisplay.from_estimator(
        RidgeClassifier(),
        X,
        y,
        param_name="alpha",
        param_range=[0.1, 10.0],
        cv=cv,
        client=client,
    )
    expected = model_selection.validation_curve(
        RidgeClassifier(), X, y, param_name="alpha", param_range=[0.1, 10.0], cv=cv
    )
    np.testing.assert_array_equal(validation.test_scores, expected[1])


def test_plots_without_matplotlib_name_the_extra(client, monkeypatch):
    search, _ = _two_parameter_search(client)
    for name in [
        m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    fix = re.escape("`pip install matplotlib`, or sklearn_ipp's plot extra") + (
        re.escape(' (`pip install ".[plot]"`')
    )
    with pytest.raises(ImportError, match=fix):
        ParameterBoxplotDisplay.from_search(search)
    with pytest.raises(ImportError, match=fix):
        LearningCurveDisplay.from_estimator(GaussianNB(), *_digits(), client=client)


def test_displays_are_made_with_keyword_arguments_as_sklearns_are():
    with pytest.raises(TypeError):
        ScoreHeatmapDisplay(np.ones((1, 1)), "a", "b", [1], [2])
    display = ScoreHeatmapDisplay(
        scores=np.ones((1, 1)), x_param="a", y_param="b", x_values=[1], y_values=[2]
    )
    assert display.score_name == "score"
    with pytest.raises(TypeError):
        ParameterBoxplotDisplay(["C"], [[1]], [[np.ones(2)]])
    boxes = ParameterBoxplotDisplay(
        param_names=["C"], param_values=[[1]], test_scores=[[np.ones(2)]]
    )
    assert boxes.train_scores is None
    # The curve displays share the base that runs their fits on the cluster.
    shared = set(LearningCurveDisplay.__mro__) & set(ValidationCurveDisplay.__mro__)
    assert any("_on_cluster" in vars(base) for base in shared)
