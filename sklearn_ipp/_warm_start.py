"""Halving rounds that continue the models of the round before.

Successive halving with an iteration-counting resource (``n_estimators``,
``max_iter``) fits a promoted candidate again from scratch with more of it,
although the model it fitted in the round before, on the same split, is one
``warm_start`` away. Here each fit of a round saves its model in its host's
store; the same candidate's fit on the same split in the next round loads
it, sets ``warm_start=True`` and fits only the trees or iterations it lacks.

Continuing gives the model a fit from scratch would (checked to the last
bit) only for some estimators and settings (``continuation_plan``); every
other fit runs from scratch, as scikit-learn's does. A fit whose model is
missing (saved on another host, lost with its engine, not saved for want
of room) or whose continuation fails in any way runs from scratch too: a
missing model costs time, never a different result. A continued fit's
``fit_time`` is its model's whole training time, as a fit from scratch
would report it.

The client side: ``continuation_plan`` and ``Rounds``. The engine side:
``fit_and_score_continued``.
"""

import functools
import hashlib
import numbers
import os
import pickle
import shutil
import socket
import threading

import joblib
from sklearn.base import clone
from sklearn.model_selection import _validation

from ._fit_and_score import FIT_AND_SCORE_SIGNATURE, split_arguments
from ._output import said_unless_failed
from ._store import (
    _check_private_file,
    _open_no_follow,
    check_private_directory,
    write_atomically,
)
from ._worker import with_read_only_hint

__all__ = [
    "EXACT",
    "ContinuedFit",
    "Rounds",
    "continuation_plan",
    "fit_and_score_continued",
]

_FORESTS = {
    ("sklearn.ensemble._forest", name): "n_estimators"
    for name in (
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
    )
}
_GRADIENT_BOOSTING = {
    ("sklearn.ensemble._gb", name): "n_estimators"
    for name in ("GradientBoostingClassifier", "GradientBoostingRegressor")
}
_HIST_GRADIENT_BOOSTING = {
    ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", name): "max_iter"
    for name in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")
}
# (module, class) -> the parameter counting its iterations: the estimators
# whose continued fit was checked to give the model of a fit from scratch
# (predict_proba equal to the bit, with subsampling, feature subsampling,
# out-of-bag scores and early stopping), given the conditions of
# _not_exact. Exact classes only: a subclass may fit otherwise. Named, not
# imported, so that importing sklearn_ipp does not import sklearn.ensemble.
EXACT = {**_FORESTS, **_GRADIENT_BOOSTING, **_HIST_GRADIENT_BOOSTING}

# A model is saved only while the store's filesystem keeps this fraction of
# its size free after it: the data and the fits need the memory more.
MIN_FREE_FRACTION = 0.25

_HOSTNAME = socket.gethostname()


# The client side ------------------------------------------------------------


def continuation_plan(estimator, resource, mode, parameters=None):
    """Say whether a halving fit may continue the model of the round before.

    Parameters
    ----------
    estimator : estimator
        The search's estimator.
    resource : str
        The halving search's ``resource``.
    mode : bool or "always"
        ``warm_start_rounds``: True continues where that is exact, "always"
        wherever the estimator has ``warm_start``, False never.
    parameters : dict or None
        A candidate's parameters, set on a clone of the estimator first.

    Returns
    -------
    path : tuple of str or None
        The names of the pipeline steps leading to the estimator whose
        parameter ``resource`` is (empty: the estimator itself); None when
        the fit runs from scratch.
    reason : str or None
        Why it runs from scratch, when it does (and ``mode`` is not False).
    """
    if not mode:
        return None, None
    if resource == "n_samples":
        return None, (
            "resource='n_samples' fits each round on other samples, which no "
            "model of the round before was fitted on"
        )
    if parameters:
        try:
            estimator = clone(estimator).set_params(**parameters)
        except Exception:
            # Its fit fails as in scikit-learn, with scikit-learn's error.
            return None, None
    *path, name = resource.split("__")
    final = estimator
    for step in path:
        if not _is_pipeline(final) or final.steps[-1][0] != step:
            return None, (
                f"resource={resource!r} is a parameter of neither the "
                "estimator nor the last step of a Pipeline"
            )
        final = final.steps[-1][1]
    if mode == "always":
        if "warm_start" not in final.get_params(deep=False):
            return None, f"{type(final).__name__} has no warm_start parameter"
        return tuple(path), None
    reason = _not_exact(final, name)
    return (None, reason) if reason is not None else (tuple(path), None)


def _is_pipeline(estimator):
    cls = type(estimator)
    return (cls.__module__, cls.__qualname__) == ("sklearn.pipeline", "Pipeline")


def _not_exact(final, name):
    """Why continuing ``final`` on its parameter ``name`` may change a result."""
    kind = (type(final).__module__, type(final).__qualname__)
    counted = EXACT.get(kind)
    label = type(final).__name__
    if counted is None:
        return (
            f"{label} is not known to fit the same model when continued "
            "(warm_start_rounds='always' continues it anyway)"
        )
    if counted != name:
        return f"{name} does not count the iterations of {label} ({counted} does)"
    params = final.get_params(deep=False)
    random_state = params.get("random_state")
    if not (random_state is None or isinstance(random_state, numbers.Integral)):
        return (
            f"the random_state of {label} is a RandomState instance, which each "
            "fit draws from: give an int"
        )
    if kind in _FORESTS and params.get("class_weight") in (
        "balanced",
        "balanced_subsample",
    ):
        return (
            f"{label} warns when continued with class_weight={params['class_weight']!r}"
        )
    if kind in _GRADIENT_BOOSTING and params.get("n_iter_no_change") is not None:
        return (
            f"the early stopping of {label} (n_iter_no_change) starts over "
            "when a fit is continued"
        )
    return None


class _ModelFile:
    """A saved model in the client's store, removed as stored data is."""

    def __init__(self, directory, name):
        self.name = name
        self.path = os.path.join(directory, name)


class Rounds:
    """Which fits of a halving search continue a saved model, and the models.

    Thread-safe: tasks are planned in the caller's thread, their replies
    taken in the scheduling thread.

    Parameters
    ----------
    estimator : estimator
        The search's estimator.
    resource : str
        The search's ``resource``.
    mode : bool or "always"
        ``warm_start_rounds``.
    store : Store
        The store the models are saved in (on other hosts, in their copy).
    remove : callable
        ``remove(ref)``: remove a stored file on every host.
    """

    def __init__(self, estimator, resource, mode, store, remove):
        self._estimator, self.resource, self.mode = estimator, resource, mode
        self._store, self._remove = store, remove
        self._lock = threading.Lock()
        self._last = False  # the round running is the last one
        self.top_level = None  # asynchronous halving's last level
        # id(parameters) -> (parameters, token, path): a candidate's plan,
        # made once for all its splits in the round.
        self._plans = {}
        self._saved = {}  # (split key, token) -> (resource value, _ModelFile)
        # Why fits ran from scratch; resource="n_samples" says so at once,
        # its fits having no resource among their parameters.
        self.note = None
        if resource == "n_samples":
            self.note = continuation_plan(estimator, resource, mode)[1]
        self.n_continued = 0  # fits that continued a saved model
        self.n_fits = 0  # fits planned, continued or not
        self.units_fitted = 0  # trees or iterations the fits added, engines said
        self.units_planned = 0  # those fits from scratch would have added

    def new_round(self, candidate_params, last):
        """Start a round of ``candidate_params``; drop the models of the rest.

        ``last``: no round follows, so nothing is saved.
        """
        kept = {self._token(params) for params in candidate_params}
        with self._lock:
            self._last = last
            self._plans.clear()
        self._drop(lambda token: token not in kept)

    def drop(self, candidate_params):
        """Remove the saved models of ``candidate_params``: none will continue."""
        dropped = {self._token(params) for params in candidate_params}
        self._drop(dropped.__contains__)

    def _drop(self, is_dropped):
        with self._lock:
            keys = [key for key in self._saved if is_dropped(key[1])]
            files = [self._saved.pop(key)[1] for key in keys]
        for model in files:
            self._remove(model)

    def spec(self, task):
        """Return the ``ContinuedFit`` of a fit task, or None to run it as is."""
        arguments = task.arguments
        parameters = arguments.get("parameters")
        if parameters is None or self.resource not in parameters:
            return None
        fit_params = arguments.get("fit_params") or {}
        with self._lock:
            planned = self._plans.get(id(parameters))
        if planned is None:
            path, reason = continuation_plan(
                self._estimator, self.resource, self.mode, parameters
            )
            if path is not None and any(
                name.split("__")[-1] == "monitor" for name in fit_params
            ):
                # Called again from the first stage it fits.
                path, reason = None, "a monitor is passed to fit"
            planned = (parameters, self._token(parameters), path)
            with self._lock:
                self._plans[id(parameters)] = planned
                if reason is not None and self.note is None:
                    self.note = reason
        _, token, path = planned
        if path is None:
            return None
        value = parameters[self.resource]
        key = (task.split_key, token)
        with self._lock:
            self.n_fits += 1
            self.units_planned += value if isinstance(value, numbers.Integral) else 0
            saved = self._saved.get(key)
            last = self._last
        driven = getattr(task, "driven", None)
        if driven is not None:  # asynchronous halving: each fit knows its level
            last = driven[1] == self.top_level
        load = None
        if saved is not None and saved[0] < value:
            load = saved[1].name
        save = None
        if not last:
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
            save = f"model-{digest}-{value}.pkl"
        if load is None and save is None:
            return None
        return ContinuedFit(self, key, value, path, load, save)

    def took(self, spec, info):
        """Record what a fit's engine did with its model (from its reply)."""
        continued, saved, units = info
        with self._lock:
            self.n_continued += bool(continued)
            self.units_fitted += units
            old = self._saved.pop(spec.key, None)
            if saved:
                directory = self._store.path
                self._saved[spec.key] = (spec.value, _ModelFile(directory, spec.save))
        if old is not None and old[1].name != spec.save:
            self._remove(old[1])

    def _token(self, parameters):
        """Name a candidate by its parameters but the resource."""
        others = {k: v for k, v in parameters.items() if k != self.resource}
        return joblib.hash(sorted(others.items(), key=lambda item: item[0]))


class ContinuedFit:
    """What a fit task's engine does with saved models: pickled with the task.

    Attributes
    ----------
    key : tuple
        The split and candidate (client side only: not pickled).
    value : int
        The resource of this fit.
    path : tuple of str
        Pipeline steps leading to the estimator that is continued.
    load, save : str or None
        Names, in the host's store, of the model to continue and of the one
        to save.
    """

    def __init__(self, rounds, key, value, path, load, save):
        self.rounds, self.key, self.value = rounds, key, value
        self.path, self.load, self.save = path, load, save
        store = rounds._store
        self.directory, self.host_dirs = store.path, store.host_dirs

    def __reduce__(self):
        return _EngineSpec, (
            self.directory,
            dict(self.host_dirs),
            self.path,
            self.load,
            self.save,
        )

    def took(self, info):
        self.rounds.took(self, info)


# The engine side -------------------------------------------------------------


class _EngineSpec:
    """A ``ContinuedFit`` as the engine gets it."""

    def __init__(self, directory, host_dirs, path, load, save):
        self.path, self.load, self.save = path, load, save
        self.directory = host_dirs.get(_HOSTNAME, directory)


def fit_and_score_continued(spec, *args, **kwargs):
    """Run scikit-learn's ``_fit_and_score``, continuing a saved model if any.

    Takes ``_fit_and_score``'s arguments. Returns ``(info, result)``: info is
    ``(continued, saved, units)``, whether the fit continued a saved model,
    whether its model was saved, and the trees or iterations it fitted.
    """
    arguments = FIT_AND_SCORE_SIGNATURE.bind(*args, **kwargs).arguments
    loaded = _load(spec) if spec.load is not None else None
    result, before = None, 0
    if loaded is not None:
        model, seconds, final = loaded
        before = _units(model)  # the trees or iterations it had
        try:
            with said_unless_failed():
                result = _fit(arguments, spec, model, True, final)
            if "fit_time" in result:  # the model's whole training time
                result["fit_time"] += seconds
        except Exception:
            result = None  # as scikit-learn would: from scratch
    continued = result is not None
    if not continued:
        before = 0
        result = _fit(arguments, spec, None, False)
    fitted = result.pop("estimator", None)
    if arguments.get("return_estimator"):
        result["estimator"] = fitted
    saved, units = False, 0
    if fitted is not None and result.get("fit_error") is None:
        continued_step = _final(fitted, spec.path)
        units = _units(continued_step) - before
        if spec.save is not None:
            saved = _save(spec, continued_step, result.get("fit_time", 0.0))
    return (continued, saved, units), with_read_only_hint(result)


def _fit(arguments, spec, model, raise_errors, final=False):
    """``_fit_and_score`` on the task's estimator, or on ``model`` continued.

    A ``final`` model is scored as it is: its ``fit`` does nothing.
    """
    run = dict(arguments, return_estimator=True)
    if raise_errors:
        run["error_score"] = "raise"  # any failure: the fit runs from scratch
    if model is not None:
        model.set_params(warm_start=True)
        if final:
            model.fit = functools.partial(_fitted, model)
        if spec.path:
            # A copy: should the continued fit fail, the fit from scratch
            # runs on the task's own estimator.
            estimator = run["estimator"] = clone(run["estimator"])
            parent = _final(estimator, spec.path[:-1])
            steps = list(parent.steps)
            steps[-1] = (steps[-1][0], model)
            parent.steps = steps
        else:
            run["estimator"] = model
    args, kwargs = split_arguments(run)
    try:
        return _validation._fit_and_score(*args, **kwargs)
    finally:
        if final:
            del model.fit  # the class's again, and the model picklable


def _fitted(model, *args, **kwargs):
    """Return ``model``: the ``fit`` of a model that more iterations leave as is."""
    return model


def _final(estimator, path):
    for _ in path:
        estimator = estimator.steps[-1][1]
    return estimator


def _units(model):
    """Trees or iterations a fitted model holds."""
    if hasattr(model, "n_iter_") and hasattr(model, "_predictors"):
        return int(model.n_iter_)
    estimators = getattr(model, "estimators_", None)
    if estimators is None:
        return 0
    return len(estimators)


def _state(model):
    """Say what a fit from scratch with more iterations would make of a model.

    ``"continue"``: the same as the model continued. ``"final"``: the model
    itself, a boosting model whose early stopping ended its fit, or would
    have had it not run out of iterations: with more, it stops there again.
    ``"scratch"``: unknown, the fit runs from scratch.
    """
    if getattr(model, "do_early_stopping_", False):
        should_stop = getattr(model, "_should_stop", None)
        use_validation = getattr(model, "_use_validation_data", None)
        if should_stop is None or use_validation is None:
            return "scratch"
        scores = model.validation_score_ if use_validation else model.train_score_
        if model.n_iter_ < model.max_iter or should_stop(list(scores)):
            return "final"
    # Gradient boosting that something stopped early.
    n_fitted = getattr(model, "n_estimators_", None)
    if n_fitted is not None and n_fitted < model.n_estimators:
        return "scratch"
    return "continue"


def _load(spec):
    """Return ``(model, fit seconds, final)`` saved under ``spec.load``, or None.

    None also when the model cannot be continued exactly (see ``_state``).
    """
    try:
        check_private_directory(spec.directory)
        path = os.path.join(spec.directory, spec.load)
        with open(path, "rb", opener=_open_no_follow) as f:
            _check_private_file(os.fstat(f.fileno()), path)
            model, seconds = pickle.load(f)
    except Exception:  # gone, or unreadable: the fit runs from scratch
        return None
    state = _state(model)
    return None if state == "scratch" else (model, seconds, state == "final")


def _save(spec, model, seconds):
    """Save ``model`` under ``spec.save`` if the store has room; say if saved."""
    try:
        check_private_directory(spec.directory)
        data = pickle.dumps((model, seconds), protocol=pickle.HIGHEST_PROTOCOL)
        usage = shutil.disk_usage(spec.directory)
        if usage.free - len(data) < MIN_FREE_FRACTION * usage.total:
            return False
        path = os.path.join(spec.directory, spec.save)
        write_atomically(path, _write_bytes, data)
    except Exception:  # no room, or a model that does not pickle: not kept
        return False
    return True


def _write_bytes(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
