"""The user's own modules on a cluster that cannot import them.

The session cluster's engines run from another directory, with another
``sys.path``: a module beside the user's script, or a package installed on
the client only, is not importable there. Its classes and functions go by
value, and the results, warnings and errors equal scikit-learn's in-process.
"""

import json
import math
import os
import re
import subprocess
import sys
import types

import cloudpickle
import sklearn

from .conftest import on_engine

_MODELS = '''
import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.model_selection import KFold
from sklearn.svm import SVC


class ShrunkSVC(SVC):
    """An SVC fitted on the first rows of each class only."""

    def fit(self, X, y, sample_weight=None):
        if self.C > 50:
            raise ValueError(f"C={self.C} is too large for ShrunkSVC")
        return super().fit(X, y, sample_weight=sample_weight)


def half_accuracy(estimator, X, y):
    return accuracy_score(y, estimator.predict(X)) / 2


class EveryOtherFold(KFold):
    def split(self, X, y=None, groups=None):
        for index, split in enumerate(super().split(X, y, groups)):
            if index % 2 == 0:
                yield split

    def get_n_splits(self, X=None, y=None, groups=None):
        return (self.n_splits + 1) // 2
'''

_SCRIPT = """
import json
import math
import re
import warnings

import numpy as np
from joblib import parallel_config
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, cross_validate

from sklearn_ipp import IPyParallelGridSearchCV, register_backend
from mymodels import EveryOtherFold, ShrunkSVC, half_accuracy

X, y = load_iris(return_X_y=True)
params = dict(
    param_grid={"C": [0.5, 2, 100]},
    scoring=half_accuracy,
    cv=EveryOtherFold(5, shuffle=True, random_state=0),
)


def fit(search):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        search.fit(X, y)
    return search, [str(r.message) for r in records if "fits failed" in str(r.message)]


ours, our_warnings = fit(IPyParallelGridSearchCV(ShrunkSVC(), **params))
theirs, their_warnings = fit(GridSearchCV(ShrunkSVC(), **params))

errors = []
for search in (
    IPyParallelGridSearchCV(ShrunkSVC(), error_score="raise", **params),
    GridSearchCV(ShrunkSVC(), error_score="raise", **params),
):
    try:
        search.fit(X, y)
    except ValueError as exc:
        errors.append(str(exc))

register_backend()
kwargs = dict(scoring=half_accuracy, cv=EveryOtherFold(5), return_estimator=True)
with parallel_config(backend="ipyparallel"):
    cv_ours = cross_validate(ShrunkSVC(C=2), X, y, **kwargs)
cv_theirs = cross_validate(ShrunkSVC(C=2), X, y, **kwargs)

print(json.dumps({
    "scores": [
        ours.cv_results_["mean_test_score"].tolist(),
        theirs.cv_results_["mean_test_score"].tolist(),
    ],
    "best": [ours.best_params_, theirs.best_params_],
    "warnings": [our_warnings, their_warnings],
    "errors": errors,
    "cv_scores": [cv_ours["test_score"].tolist(), cv_theirs["test_score"].tolist()],
    "cv_estimators": [type(e).__module__ + "." + type(e).__name__
                      for e in cv_ours["estimator"]],
}))
"""


_RAISE_LINE = '            raise ValueError(f"C={self.C} is too large for ShrunkSVC")'


def _engine_cwd():
    import os

    return os.getcwd()


def _engine_finds_clientpkg():
    import importlib.util

    return importlib.util.find_spec("clientpkg") is not None


def _without_sklearn_line_numbers(text):
    # In-process, with no callback set, _fit_and_score takes a branch a few
    # lines away from the one the engines take: only scikit-learn's own line
    # numbers may differ, never the user's.
    sklearn_dir = re.escape(os.path.dirname(sklearn.__file__))
    return re.sub(rf'(File "{sklearn_dir}[^"]*", line )\d+', r"\1N", text)


def test_script_beside_its_module_on_a_cluster_started_elsewhere(
    client, tmp_path, ipython_dir
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mymodels.py").write_text(_MODELS)
    (project / "script.py").write_text(_SCRIPT)
    # The engines' working directory is not the script's.
    engine_cwd = client[:].apply_sync(on_engine(_engine_cwd))
    assert str(project) not in engine_cwd
    completed = subprocess.run(
        [sys.executable, "script.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, IPYTHONDIR=ipython_dir),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    ours, theirs = report["scores"]
    assert ours[:2] == theirs[:2]
    assert math.isnan(ours[2]) and math.isnan(theirs[2])
    assert report["best"][0] == report["best"][1]
    # The failing fits' warning quotes the user's file, line and source.
    our_warning, their_warning = report["warnings"]
    assert len(our_warning) == len(their_warning) == 1
    line = _MODELS.splitlines().index(_RAISE_LINE) + 1
    assert f'File "{project / "mymodels.py"}", line {line}, in fit' in our_warning[0]
    assert _RAISE_LINE.strip() in our_warning[0]
    assert _without_sklearn_line_numbers(our_warning[0]) == (
        _without_sklearn_line_numbers(their_warning[0])
    )
    assert report["errors"] == ["C=100 is too large for ShrunkSVC"] * 2
    # The backend, for scikit-learn's own functions.
    cv_ours, cv_theirs = report["cv_scores"]
    assert cv_ours == cv_theirs and len(cv_ours) == 3
    assert report["cv_estimators"] == ["mymodels.ShrunkSVC"] * 3


def test_package_installed_on_the_client_only(client, tmp_path, monkeypatch):
    from joblib import parallel_config
    from sklearn.datasets import load_iris
    from sklearn.model_selection import cross_val_score

    from sklearn_ipp import IPyParallelGridSearchCV, register_backend

    package = tmp_path / "site" / "clientpkg"
    (package / "estimators").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "estimators" / "__init__.py").write_text("")
    (package / "estimators" / "svc.py").write_text(_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    from clientpkg.estimators.svc import ShrunkSVC, half_accuracy

    assert not any(client[:].apply_sync(on_engine(_engine_finds_clientpkg)))
    X, y = load_iris(return_X_y=True)
    try:
        search = IPyParallelGridSearchCV(
            ShrunkSVC(), {"C": [0.5, 2]}, scoring=half_accuracy, client=client
        ).fit(X, y)
        expected = [
            cross_val_score(ShrunkSVC(C=C), X, y, scoring=half_accuracy).mean()
            for C in (0.5, 2)
        ]
        assert search.cv_results_["mean_test_score"].tolist() == expected
        assert type(search.best_estimator_) is ShrunkSVC
        register_backend()
        with parallel_config(backend="ipyparallel"):
            scores = cross_val_score(ShrunkSVC(C=2), X, y, scoring=half_accuracy)
        assert scores.mean() == expected[1]
        # The package above the module, the one the engines lack, is sent.
        assert "clientpkg" in cloudpickle.list_registry_pickle_by_value()
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "clientpkg"]:
            del sys.modules[name]
        if "clientpkg" in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.unregister_pickle_by_value(types.ModuleType("clientpkg"))
