"""A pipeline's leading steps, fitted once per split for every candidate.

A search over a ``Pipeline`` usually varies its last step while the steps
before it (a scaler, a PCA, a vectorizer, a ``ColumnTransformer``) stay the
same: scikit-learn fits them again for every candidate on every split. Here
the candidates of a split whose leading steps have the same parameters share
one *prefix*: a task fits those steps once on the split's train rows (a
``PrefixTask``), their transformed train and test rows are stored like a fold
(``PrefixFold``), and each candidate fits and scores only its remaining steps
on them, with scikit-learn's own ``_fit_and_score``.

Reuse happens only where it cannot change a result (``prefix_plan``); a
candidate whose remaining steps fail in any way runs the whole pipeline
instead, on the split's own fold, so that its error, warnings and scores are
scikit-learn's. The candidate's estimator is an ordinary fitted ``Pipeline``;
its ``fit_time`` and ``score_time`` include its share of the prefix's.

The client side: ``prefix_plan``, ``PrefixFold`` and the message items. The
engine side: ``fit_prefix`` and ``fit_and_score_on_prefix``.
"""

import functools
import hashlib
import numbers
import pickle
import time

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.model_selection import _validation
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing
from sklearn.utils.metaestimators import _safe_split
from sklearn.utils.validation import _check_method_params

from ._fit_and_score import (
    FIT_AND_SCORE_SIGNATURE,
    calling,
    indexable,
    split_arguments,
)
from ._output import said_unless_failed
from ._pickling import dumps
from ._store import RowRange, _sparse_nbytes
from ._worker import with_read_only_hint

__all__ = [
    "PrefixFold",
    "PrefixOutput",
    "fit_and_score_on_prefix",
    "fit_prefix",
    "prefix_plan",
]

try:  # scikit-learn's scorers, which see the estimator only through its methods
    from sklearn.metrics._scorer import (
        _BaseScorer,
        _MultimetricScorer,
        _PassthroughScorer,
    )
except ImportError:  # pragma: no cover - a scikit-learn that moved them
    _BaseScorer = _MultimetricScorer = _PassthroughScorer = ()

try:
    from sklearn.utils._metadata_requests import _routing_enabled
except ImportError:  # pragma: no cover

    def _routing_enabled():
        return True  # unknown: never reuse with fit parameters


# Steps with a ``random_state`` that their configuration never uses: PCA's
# exact solvers, LogisticRegression's solvers that do not shuffle.
_IGNORED_RANDOM_STATE = {
    ("sklearn.decomposition._pca", "PCA"): ("svd_solver", {"full", "covariance_eigh"}),
    ("sklearn.linear_model._logistic", "LogisticRegression"): (
        "solver",
        {"lbfgs", "newton-cg", "newton-cholesky"},
    ),
}


# The client side ------------------------------------------------------------


def prefix_plan(arguments):
    """Return how a ``_fit_and_score`` task's pipeline splits, and why not.

    Parameters
    ----------
    arguments : dict
        The task's ``_fit_and_score`` arguments by name.

    Returns
    -------
    plan : (tuple of int, bytes) or None
        The number of leading steps of each nested pipeline that make the
        prefix (the top one first; a last step that is itself a pipeline
        is opened), and a token of everything the prefix's fit depends on
        besides the split: its steps and their parameters. None when the
        task must run whole: see :ref:`repeated-work`.
    reason : str or None
        Why a pipeline searched over several candidates runs whole, where
        the user can change it; else None.
    """
    estimator = arguments.get("estimator")
    progress = arguments.get("candidate_progress")
    if not isinstance(estimator, Pipeline) or not progress or progress[1] < 2:
        return None, None  # reuse needs a pipeline and several candidates
    if type(estimator) is not Pipeline:
        return None, f"{type(estimator).__name__} is a subclass of Pipeline"
    if not _is_plain_scorer(arguments.get("scorer")):
        # It may look at the steps, or at the data it is given.
        return None, (
            "the scoring is a callable of the user's: make it a scorer with "
            "sklearn.metrics.make_scorer"
        )
    fit_params = arguments.get("fit_params") or {}
    if fit_params and _routing_enabled():
        return None, "metadata routing is enabled and fit parameters are passed"
    try:
        candidate = clone(estimator)
        parameters = arguments.get("parameters")
        if parameters:
            candidate.set_params(**clone(parameters, safe=False))
    except Exception:
        return None, None  # the whole pipeline gives the error, as in sklearn
    levels, steps = _split(candidate)
    if levels is None:
        return None, steps
    for path, step in steps:
        drawing = None if _is_passthrough(step) else _drawing_random_numbers(step)
        if drawing is not None:
            return None, (
                f"step {path!r} ({type(step).__name__}) has "
                f"{type(drawing).__name__}(random_state="
                f"{drawing.get_params(deep=False)['random_state']!r}): give it "
                "an int random_state to fit it once per split"
            )
    names = {name for name, _ in candidate.steps}
    if any(key.split("__", 1)[0] not in names or "__" not in key for key in fit_params):
        return None, None  # Pipeline's own error, from the whole pipeline
    try:
        token = hashlib.sha256(dumps((levels, steps))).digest()
    except Exception:
        return None, None
    return (levels, token), None


def _split(pipeline):
    """Return ``(levels, prefix_steps)`` of a candidate pipeline.

    ``prefix_steps`` are ``(parameter path, step)`` in the order they are
    fitted; a last step that is itself a ``Pipeline`` is opened, so that
    its own leading steps join the prefix. ``(None, reason)`` when there is
    no prefix to share, ``reason`` saying why where the user may change it.
    """
    levels, steps, path = [], [], ""
    while True:
        if type(pipeline) is not Pipeline or len(pipeline.steps) < 1:
            return None, None
        for name in ("memory", "verbose", "transform_input"):
            value = getattr(pipeline, name, None)
            if value if name == "verbose" else value is not None:
                return None, f"the pipeline has {name}={value!r}"
        *leading, (last_name, last) = pipeline.steps
        levels.append(len(leading))
        steps += [(path + name, step) for name, step in leading]
        if type(last) is Pipeline:
            pipeline, path = last, f"{path}{last_name}__"
            continue
        if _is_passthrough(last) or all(_is_passthrough(s) for _, s in steps):
            return None, None
        return tuple(levels), steps


def _is_passthrough(step):
    return step is None or (isinstance(step, str) and step == "passthrough")


def _is_plain_scorer(scorer):
    if isinstance(scorer, _MultimetricScorer):
        return all(_is_plain_scorer(s) for s in scorer._scorers.values())
    return isinstance(scorer, (_BaseScorer, _PassthroughScorer))


def _drawing_random_numbers(step):
    """Return the estimator in ``step`` whose fits may differ, or None.

    That is one with a ``random_state`` that is neither an int nor unused by
    its configuration: ``None`` draws from numpy's global generator, and a
    ``RandomState`` instance moves on at every fit, so scikit-learn's fits
    of such a step differ from candidate to candidate.
    """
    pending = [step]
    while pending:
        obj = pending.pop()
        if not hasattr(obj, "get_params") or isinstance(obj, type):
            continue
        params = obj.get_params(deep=False)
        if "random_state" in params:
            seed = params["random_state"]
            seeded = isinstance(seed, (numbers.Integral, np.integer)) and not (
                isinstance(seed, bool)
            )
            if not (seeded or (seed is None and _ignores_random_state(obj))):
                return obj
        for value in params.values():
            if isinstance(value, (list, tuple)):
                for item in value:
                    pending.extend(item if isinstance(item, tuple) else [item])
            else:
                pending.append(value)
    return None


def _ignores_random_state(obj):
    cls = type(obj)
    rule = _IGNORED_RANDOM_STATE.get((cls.__module__, cls.__name__))
    return rule is not None and getattr(obj, rule[0], None) in rule[1]


class PrefixFold:
    """The fitted prefix of one split and one group of candidates.

    Its "storing" is the prefix task: the prefix starts when the split's
    fold is stored, and is stored once the task's output is written. Then
    its candidates can run; they also need the split's fold, kept stored
    while they run, where a candidate whose remaining steps fail runs whole.

    Parameters
    ----------
    key : tuple
        ``("prefix", split key, levels, token, fit parameters' hashes)``.
    base : Fold
        The split's fold.
    levels : tuple of int
        See :func:`prefix_plan`.
    rows : int or (ndarray, ndarray)
        The rows of ``base`` its candidates train and test on, as
        :meth:`Fold.rewrite` takes them.
    """

    is_prefix = True

    def __init__(self, key, base, levels, rows):
        self.key = key
        self.base = base
        self.levels = levels
        self.rows = rows
        self.sequence = base.sequence
        self.refs = None  # name -> StoredData, once stored
        self.plain = False  # its candidates run whole (the prefix failed)
        self.storing = False  # its prefix task is queued, running or done
        self.n_outstanding = 0  # candidate tasks queued or running
        self.n_candidates = 0  # candidate tasks that used or will use it
        self.output = None  # what fitting the prefix said (a TaskOutput)
        self.fit_seconds = self.test_seconds = 0.0
        self.nbytes = 0

    @property
    def stored(self):
        return self.refs is not None or self.plain

    def materialise(self, write, output):
        """Store the prefix task's ``PrefixOutput``: its candidates can run.

        ``output`` None: the prefix could not be fitted (or gives data that
        is not an array): its candidates run whole.
        """
        if output is None:
            self.plain = True
            return
        base = self.base
        refs = {"X": write(output.X)}
        if output.steps is not None:
            refs["steps"] = write(output.steps)
        if output.X_train is not None:
            refs["X_train"] = write(output.X_train)
        rows = self._row_numbers()
        if rows is not None:
            if base.y is not None:
                refs["y"] = write(indexable(base.y), rows)
            for name, value in base.aligned_params.items():
                refs["param:" + name] = write(indexable(value), rows)
        self.fit_seconds, self.test_seconds = output.fit_seconds, output.test_seconds
        self.nbytes = sum(
            getattr(data, "nbytes", 0) or _sparse_nbytes(data)
            for data in (output.X, output.X_train, output.steps)
            if data is not None
        )
        self.n_train, self.n_test = output.n_train, output.n_test
        self.refs = refs

    def _row_numbers(self):
        """Return the data's row numbers of the stored rows, if not the fold's.

        y and the sample-aligned parameters are then stored again, in the
        prefix's order. Asked once the fold is stored, when its train rows
        are final (see ``FoldIndex._fold_sharing_rows``).
        """
        rows, base = self.rows, self.base
        if isinstance(rows, tuple):  # the whole data: the split's rows of it
            return np.concatenate(rows)
        if rows != len(base.train):  # the first rows of the fold's train rows
            return np.concatenate([base.train[:rows], base.test])
        return None

    def release(self, remove):
        refs, self.refs = self.refs, None
        for ref in (refs or {}).values():
            remove(ref)

    def prefix_item(self, function, args, kwargs):
        """Return ``(function, args, kwargs)`` of the task that fits the prefix.

        ``args, kwargs`` are those of one of its candidates, pointed at the
        split's fold.
        """
        return (
            calling(function, functools.partial(fit_prefix, self.levels)),
            args,
            kwargs,
        )

    def candidate_item(self, function, args, kwargs):
        """Return ``(function, args, kwargs)`` of a candidate, run on the prefix.

        ``args, kwargs`` point at the split's fold: where the candidate runs
        whole should its remaining steps fail.
        """
        if self.plain:
            return function, args, kwargs
        refs = {
            "levels": self.levels,
            "X": self.refs["X"],
            "X_train": self.refs.get("X_train"),
            "steps": self.refs.get("steps"),
            "train": RowRange(0, self.n_train),
            "test": RowRange(self.n_train, self.n_train + self.n_test),
            "params": {
                name[len("param:") :]: ref
                for name, ref in self.refs.items()
                if name.startswith("param:")
            },
        }
        if "y" in self.refs:  # else the fold's own y, in the same row order
            refs["y"] = self.refs["y"]
        on_prefix = functools.partial(fit_and_score_on_prefix, refs)
        return calling(function, on_prefix), args, kwargs

    def charge(self, result):
        """Add the candidate's share of the prefix's times to ``result``."""
        share = max(1, self.n_candidates)
        result["fit_time"] = result.get("fit_time", 0.0) + self.fit_seconds / share
        result["score_time"] = result.get("score_time", 0.0) + self.test_seconds / share


# The engine side -------------------------------------------------------------


class PrefixOutput:
    """What fitting a prefix gives back: its rows transformed, its steps fitted.

    Attributes
    ----------
    X : ndarray or CSR matrix
        The split's train rows as the fit transformed them, then its test
        rows transformed.
    X_train : ndarray, CSR matrix or None
        The train rows transformed by the fitted steps, which train scores
        are computed on (some steps' ``fit_transform`` differs from their
        ``transform``); None when the search does not want train scores.
    steps : ndarray of uint8 or None
        The fitted steps, pickled; None unless the candidates return their
        estimator (they need nothing else of them: their scorers are
        scikit-learn's, which call the pipeline's methods, and those skip
        the prefix's steps).
    fit_seconds, test_seconds : float
        The time of the fit (and of transforming the train rows), and of
        transforming the test rows.
    n_train, n_test : int
    """

    def __init__(self, X, X_train, steps, fit_seconds, test_seconds, n_train, n_test):
        self.X, self.X_train, self.steps = X, X_train, steps
        self.fit_seconds, self.test_seconds = fit_seconds, test_seconds
        self.n_train, self.n_test = n_train, n_test


def fit_prefix(levels, *args, **kwargs):
    """Fit a candidate's prefix on its split; return a ``PrefixOutput`` or None.

    Takes ``_fit_and_score``'s arguments. None when the transformed rows are
    not a numeric array or a CSR matrix (a DataFrame, say), which the store
    would not give back as they are: the candidates then run whole.
    """
    arguments = FIT_AND_SCORE_SIGNATURE.bind(*args, **kwargs).arguments
    estimator = _configured(arguments)
    steps = _prefix_steps(estimator, levels)
    X, y, train, test = (arguments[name] for name in ("X", "y", "train", "test"))
    X_train, y_train = _safe_split(estimator, X, y, train)
    X_test, _ = _safe_split(estimator, X, y, test, train)
    fit_params = _check_method_params(
        X, params=arguments.get("fit_params") or {}, indices=train
    )
    prefix = Pipeline([(f"step{i}", step) for i, (_, step) in enumerate(steps)])
    routed = {}
    for key, value in fit_params.items():
        for i, (path, _) in enumerate(steps):
            if key.startswith(path + "__"):
                routed[f"step{i}__{key[len(path) + 2 :]}"] = value
    start = time.perf_counter()
    Xt_train = prefix.fit_transform(X_train, y_train, **routed)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    Xt_test = prefix.transform(X_test)
    test_seconds = time.perf_counter() - start
    Xt_scored = (
        prefix.transform(X_train) if arguments.get("return_train_score") else None
    )
    stacked = _stacked(Xt_train, Xt_test)
    if stacked is None or (Xt_scored is not None and _stacked(Xt_scored) is None):
        return None
    fitted = None
    if arguments.get("return_estimator"):
        fitted = np.frombuffer(dumps([step for _, step in steps]), dtype=np.uint8)
    return PrefixOutput(
        stacked,
        Xt_scored,
        fitted,
        fit_seconds,
        test_seconds,
        Xt_train.shape[0],
        Xt_test.shape[0],
    )


def _stacked(*blocks):
    """Return the blocks one above the other, if the store keeps them as they are."""
    if all(isinstance(b, np.ndarray) and type(b) is np.ndarray for b in blocks):
        if any(b.dtype.hasobject or b.ndim != 2 for b in blocks):
            return None
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    if all(sp.issparse(b) and b.format == "csr" for b in blocks):
        if len({type(b) for b in blocks}) != 1:
            return None
        return sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    return None


def fit_and_score_on_prefix(refs, *args, **kwargs):
    """Fit and score a candidate's remaining steps on its fitted prefix.

    Takes ``_fit_and_score``'s arguments, pointed at the split's fold.
    Returns ``(True, result)``, or ``(False, result)`` when the candidate ran
    whole: its remaining steps failed (with its error, warnings and output
    then scikit-learn's own), or it had to.
    """
    try:
        with said_unless_failed():
            arguments = FIT_AND_SCORE_SIGNATURE.bind(*args, **kwargs).arguments
            return True, _on_prefix(refs, arguments)
    except Exception:
        pass
    return False, with_read_only_hint(_validation._fit_and_score(*args, **kwargs))


def _on_prefix(refs, arguments):
    estimator = _configured(arguments)
    fitted = None
    if refs["steps"] is not None:  # the estimator is returned: with them
        fitted = pickle.loads(np.asarray(refs["steps"]).tobytes())
    pipelines = _with_fitted_prefix(estimator, refs["levels"], fitted)
    tail = dict(arguments)
    tail.update(
        estimator=estimator,
        X=refs["X"],
        train=refs["train"],
        test=refs["test"],
        error_score="raise",  # any failure: the candidate runs whole
        return_train_score=False,
    )
    if "y" in refs:
        tail["y"] = refs["y"]
    for group in ("fit_params", "score_params"):
        if tail.get(group) and refs["params"]:
            tail[group] = {
                name: refs["params"].get(name, value)
                for name, value in tail[group].items()
            }
    try:
        for pipeline, _ in pipelines:
            pipeline.__class__ = _PrefixFitted
        tail_args, tail_kwargs = split_arguments(tail)
        result = _validation._fit_and_score(*tail_args, **tail_kwargs)
        if arguments.get("return_train_score"):
            X_train = refs["X_train"]
            y = tail["y"]
            y_train = None if y is None else _safe_indexing(y, tail["train"])
            score_params = _check_method_params(
                refs["X"], params=tail.get("score_params") or {}, indices=tail["train"]
            )
            result["train_scores"] = _validation._score(
                estimator, X_train, y_train, arguments["scorer"], score_params, "raise"
            )
    finally:
        for pipeline, _ in pipelines:
            pipeline.__class__ = Pipeline
            del pipeline._sklearn_ipp_n_fitted
    return result


def _configured(arguments):
    """Return the task's estimator with the candidate's parameters set."""
    estimator = arguments["estimator"]
    parameters = arguments.get("parameters")
    if parameters is not None:
        estimator = estimator.set_params(**clone(parameters, safe=False))
    return estimator


def _levels(estimator, levels):
    """``(pipeline, n_prefix_steps)`` of each nested pipeline, the top first."""
    pipelines, pipeline = [], estimator
    for n_steps in levels:
        pipelines.append((pipeline, n_steps))
        pipeline = pipeline.steps[-1][1]
    return pipelines


def _prefix_steps(estimator, levels):
    steps = []
    for pipeline, n_steps in _levels(estimator, levels):
        steps += pipeline.steps[:n_steps]
    return steps


def _with_fitted_prefix(estimator, levels, fitted):
    """Mark the prefix's steps fitted; return the pipelines.

    ``fitted``, the fitted steps, replace the prefix's own; None leaves them
    unfitted, never to be used: fitting, predicting and scoring skip them.
    """
    pipelines = _levels(estimator, levels)
    fitted = None if fitted is None else iter(fitted)
    for pipeline, n_steps in pipelines:
        pipeline.steps = list(pipeline.steps)
        if fitted is not None:
            for i in range(n_steps):
                pipeline.steps[i] = (pipeline.steps[i][0], next(fitted))
        pipeline._sklearn_ipp_n_fitted = n_steps
    return pipelines


class _PrefixFitted(Pipeline):
    """A pipeline whose leading steps are fitted and whose data went through them.

    Only while a candidate is fitted and scored on its prefix's stored rows:
    fitting, predicting and scoring skip the leading steps, and setting the
    candidate's parameters (done already, on the steps now fitted) changes
    nothing. Its class is set back to ``Pipeline`` right after.
    """

    def set_params(self, **params):
        return self

    def _iter(self, with_final=True, filter_passthrough=True):
        n_fitted = getattr(self, "_sklearn_ipp_n_fitted", 0)
        for item in super()._iter(with_final, filter_passthrough):
            if item[0] >= n_fitted:
                yield item
