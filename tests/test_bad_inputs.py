"""Bad inputs to the searches, each with the clear error of docs/errors.rst.

Where scikit-learn has a reference behaviour, the searches must raise the same
exception type with the same message as its GridSearchCV.
"""

# Where each row of the table in docs/errors.rst is tested. Rows covered
# elsewhere are not repeated here, so that each slow or privileged setup
# (version skew, a module missing on an engine, a full filesystem) runs once:
#
# unreachable cluster, profile name     test_search_with_a_profile_without_cluster
#   and test_cluster.py::test_named_profile_without_cluster_names_profile_and_command
# unreachable cluster, file             test_search_with_a_missing_connection_file
#   and test_cluster.py::test_stale_cluster_file_is_skipped_quickly
# zero engines                          test_search_with_zero_engines
#   and test_cluster.py::test_controller_without_engines_times_out
# version skew                          test_search_errors.py::
#   test_version_skew_stops_the_search_before_any_task, and the
#   test_check_engines_* tests of test_engines.py
# unpicklable estimator or grid value   test_search_errors.py::
#   test_unpicklable_estimator_fails_before_any_task and
#   test_unpicklable_grid_value_is_named
# module missing on an engine           test_search_errors.py::
#   test_compiled_module_missing_on_engines_names_engine_and_module
# store_dir full                        test_store.py::
#   test_full_store_dir_names_the_path_and_the_parameter
# store_dir not writable                test_store.py::
#   test_unwritable_store_dir_names_the_path_and_the_parameter
# directory others can write            test_store.py::
#   test_data_is_never_read_from_a_directory_others_can_write
# corrupted copy on another host        test_store.py::
#   test_a_corrupted_copy_is_refused
# engines killed, every engine gone     test_failures.py::
#   test_backend_call_retries_tasks_of_a_killed_engine,
#   test_losing_every_engine_keeps_the_finished_fits
# invalid search parameter              test_invalid_search_parameter_as_in_sklearn
#   and test_invalid_store_dir_type
# client of an unsupported type         test_search_with_a_client_of_unsupported_type
# unknown parameter in the grid         test_unknown_estimator_parameter_as_in_sklearn
# invalid parameter value in the grid   test_invalid_parameter_value_as_in_sklearn
# empty grid                            test_empty_grid_as_in_sklearn
# cv with no splits                     test_cv_without_splits_as_in_sklearn
# X/y length mismatch                   test_length_mismatch_as_in_sklearn
# estimator writing into X              test_estimator_writing_into_x_raises_with_a_hint
#   and test_estimator_writing_into_x_warns_with_a_hint

import re

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.svm import SVC

from sklearn_ipp import (
    ClusterNotFoundError,
    EngineTimeoutError,
    IPyParallelGridSearchCV,
    IPyParallelRandomizedSearchCV,
)

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
IRIS_XY = (IRIS_X, IRIS_Y)


def _sklearn_error(reference, X, y):
    """Return what scikit-learn's own search raises on ``fit(X, y)``."""
    with pytest.raises(Exception) as info:
        reference.fit(X, y)
    return info.value


def _as_sklearn_says(ours_error, reference_error):
    """Assert that both errors have the same type and message.

    sklearn's parameter validation names the class of the search, the only
    difference allowed.
    """
    assert type(ours_error) is type(reference_error)
    ours_text = re.sub(r"IPyParallel(\w+SearchCV)", r"\1", str(ours_error))
    assert ours_text == str(reference_error)


# Unreachable cluster


def test_search_with_a_profile_without_cluster():
    search = IPyParallelGridSearchCV(SVC(), {"C": [1]}, client="no-such-profile")
    with pytest.raises(
        ClusterNotFoundError,
        match=re.escape(
            "No running ipyparallel cluster was found for profile 'no-such-profile'"
        ),
    ) as info:
        search.fit(IRIS_X, IRIS_Y)
    assert "`ipcluster start --profile=no-such-profile -n 4`" in str(info.value)


def test_search_with_a_missing_connection_file(tmp_path):
    path = str(tmp_path / "security" / "ipcontroller-client.json")
    search = IPyParallelGridSearchCV(SVC(), {"C": [1]}, client=path)
    with pytest.raises(
        ClusterNotFoundError,
        match=re.escape(
            f"No cluster file, connection file or profile directory exists at {path!r}"
        ),
    ) as info:
        search.fit(IRIS_X, IRIS_Y)
    assert "start the cluster again" in str(info.value)


# Zero engines


def test_search_with_zero_engines(client):
    # A view with no targets reaches the same wait for engines as a controller
    # without engines (tested with a real one in test_cluster.py), without
    # starting a second controller. The searches wait engine_wait, 60 s by
    # default; a shorter one keeps this test fast.
    search = IPyParallelGridSearchCV(
        SVC(), {"C": [1]}, client=client.load_balanced_view(targets=[]), engine_wait=1
    )
    with pytest.raises(
        EngineTimeoutError,
        match=re.escape(
            "Expected 1 engine(s) to register with the controller within 1 s, "
            "but 0 did."
        ),
    ) as info:
        search.fit(IRIS_X, IRIS_Y)
    assert "`ipcluster engines -n N`" in str(info.value)


# Invalid parameters


@pytest.mark.parametrize(
    ("search_class", "reference_class", "arguments", "key_words"),
    [
        (
            IPyParallelGridSearchCV,
            GridSearchCV,
            {"param_grid": {"C": [1]}, "error_score": "ignore"},
            "The 'error_score' parameter of IPyParallelGridSearchCV must be",
        ),
        (
            IPyParallelRandomizedSearchCV,
            RandomizedSearchCV,
            {"param_distributions": {"C": [1]}, "n_iter": -1},
            "The 'n_iter' parameter of IPyParallelRandomizedSearchCV must be",
        ),
    ],
    ids=["error_score", "n_iter"],
)
def test_invalid_search_parameter_as_in_sklearn(
    client, search_class, reference_class, arguments, key_words
):
    reference_error = _sklearn_error(reference_class(SVC(), **arguments), *IRIS_XY)
    # InvalidParameterError is a ValueError (and a TypeError) as in sklearn.
    with pytest.raises(ValueError, match=re.escape(key_words)) as info:
        search_class(SVC(), client=client, **arguments).fit(IRIS_X, IRIS_Y)
    _as_sklearn_says(info.value, reference_error)


def test_invalid_store_dir_type(client):
    # sklearn has no store_dir: the constraint is sklearn_ipp's own, checked
    # the way sklearn checks its parameters.
    search = IPyParallelGridSearchCV(SVC(), {"C": [1]}, client=client, store_dir=5)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "The 'store_dir' parameter of IPyParallelGridSearchCV must be None, an "
            "instance of 'str' or an instance of 'os.PathLike'. Got 5 instead."
        ),
    ):
        search.fit(IRIS_X, IRIS_Y)


def test_search_with_a_client_of_unsupported_type():
    search = IPyParallelGridSearchCV(SVC(), {"C": [1]}, client=42)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "client must be None, a profile name, an ipyparallel.Client, a "
            "DirectView or LoadBalancedView, or an ipyparallel.Cluster; got 42 of "
            "type int."
        ),
    ):
        search.fit(IRIS_X, IRIS_Y)


def test_unknown_estimator_parameter_as_in_sklearn(client):
    # Raised on the engine by set_params, whatever error_score says.
    grid = {"no_such_parameter": [1]}
    reference_error = _sklearn_error(GridSearchCV(SVC(), grid), *IRIS_XY)
    with pytest.raises(
        ValueError,
        match=re.escape("Invalid parameter 'no_such_parameter' for estimator SVC()"),
    ) as info:
        IPyParallelGridSearchCV(SVC(), grid, client=client).fit(IRIS_X, IRIS_Y)
    assert "Valid parameters are: ['C', " in str(info.value)
    _as_sklearn_says(info.value, reference_error)


def test_invalid_parameter_value_as_in_sklearn(client):
    grid = {"C": [-1.0]}
    reference_error = _sklearn_error(GridSearchCV(SVC(), grid, cv=3), *IRIS_XY)
    with pytest.raises(ValueError, match="All the 3 fits failed") as info:
        IPyParallelGridSearchCV(SVC(), grid, cv=3, client=client).fit(IRIS_X, IRIS_Y)
    message = str(info.value)
    # scikit-learn < 1.5 prints the range as (0.0, inf).
    assert re.search(
        r"The 'C' parameter of SVC must be a float in the range \(0\.0, inf[\])]",
        message,
    )
    # The quoted tracebacks differ by line numbers of sklearn's code only.
    assert _without_tracebacks(message) == _without_tracebacks(str(reference_error))


def _without_tracebacks(text):
    """Drop the quoted tracebacks, keeping the final line of each."""
    return re.sub(
        r"Traceback \(most recent call last\):.*?\n(?=\S)", "", text, flags=re.S
    )


# Empty grid


@pytest.mark.parametrize(
    ("grid", "key_words"),
    [
        ({"C": []}, "Parameter grid for parameter 'C' need to be a non-empty sequence"),
        ([], "No fits were performed. Was the CV iterator empty? Were there no"),
    ],
    ids=["empty values", "no grid"],
)
def test_empty_grid_as_in_sklearn(client, grid, key_words):
    reference_error = _sklearn_error(GridSearchCV(SVC(), grid), *IRIS_XY)
    with pytest.raises(ValueError, match=re.escape(key_words)) as info:
        IPyParallelGridSearchCV(SVC(), grid, client=client).fit(IRIS_X, IRIS_Y)
    _as_sklearn_says(info.value, reference_error)


# cv with no splits


@pytest.mark.parametrize(
    ("cv", "error_type", "key_words"),
    [
        ([], ValueError, "No fits were performed. Was the CV iterator empty?"),
        (
            1,
            ValueError,  # InvalidParameterError
            "The 'cv' parameter of IPyParallelGridSearchCV must be an int in the "
            "range [2, inf)",
        ),
        (
            len(IRIS_Y) + 1,
            ValueError,
            "Cannot have number of splits n_splits=151 greater than the number of "
            "samples: n_samples=150.",
        ),
    ],
    ids=["empty iterable", "one split", "more splits than samples"],
)
def test_cv_without_splits_as_in_sklearn(client, cv, error_type, key_words):
    reference_error = _sklearn_error(GridSearchCV(SVC(), {"C": [1]}, cv=cv), *IRIS_XY)
    search = IPyParallelGridSearchCV(SVC(), {"C": [1]}, cv=cv, client=client)
    with pytest.raises(error_type, match=re.escape(key_words)) as info:
        search.fit(IRIS_X, IRIS_Y)
    _as_sklearn_says(info.value, reference_error)


# X/y length mismatch


def test_length_mismatch_as_in_sklearn(client):
    y = IRIS_Y[:-5]
    reference_error = _sklearn_error(GridSearchCV(SVC(), {"C": [1]}), IRIS_X, y)
    search = IPyParallelGridSearchCV(SVC(), {"C": [1]}, client=client)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Found input variables with inconsistent numbers of samples: [150, 145]"
        ),
    ) as info:
        search.fit(IRIS_X, y)
    _as_sklearn_says(info.value, reference_error)


# Estimator writing into X


class WritesIntoX(ClassifierMixin, BaseEstimator):
    """Writes into its training data when ``write`` is true, as some code does."""

    def __init__(self, write=True):
        self.write = write

    def fit(self, X, y):
        if self.write:
            X[0, 0] = 1
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def _memory_mapped_data():
    # 1.6 MB: above the size from which engines memory-map the stored folds.
    X = np.random.RandomState(0).rand(2000, 100)
    y = np.arange(2000) % 2
    return X, y


COPY_HINT = "X = X.copy()"


def test_estimator_writing_into_x_raises_with_a_hint(client):
    X, y = _memory_mapped_data()
    search = IPyParallelGridSearchCV(
        WritesIntoX(), {"write": [True]}, cv=2, error_score="raise", client=client
    )
    with pytest.raises(ValueError, match="read-only") as info:
        search.fit(X, y)
    assert COPY_HINT in str(info.value)


# sklearn's warning about the failed candidate's nan scores is expected.
@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_estimator_writing_into_x_warns_with_a_hint(client):
    X, y = _memory_mapped_data()
    search = IPyParallelGridSearchCV(
        WritesIntoX(), {"write": [True, False]}, cv=2, client=client
    )
    with pytest.warns(FitFailedWarning, match=re.escape(COPY_HINT)) as records:
        search.fit(X, y)
    assert any("read-only" in str(record.message) for record in records)
    # The candidate that does not write still gets its scores.
    scores = search.cv_results_["mean_test_score"]
    assert np.isnan(scores[0]) and not np.isnan(scores[1])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1M", 2**20), ("100K", 100 * 2**10), (None, None), (0, 0), (4096, 4096)],
)
def test_max_nbytes_takes_joblibs_notation(value, expected):
    from sklearn_ipp._backend import ClusterBackend

    assert ClusterBackend(max_nbytes=value).max_nbytes == expected


@pytest.mark.parametrize("value", ["", "lots", -1, 1.5, True])
def test_max_nbytes_that_is_not_a_size_is_named(value):
    from sklearn_ipp._backend import ClusterBackend

    with pytest.raises(
        ValueError, match=re.escape(f"max_nbytes={value!r} is not a size")
    ):
        ClusterBackend(max_nbytes=value)


def test_max_nbytes_none_sends_arrays_inside_the_messages(client):
    from joblib import Parallel, delayed

    from sklearn_ipp._backend import ClusterBackend

    data = np.arange(300_000, dtype=np.float64)  # 2.4 MB
    backend = ClusterBackend(client, max_nbytes=None)
    try:
        with parallel_config(backend=backend):
            sums = Parallel(n_jobs=-1)(delayed(np.sum)(data) for _ in range(2))
    finally:
        backend.close()
    assert sums == [data.sum()] * 2
    assert backend.store.n_writes == 0
    assert backend.payload_bytes > 2 * data.nbytes
