"""Assertions that a search on the cluster equals sklearn's own."""

import re
import warnings

import numpy as np

TIME_KEYS = ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")


def fit_both(ours, reference, X, y=None, **params):
    """Fit both searches; return the warnings each raised (category, message)."""
    caught = []
    for search in (ours, reference):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            search.fit(X, y, **params)
        caught.append(
            sorted(
                (record.category.__name__, _without_line_numbers(str(record.message)))
                for record in records
                if not issubclass(record.category, DeprecationWarning)
            )
        )
    return caught


def _without_line_numbers(text):
    # Fit-failure warnings quote tracebacks through scikit-learn's code; with
    # no callback registered the engines take _fit_and_score's branch without
    # callbacks, a few lines away from the one taken in-process.
    return re.sub(r", line \d+, in ", ", line N, in ", text)


def assert_same_search(ours, reference, X=None, rtol=1e-12):
    """Everything but timings equals: cv_results_, best_*, scorer_, predictions.

    Floats to ``rtol``: fits on a pipeline's stored prefix (see
    ``sklearn_ipp._prefix``) may round differently in the last digits.
    """
    assert ours.n_splits_ == reference.n_splits_
    assert ours.multimetric_ == reference.multimetric_
    assert sorted(ours.cv_results_) == sorted(reference.cv_results_)
    for key, expected in reference.cv_results_.items():
        if key in TIME_KEYS:
            continue
        assert_same_column(ours.cv_results_[key], expected, key, rtol)
    assert _scorer_repr(ours.scorer_) == _scorer_repr(reference.scorer_)
    for attribute in ("best_index_", "best_params_", "best_score_"):
        if hasattr(reference, attribute):
            assert_same_value(
                getattr(ours, attribute), getattr(reference, attribute), rtol
            )
        else:
            assert not hasattr(ours, attribute)
    if X is not None and hasattr(reference, "best_estimator_"):
        np.testing.assert_array_equal(
            ours.best_estimator_.predict(X), reference.best_estimator_.predict(X)
        )


def assert_same_column(actual, expected, key, rtol=1e-12):
    if key == "params":
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert a.keys() == e.keys()
            for name in e:
                assert_same_value(a[name], e[name])
        return
    if isinstance(expected, np.ma.MaskedArray):
        np.testing.assert_array_equal(
            np.ma.getmaskarray(actual), np.ma.getmaskarray(expected)
        )
        # Masked entries hold uninitialised memory: compare the others only.
        unmasked = ~np.ma.getmaskarray(expected)
        for a, e in zip(
            np.ma.getdata(actual)[unmasked],
            np.ma.getdata(expected)[unmasked],
            strict=True,
        ):
            assert_same_value(a, e, rtol)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, key
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, equal_nan=True)
    else:
        np.testing.assert_array_equal(actual, expected)


def assert_same_value(actual, expected, rtol=1e-12):
    if hasattr(expected, "get_params"):  # an estimator used as a parameter
        assert actual is expected or repr(actual) == repr(expected)
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(actual)
    elif isinstance(expected, float):
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for name in expected:
            assert_same_value(actual[name], expected[name], rtol)
    else:
        assert actual == expected


def _scorer_repr(scorer):
    if isinstance(scorer, dict):
        return {name: _scorer_repr(value) for name, value in scorer.items()}
    # Some scorers of older scikit-learn have the default repr, with an address.
    return re.sub(r" at 0x[0-9a-f]+", "", repr(scorer))
