"""Partial cv_results_ and the report's arithmetic, without a cluster.

Per-split results are computed in this process with sklearn's
cross_validate and handed to LiveResults as the backend would; complete,
they must give GridSearchCV's own cv_results_.
"""

import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV, KFold, ParameterGrid, cross_validate

from sklearn_ipp._results import (
    LiveResults,
    format_candidates,
    format_progress,
    top_candidates,
)

N_SPLITS = 4


class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    """Predicts by the sign of one feature; fails to fit when ``fail``."""

    def __init__(self, feature=0, fail=False):
        self.feature = feature
        self.fail = fail

    def fit(self, X, y):
        if self.fail:
            raise ValueError("asked to fail")
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return (X[:, self.feature] > 0).astype(int)


GRID = {"feature": [0, 1, 2], "fail": [False, True]}


def _feed(live, scoring, order):
    """Hand LiveResults the fits of GRID, in ``order`` of (candidate, split)."""
    X, y = make_classification(n_samples=80, n_features=4, random_state=0)
    candidates = list(ParameterGrid(GRID))
    per_candidate = [
        None  # a failed fit: sklearn's _fit_and_score gives error_score
        if params["fail"]
        else cross_validate(
            ThresholdClassifier(**params),
            X,
            y,
            cv=KFold(N_SPLITS),
            scoring=scoring,
            return_train_score=True,
        )
        for params in candidates
    ]
    for index, split in order:
        scores = per_candidate[index]
        if scores is None:
            # One score for every metric, as _fit_and_score returns it.
            live.add(
                0,
                _arguments(candidates, index, split),
                {
                    "test_scores": np.nan,
                    "train_scores": np.nan,
                    "fit_time": 0.0,
                    "score_time": 0.0,
                    "fit_error": "ValueError: asked to fail",
                },
            )
            continue

        def score(kind, scores=scores, split=split):
            if scoring is None:
                return scores[f"{kind}_score"][split]
            return {m: scores[f"{kind}_{m}"][split] for m in scoring}

        live.add(
            0,
            _arguments(candidates, index, split),
            {
                "test_scores": score("test"),
                "train_scores": score("train"),
                "fit_time": scores["fit_time"][split],
                "score_time": scores["score_time"][split],
                "fit_error": None,
            },
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GridSearchCV(
            ThresholdClassifier(),
            GRID,
            cv=KFold(N_SPLITS),
            scoring=scoring,
            refit=False,
            return_train_score=True,
        ).fit(X, y)


def _arguments(candidates, index, split):
    """The arguments of sklearn's _fit_and_score that LiveResults reads."""
    return {
        "candidate_progress": (index, len(candidates)),
        "split_progress": (split, N_SPLITS),
        "parameters": candidates[index],
    }


@pytest.mark.parametrize("scoring", [None, ("accuracy", "balanced_accuracy")])
def test_complete_results_are_gridsearchcvs(scoring):
    live = LiveResults(return_train_score=True, error_score=np.nan)
    assert live.cv_results() is None
    everything = [(c, s) for s in range(N_SPLITS) for c in range(6)][::-1]
    reference = _feed(live, scoring, everything).cv_results_
    results = live.cv_results()
    assert results["params"] == reference["params"]
    names = ["score"] if scoring is None else list(scoring)
    for name in names:
        for key in (
            *(
                f"split{s}_{kind}_{name}"
                for s in range(N_SPLITS)
                for kind in ("test", "train")
            ),
            f"mean_test_{name}",
            f"std_test_{name}",
            f"mean_train_{name}",
            f"rank_test_{name}",
        ):
            np.testing.assert_array_equal(
                np.ma.filled(results[key], -1.0), reference[key], err_msg=key
            )
    for key in ("param_feature", "param_fail"):
        assert list(results[key]) == list(reference[key])
    assert live.n_done == 6 * N_SPLITS


def test_partial_results_are_over_the_finished_splits():
    live = LiveResults(return_train_score=False, error_score=np.nan)
    # Candidate 0 (feature 0, fit) on splits 0 and 2; candidate 2 on split 1.
    reference = _feed(live, None, [(0, 0), (0, 2), (2, 1)]).cv_results_
    results = live.cv_results()
    assert list(results["params"]) == [reference["params"][i] for i in (0, 2)]
    split1 = results["split1_test_score"]
    assert np.ma.getmaskarray(split1).tolist() == [True, False]
    expected = [reference[f"split{s}_test_score"][0] for s in (0, 2)]
    assert results["mean_test_score"][0] == pytest.approx(np.mean(expected))
    assert results["std_test_score"][0] == pytest.approx(np.std(expected))
    # The report: standard error over the 2 finished splits, ddof=1.
    text = format_candidates(top_candidates(results, n_top=2))
    sem = np.std(expected, ddof=1) / np.sqrt(2)
    assert f"{np.mean(expected):.5f} (+/-{sem:.5f})" in text
    # One finished split: no standard error.
    assert "(+/-nan)" in text


def test_a_failed_fit_makes_the_mean_nan_as_in_sklearn():
    live = LiveResults(return_train_score=False, error_score=np.nan)
    # Candidate 3 is {"fail": True, "feature": 0}: its fits fail.
    reference = _feed(live, None, [(3, 0), (3, 1), (0, 0)]).cv_results_
    results = live.cv_results()
    assert (
        results["params"][1] == reference["params"][3] == {"fail": True, "feature": 0}
    )
    assert np.isnan(results["mean_test_score"][1])
    assert np.isnan(reference["mean_test_score"][3])
    assert results["rank_test_score"].tolist() == [1, 2]
    assert (
        format_candidates(top_candidates(results))
        .splitlines()[2]
        .startswith("Rank 2: validation: nan (+/-nan)")
    )


def test_progress_line_is_the_tutorials():
    assert format_progress(0, 100) == "Progress: 00% (000/100)"
    assert format_progress(42, 100) == "Progress: 42% (042/100)"
    assert format_progress(100, 100) == "Progress: 100% (100/100)"
    assert format_progress(3, 12, "running") == "Progress: 25% (03/12), running"
    assert format_progress(0, 0) == "Progress: 00% (0/0)"
