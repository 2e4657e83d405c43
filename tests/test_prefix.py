"""A pipeline's leading steps fitted once per split: scikit-learn's results.

Every search here is compared with scikit-learn's own on the same data, to
``RTOL``; the prefixes fitted are counted by the backend, and on the engines
by a transformer that writes a line to a file at every fit.
"""

import warnings

import numpy as np
import pytest
import sklearn
from joblib import parallel_config
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    KFold,
    RandomizedSearchCV,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.svm import SVC, LinearSVC

from sklearn_ipp import IPyParallelGridSearchCV, IPyParallelHalvingGridSearchCV
from sklearn_ipp._backend import ClusterBackend
from sklearn_ipp._prefix import (
    PrefixFold,
    fit_and_score_on_prefix,
    fit_prefix,
    prefix_plan,
)

from ._sklearn_compare import assert_same_search, fit_both

RTOL = 1e-9
N_SPLITS = 3
CV = KFold(N_SPLITS, shuffle=True, random_state=0)
X, Y = make_classification(n_samples=240, n_features=12, random_state=0)
C_VALUES = [0.01, 0.1, 1.0, 10.0]


class FitLog(BaseEstimator, TransformerMixin):
    """Scales by ``factor``; appends a line to ``log`` at every fit."""

    def __init__(self, log=None, factor=1.0, warn=False):
        self.log = log
        self.factor = factor
        self.warn = warn

    def fit(self, X, y=None):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write("fit\n")
        if self.warn:
            warnings.warn("FitLog was fitted", UserWarning, stacklevel=2)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return np.asarray(X) * self.factor


def pca_pipeline(**steps):
    return Pipeline(
        [
            ("scale", steps.get("scale", StandardScaler())),
            ("pca", steps.get("pca", PCA(5, svd_solver="full"))),
            ("clf", steps.get("clf", LogisticRegression())),
        ]
    )


def counted_grid(client, estimator, grid, X=X, y=Y, reuse=True, **kwargs):
    """scikit-learn's GridSearchCV on the cluster, and the backend that ran it."""
    backend = ClusterBackend(client, reuse_prefixes=reuse)
    search = GridSearchCV(estimator, grid, cv=CV, **kwargs)
    try:
        with parallel_config(backend=backend):
            search.fit(X, y)
    finally:
        backend.close()
    return search, backend


def same_as_sklearn(client, estimator, grid, X=X, y=Y, **kwargs):
    """Fit ours and scikit-learn's search, compare them; return our backend."""
    ours, backend = counted_grid(client, estimator, grid, X, y, **kwargs)
    reference = GridSearchCV(estimator, grid, cv=CV, **kwargs).fit(X, y)
    assert_same_search(ours, reference, rtol=RTOL)
    return backend


def n_candidates(grid):
    return len(list(sklearn.model_selection.ParameterGrid(grid)))


# Reuse, and scikit-learn's results --------------------------------------------


def test_the_prefix_is_fitted_once_per_split_on_the_engines(client, tmp_path):
    log = tmp_path / "fits.log"
    estimator = pca_pipeline(scale=FitLog(str(log)))
    grid = {"clf__C": C_VALUES}
    ours = IPyParallelGridSearchCV(
        estimator, grid, cv=CV, client=client, return_train_score=True
    )
    reference = GridSearchCV(estimator, grid, cv=CV, return_train_score=True)
    fit_both(ours, reference, X, Y)
    assert_same_search(ours, reference, X, rtol=RTOL)
    lines = log.read_text().splitlines()
    n_reference = len(C_VALUES) * N_SPLITS + 1  # and its refit
    # Ours: once per split on the engines, plus the refit; then scikit-learn's.
    assert len(lines) == N_SPLITS + 1 + n_reference

    log.unlink()
    whole = IPyParallelGridSearchCV(
        estimator, grid, cv=CV, client=client, reuse_prefixes=False
    ).fit(X, Y)
    assert len(log.read_text().splitlines()) == len(C_VALUES) * N_SPLITS + 1
    assert whole.best_params_ == reference.best_params_


def test_counts_and_scores_with_train_scores(client):
    grid = {"clf__C": C_VALUES}
    backend = same_as_sklearn(client, pca_pipeline(), grid, return_train_score=True)
    assert backend.n_prefix_fits == N_SPLITS
    assert backend.n_on_prefix == len(C_VALUES) * N_SPLITS


def test_grid_over_a_prefix_parameter_groups_the_candidates(client):
    grid = {"pca__n_components": [3, 6], "clf__C": C_VALUES}
    backend = same_as_sklearn(client, pca_pipeline(), grid)
    assert backend.n_prefix_fits == 2 * N_SPLITS
    assert backend.n_on_prefix == n_candidates(grid) * N_SPLITS


def test_steps_replaced_by_the_grid_and_passthrough(client):
    grid = {
        "pca": [PCA(3, svd_solver="full"), PCA(6, svd_solver="full"), "passthrough"],
        "clf": [LogisticRegression(C=0.1), SVC(C=1.0)],
    }
    backend = same_as_sklearn(client, pca_pipeline(), grid)
    assert backend.n_prefix_fits == 3 * N_SPLITS
    assert backend.n_on_prefix == n_candidates(grid) * N_SPLITS


def test_nested_pipelines(client):
    inner = Pipeline(
        [("pca", PCA(4, svd_solver="full")), ("clf", LogisticRegression())]
    )
    estimator = Pipeline(
        [
            ("prep", Pipeline([("scale", StandardScaler()), ("log", FitLog())])),
            ("model", inner),
        ]
    )
    grid = {"model__clf__C": C_VALUES}
    backend = same_as_sklearn(client, estimator, grid, return_train_score=True)
    # The last step is opened: its PCA is part of the prefix.
    assert backend.n_prefix_fits == N_SPLITS
    assert backend.n_on_prefix == len(C_VALUES) * N_SPLITS


def test_text_pipeline(client):
    rng = np.random.RandomState(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"])
    docs = [" ".join(rng.choice(words, 8)) for _ in range(150)]
    labels = np.array(["alpha" in d for d in docs], dtype=int)
    estimator = Pipeline([("tfidf", TfidfVectorizer()), ("svc", LinearSVC())])
    grid = {"svc__C": C_VALUES}
    backend = same_as_sklearn(client, estimator, grid, X=docs, y=labels)
    assert backend.n_prefix_fits == N_SPLITS


def test_column_transformer(client):
    rng = np.random.RandomState(0)
    data = np.column_stack([X[:, :3], rng.randint(0, 4, len(X))])
    prep = ColumnTransformer(
        [
            ("num", StandardScaler(), [0, 1, 2]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), [3]),
        ]
    )
    estimator = Pipeline([("prep", prep), ("clf", LogisticRegression())])
    grid = {"clf__C": C_VALUES}
    backend = same_as_sklearn(client, estimator, grid, X=data)
    assert backend.n_prefix_fits == N_SPLITS


def test_fit_parameters_routed_to_the_prefix_and_the_last_step(client):
    weights = np.linspace(0.5, 2.0, len(X))
    grid = {"clf__C": C_VALUES}
    estimator = pca_pipeline()
    backend = ClusterBackend(client)
    ours = GridSearchCV(estimator, grid, cv=CV)
    with parallel_config(backend=backend):
        ours.fit(X, Y, scale__sample_weight=weights, clf__sample_weight=weights)
    backend.close()
    reference = GridSearchCV(estimator, grid, cv=CV)
    reference.fit(X, Y, scale__sample_weight=weights, clf__sample_weight=weights)
    assert_same_search(ours, reference, rtol=RTOL)
    assert backend.n_prefix_fits == N_SPLITS


def test_halving_search(client):
    estimator = pca_pipeline()
    grid = {"clf__C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}
    kwargs = {"cv": CV, "factor": 2, "random_state": 0, "return_train_score": True}
    ours = IPyParallelHalvingGridSearchCV(estimator, grid, client=client, **kwargs)
    reference = HalvingGridSearchCV(estimator, grid, **kwargs)
    fit_both(ours, reference, X, Y)
    assert_same_search(ours, reference, X, rtol=RTOL)


def test_randomized_search_under_the_backend(client):
    estimator = pca_pipeline()
    space = {"clf__C": C_VALUES, "pca__n_components": [3, 5]}
    backend = ClusterBackend(client)
    kwargs = {"n_iter": 6, "cv": CV, "random_state": 0}
    ours = RandomizedSearchCV(estimator, space, **kwargs)
    with parallel_config(backend=backend):
        ours.fit(X, Y)  # joblib hands over a few tasks at a time
    backend.close()
    reference = RandomizedSearchCV(estimator, space, **kwargs).fit(X, Y)
    assert_same_search(ours, reference, rtol=RTOL)
    assert 0 < backend.n_prefix_fits < backend.n_on_prefix


def test_prefix_warnings_are_said_once_per_candidate(client):
    estimator = pca_pipeline(scale=FitLog(warn=True))
    grid = {"clf__C": C_VALUES}
    ours = IPyParallelGridSearchCV(estimator, grid, cv=CV, client=client)
    reference = GridSearchCV(estimator, grid, cv=CV)
    warned_ours, warned_reference = fit_both(ours, reference, X, Y)
    assert warned_ours == warned_reference
    assert warned_ours.count(("UserWarning", "FitLog was fitted")) == (
        len(C_VALUES) * N_SPLITS + 1
    )


def test_times_include_the_candidates_share_of_the_prefix(client):
    class SlowFit(FitLog):
        def fit(self, X, y=None):
            import time

            time.sleep(0.4)
            return super().fit(X, y)

    grid = {"clf__C": C_VALUES}
    search, backend = counted_grid(client, pca_pipeline(scale=SlowFit()), grid)
    assert backend.n_prefix_fits == N_SPLITS
    # Each candidate carries a quarter of the prefix's 0.4 s on every split,
    # not the whole of it.
    mean = search.cv_results_["mean_fit_time"]
    assert np.all(mean >= 0.4 / len(C_VALUES))
    assert np.all(mean < 0.4)


def test_verbose_says_how_many_prefix_fits_were_saved(client, capsys):
    grid = {"clf__C": C_VALUES}
    IPyParallelGridSearchCV(pca_pipeline(), grid, cv=CV, client=client, verbose=1).fit(
        X, Y
    )
    n_fits = len(C_VALUES) * N_SPLITS
    assert (
        f"Fitted {N_SPLITS} pipeline prefixes once per split for {n_fits} fits: "
        f"{n_fits - N_SPLITS} prefix fits saved" in capsys.readouterr().out
    )


# Where nothing is reused, and the results are still scikit-learn's -----------


@pytest.mark.parametrize(
    "estimator, why",
    [
        (pca_pipeline(pca=PCA(5, svd_solver="randomized", random_state=None)), "None"),
        (
            pca_pipeline(pca=TruncatedSVD(5, random_state=np.random.RandomState(0))),
            "RandomState",
        ),
        (
            Pipeline(
                [("scale", StandardScaler()), ("clf", LogisticRegression())],
                verbose=True,
            ),
            "verbose",
        ),
    ],
)
def test_no_reuse_where_the_prefix_fit_may_differ(client, estimator, why):
    grid = {"clf__C": C_VALUES}
    ours, backend = counted_grid(client, estimator, grid)
    assert backend.n_prefix_fits == backend.n_on_prefix == 0
    if why != "None":  # numpy's global generator: scikit-learn's differ too
        reference = GridSearchCV(estimator, grid, cv=CV).fit(X, Y)
        assert_same_search(ours, reference, rtol=RTOL)


def test_an_int_random_state_is_reused(client):
    estimator = pca_pipeline(pca=TruncatedSVD(5, random_state=3))
    backend = same_as_sklearn(client, estimator, {"clf__C": C_VALUES})
    assert backend.n_prefix_fits == N_SPLITS


def test_no_reuse_with_a_scorer_of_the_users(client):
    def scorer(estimator, X, y):
        return float(np.mean(estimator.predict(X) == y))

    backend = same_as_sklearn(
        client, pca_pipeline(), {"clf__C": C_VALUES}, scoring=scorer
    )
    assert backend.n_prefix_fits == 0


def test_no_reuse_with_metadata_routing_and_fit_parameters(client):
    weights = np.linspace(0.5, 2.0, len(X))
    grid = {"clf__C": C_VALUES}
    with sklearn.config_context(enable_metadata_routing=True):
        estimator = Pipeline(
            [
                ("scale", StandardScaler().set_fit_request(sample_weight=True)),
                (
                    "clf",
                    LogisticRegression()
                    .set_fit_request(sample_weight=True)
                    .set_score_request(sample_weight=False),
                ),
            ]
        )
        scoring = sklearn.metrics.get_scorer("accuracy")
        scoring = scoring.set_score_request(sample_weight=True)
        backend = ClusterBackend(client)
        ours = GridSearchCV(estimator, grid, cv=CV, scoring=scoring)
        with parallel_config(backend=backend):
            ours.fit(X, Y, sample_weight=weights)
        backend.close()
        reference = GridSearchCV(estimator, grid, cv=CV, scoring=scoring).fit(
            X, Y, sample_weight=weights
        )
    assert_same_search(ours, reference, rtol=RTOL)
    assert backend.n_prefix_fits == 0


def test_one_candidate_per_prefix_runs_whole(client):
    # Every task handed over at once, as by the searches of sklearn_ipp: the
    # backend knows that no other candidate will share a prefix.
    grid = {"pca__n_components": [2, 3, 4]}
    backend = same_as_sklearn(client, pca_pipeline(), grid, pre_dispatch="all")
    assert backend.n_prefix_fits == backend.n_on_prefix == 0


def test_failing_remaining_steps_run_whole_with_sklearns_warnings(client):
    grid = {"clf__C": [1.0, -1.0]}  # C must be positive
    ours = IPyParallelGridSearchCV(pca_pipeline(), grid, cv=CV, client=client)
    reference = GridSearchCV(pca_pipeline(), grid, cv=CV)
    warned_ours, warned_reference = fit_both(ours, reference, X, Y)
    assert warned_ours == warned_reference
    assert any(category == "FitFailedWarning" for category, _ in warned_ours)
    assert_same_search(ours, reference, X, rtol=RTOL)


def test_a_failing_prefix_runs_its_candidates_whole(client):
    estimator = pca_pipeline(pca=PCA(50, svd_solver="full"))  # > 12 features
    grid = {"clf__C": C_VALUES}
    ours = IPyParallelGridSearchCV(
        estimator, grid, cv=CV, client=client, error_score=-1.0
    )
    reference = GridSearchCV(estimator, grid, cv=CV, error_score=-1.0)
    with pytest.raises(ValueError) as ours_error:
        fit_both(ours, reference, X, Y)
    with pytest.raises(ValueError) as reference_error:
        reference.fit(X, Y)  # every fit failed: scikit-learn's error at refit
    assert (
        str(ours_error.value).split("\n")[0]
        == str(reference_error.value).split("\n")[0]
    )


def test_a_prefix_giving_no_array_runs_its_candidates_whole(client):
    to_list = FunctionTransformer(lambda X: np.asarray(X).tolist())
    estimator = Pipeline([("list", to_list), ("clf", LogisticRegression())])
    backend = same_as_sklearn(client, estimator, {"clf__C": C_VALUES})
    assert backend.n_prefix_fits == backend.n_on_prefix == 0


# The pieces, without a cluster ------------------------------------------------


def _arguments(estimator, parameters, **extra):
    from sklearn.metrics import check_scoring

    train, test = next(KFold(N_SPLITS).split(X))
    return {
        "estimator": sklearn.base.clone(estimator),
        "X": X,
        "y": Y,
        "scorer": check_scoring(estimator),
        "train": train,
        "test": test,
        "verbose": 0,
        "parameters": parameters,
        "fit_params": None,
        "score_params": None,
        "return_train_score": True,
        "return_parameters": True,
        "return_n_test_samples": True,
        "return_times": True,
        "return_estimator": True,
        "error_score": np.nan,
        "candidate_progress": (0, 2),
        **extra,
    }


def test_a_candidate_on_its_prefix_returns_an_ordinary_pipeline():
    from sklearn.model_selection._validation import _fit_and_score

    parameters = {"clf__C": 0.5}
    arguments = _arguments(pca_pipeline(), parameters)
    (levels, _), _ = prefix_plan(arguments)
    output = fit_prefix(levels, **_arguments(pca_pipeline(), parameters))
    n = output.n_train
    refs = {
        "levels": levels,
        "X": output.X,
        "X_train": output.X_train,
        "steps": output.steps,
        "train": np.arange(n),
        "test": np.arange(n, n + output.n_test),
        "params": {},
    }
    rows = np.concatenate([arguments["train"], arguments["test"]])
    on_prefix, result = fit_and_score_on_prefix(
        refs,
        **_arguments(
            pca_pipeline(),
            parameters,
            X=X[rows],
            y=Y[rows],
            train=np.arange(n),
            test=np.arange(n, len(rows)),
        ),
    )
    assert on_prefix
    expected = _fit_and_score(**_arguments(pca_pipeline(), parameters))
    fitted = result["estimator"]
    assert type(fitted) is Pipeline
    assert not hasattr(fitted, "_sklearn_ipp_n_fitted")
    np.testing.assert_allclose(
        fitted.predict_proba(X), expected["estimator"].predict_proba(X), rtol=RTOL
    )
    for key in ("test_scores", "train_scores", "n_test_samples"):
        np.testing.assert_allclose(result[key], expected[key], rtol=RTOL)
    assert result["parameters"] == parameters


def test_plans_and_why_not():
    def plan(estimator, parameters, **extra):
        return prefix_plan(_arguments(estimator, parameters, **extra))

    assert plan(pca_pipeline(), {"clf__C": 1.0})[0] is not None
    # One candidate, or no pipeline: nothing to say.
    assert plan(pca_pipeline(), {}, candidate_progress=None) == (None, None)
    assert plan(LogisticRegression(), {"C": 1.0}) == (None, None)

    class MyPipeline(Pipeline):
        pass

    assert "subclass" in plan(MyPipeline(pca_pipeline().steps), {})[1]
    # The last step's parameters do not change the token; the prefix's do.
    token = plan(pca_pipeline(), {"clf__C": 1.0})[0][1]
    assert plan(pca_pipeline(), {"clf__C": 2.0})[0][1] == token
    assert plan(pca_pipeline(), {"pca__n_components": 2})[0][1] != token
    # Fit parameters for a step that does not exist: the pipeline's own error.
    assert plan(pca_pipeline(), {}, fit_params={"nope__w": 1}) == (None, None)
    # Why not, where the user can change it.
    _, why = plan(pca_pipeline(pca=PCA(5)), {})  # svd_solver="auto" may randomize
    assert why.startswith("step 'pca' (PCA) has PCA(random_state=None)")
    assert "int random_state" in why
    nested = pca_pipeline(
        scale=ColumnTransformer([("svd", TruncatedSVD(2), [0, 1, 2])])
    )
    assert "TruncatedSVD(random_state=None)" in plan(nested, {})[1]
    assert plan(pca_pipeline().set_params(verbose=0), {})[0] is not None
    assert "verbose=True" in plan(pca_pipeline().set_params(verbose=True), {})[1]
    assert "memory=" in plan(pca_pipeline().set_params(memory="/tmp"), {})[1]
    assert "make_scorer" in plan(pca_pipeline(), {}, scorer=lambda e, X, y: 0)[1]


def test_verbose_says_why_every_pipeline_was_fitted_whole(client, capsys):
    grid = {"clf__C": C_VALUES}
    estimator = pca_pipeline(pca=PCA(5, svd_solver="randomized"))
    search = IPyParallelGridSearchCV(estimator, grid, cv=CV, client=client, verbose=1)
    search.fit(X, Y)
    assert (
        "Fitted every pipeline whole, its leading steps for each candidate: step "
        "'pca' (PCA) has PCA(random_state=None): give it an int random_state"
    ) in capsys.readouterr().out


def test_a_prefix_is_charged_to_its_candidates():
    fold = type(
        "Fold", (), {"sequence": 0, "train": np.arange(3), "test": np.arange(2)}
    )
    prefix = PrefixFold(("prefix",), fold, (2,), 3)
    prefix.fit_seconds, prefix.test_seconds, prefix.n_candidates = 2.0, 1.0, 4
    result = {"fit_time": 0.1, "score_time": 0.01}
    prefix.charge(result)
    assert result == pytest.approx({"fit_time": 0.6, "score_time": 0.26})


class WritesIntoX(BaseEstimator):
    """A classifier that scales its training data in place, as some do."""

    _estimator_type = "classifier"

    def fit(self, X, y):
        X *= 1.0
        self.model_ = LogisticRegression().fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def score(self, X, y):
        return self.model_.score(X, y)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier"
        return tags


def test_remaining_steps_that_write_into_their_data_run_whole(client):
    # The stored rows are read-only; scikit-learn's StandardScaler gives the
    # whole pipeline's last step a new array, which it may write into.
    estimator = Pipeline([("scale", StandardScaler()), ("clf", WritesIntoX())])
    grid = {"scale__with_std": [True], "clf": [WritesIntoX(), WritesIntoX()]}
    backend = same_as_sklearn(client, estimator, grid)
    assert backend.n_prefix_fits == N_SPLITS
    assert backend.n_on_prefix == 0
