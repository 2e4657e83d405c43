"""What fits say on the engines reaches the client: warnings, text, callbacks."""

import re
import warnings

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_validate

from sklearn_ipp import IPyParallelGridSearchCV

from ._sklearn_compare import assert_same_search, fit_both

X, Y = make_classification(n_samples=150, n_features=6, random_state=0)
GRID = {"C": [0.1, 1.0]}


def _slow_to_converge():
    return LogisticRegression(max_iter=2)


def test_fit_warnings_are_issued_on_the_client(client):
    ours = IPyParallelGridSearchCV(_slow_to_converge(), GRID, cv=3, client=client)
    reference = GridSearchCV(_slow_to_converge(), GRID, cv=3)
    ours_warnings, reference_warnings = fit_both(ours, reference, X, Y)
    # The 6 fits' warnings and the refit's, with their category and text.
    assert len(ours_warnings) == 7
    assert ours_warnings == reference_warnings
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        IPyParallelGridSearchCV(_slow_to_converge(), GRID, client=client).fit(X, Y)


def test_the_users_filters_decide_as_in_process(client):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        IPyParallelGridSearchCV(_slow_to_converge(), GRID, client=client).fit(X, Y)
    assert not [r for r in records if r.category is ConvergenceWarning]
    # A warning made an error fails its fit, as in-process: all of them here.
    errors = []
    for search in (
        IPyParallelGridSearchCV(_slow_to_converge(), GRID, cv=3, client=client),
        GridSearchCV(_slow_to_converge(), GRID, cv=3),
    ):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=ConvergenceWarning)
            with pytest.raises(ValueError, match="All the 6 fits failed") as info:
                search.fit(X, Y)
        errors.append(re.sub(r", line \d+, in ", ", line N, in ", str(info.value)))
    assert errors[0] == errors[1]
    assert "ConvergenceWarning: lbfgs failed to converge" in errors[0]


def test_once_per_location_as_in_process(client):
    def count(fit):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("default")
            fit()
        return len([r for r in records if r.category is ConvergenceWarning])

    ours = count(
        lambda: IPyParallelGridSearchCV(_slow_to_converge(), GRID, client=client).fit(
            X, Y
        )
    )
    theirs = count(lambda: GridSearchCV(_slow_to_converge(), GRID).fit(X, Y))
    assert ours == theirs


def _verbose_lines(text):
    # The fits' times differ from run to run.
    return sorted(
        re.sub(r"total time=\s*[\d.]+s", "total time=Ts", line)
        for line in text.splitlines()
        if line.startswith("[CV")
    )


def test_verbose_lines_of_the_fits_are_printed_on_the_client(client, capsys):
    kwargs = {"cv": 3, "verbose": 3}
    estimator = LogisticRegression()
    ours = IPyParallelGridSearchCV(estimator, GRID, client=client, **kwargs).fit(X, Y)
    ours_lines = _verbose_lines(capsys.readouterr().out)
    reference = GridSearchCV(estimator, GRID, **kwargs).fit(X, Y)
    reference_lines = _verbose_lines(capsys.readouterr().out)
    assert len(ours_lines) == 6
    assert ours_lines == reference_lines
    assert_same_search(ours, reference, X)


def _talks(i):
    print(f"task {i} says hello")
    warnings.warn(f"task {i} warns", UserWarning, stacklevel=1)
    return i


def test_the_backend_brings_back_warnings_and_text(client, capsys):
    with parallel_config(backend="ipyparallel", client=client):
        with pytest.warns(UserWarning) as records:
            out = Parallel(n_jobs=-1)(delayed(_talks)(i) for i in range(4))
        with pytest.warns(ConvergenceWarning):
            cross_validate(_slow_to_converge(), X, Y, cv=2)
    assert out == [0, 1, 2, 3]
    assert sorted(str(r.message) for r in records) == [
        f"task {i} warns" for i in range(4)
    ]
    assert all(r.filename == __file__ for r in records)
    printed = capsys.readouterr().out
    assert sorted(re.findall(r"task \d says hello", printed)) == [
        f"task {i} says hello" for i in range(4)
    ]


def test_the_backend_runs_tasks_under_the_callers_filters(client):
    with (
        parallel_config(backend="ipyparallel", client=client),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("error", message="task 2 warns")
        with pytest.raises(UserWarning, match="task 2 warns") as info:
            Parallel(n_jobs=-1)(delayed(_talks)(i) for i in range(4))
    # Raised in the task, on its engine, as in-process.
    assert "Traceback on the engine" in str(info.value.__cause__)


def test_filters_travel_by_name_and_those_of_missing_modules_are_left_out():
    import pickle
    import types

    from sklearn_ipp._output import current_warning_filters, engine_warning_filters

    module = types.ModuleType("client_only_warnings")
    module.ClientOnlyWarning = type(
        "ClientOnlyWarning", (UserWarning,), {"__module__": "client_only_warnings"}
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=module.ClientOnlyWarning)
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        sent = pickle.loads(pickle.dumps(current_warning_filters()))
    resolved = engine_warning_filters(sent)
    # The client-only category cannot be imported here: that filter is left out.
    assert len(resolved) == len(sent) - 1
    assert resolved[0][:3] == ("ignore", None, ConvergenceWarning)
    assert not any(f[2] is module.ClientOnlyWarning for f in resolved)


try:  # scikit-learn >= 1.9
    from sklearn.callback import ScoringMonitor
    from sklearn.callback._transport import open_listener, send
except ImportError:
    ScoringMonitor = None


class Recording:
    """A callback sending every hook to its listener, as scikit-learn's own do."""

    def __init__(self):
        self.record = []
        self._handle = open_listener(self.record.append, owner=self)

    def __getstate__(self):
        return {**self.__dict__, "record": []}

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        send(
            self._handle, {"hook": "begin", "estimator": estimator, "context": context}
        )

    def on_fit_task_end(self, estimator, context, **kwargs):
        message = {"hook": "end", "estimator": estimator, "context": context}
        send(self._handle, message)


# Callbacks came with scikit-learn 1.9: older ones have no test to run.
if ScoringMonitor is not None:

    def test_callbacks_get_the_messages_of_fits_on_engines(client):
        def logs(search_class, **kwargs):
            monitor = ScoringMonitor(scoring="accuracy")
            inner = LogisticRegression(max_iter=5).set_callbacks(monitor)
            search = search_class(inner, {"C": [0.1, 1.0, 10.0]}, cv=3, **kwargs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                search.fit(X, Y)
            return [
                # The log is named after the search's class.
                (
                    log.estimator_name.replace("IPyParallel", ""),
                    sorted(map(repr, log.data)),
                )
                for log in monitor.get_logs(select="all")
            ]

        ours = logs(IPyParallelGridSearchCV, client=client)
        reference = logs(GridSearchCV)
        assert len(ours) == len(reference) > 0
        assert ours == reference
        assert np.sum([len(data) for _, data in ours]) > 9

    def test_hooks_of_fits_on_engines_name_the_users_own_search(client):
        from sklearn.base import BaseEstimator, ClassifierMixin

        class MayFail(ClassifierMixin, BaseEstimator):  # sent by value
            def __init__(self, fail=False):
                self.fail = fail

            def fit(self, X, y):
                self.classes_ = np.unique(y)
                if self.fail:
                    raise RuntimeError("MayFail failed")
                return self

            def predict(self, X):
                return np.zeros(len(X), dtype=int)

        counts = []
        for search_class, kwargs in (
            (IPyParallelGridSearchCV, {"client": client}),
            (GridSearchCV, {}),
        ):
            callback = Recording()
            search = search_class(
                MayFail(), {"fail": [False, True]}, cv=2, **kwargs
            ).set_callbacks(callback)
            with pytest.warns(FitFailedWarning, match="2 fits failed"):
                search.fit(X, Y)
            evaluations = [
                entry
                for entry in callback.record
                if entry["context"].task_name == "candidate-split-evaluation"
            ]
            assert len(evaluations) == 2 * 2 * 2  # begin and end of 4 fits
            assert all(entry["estimator"] is search for entry in callback.record)
            counts.append(
                sorted((e["hook"], e["context"].task_name) for e in callback.record)
            )
        assert counts[0] == counts[1]
