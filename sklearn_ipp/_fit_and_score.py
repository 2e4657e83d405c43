"""scikit-learn's fit-and-score task: recognised, read by name, put back.

Both the folds (``_folds.py``) and the pipeline prefixes (``_prefix.py``)
rewrite the arguments of scikit-learn's ``_fit_and_score``; what those
arguments are, and how the task's data is indexed, is described once, here.
"""

import copy
import inspect

import scipy.sparse as sp
from sklearn.model_selection import _validation

__all__ = [
    "FIT_AND_SCORE_SIGNATURE",
    "calling",
    "fit_and_score_arguments",
    "indexable",
    "split_arguments",
]

_FIT_AND_SCORE = _validation._fit_and_score
FIT_AND_SCORE_SIGNATURE = inspect.signature(_FIT_AND_SCORE)


def fit_and_score_arguments(function, args, kwargs):
    """Return the arguments by name of a ``_fit_and_score`` task, else None.

    scikit-learn wraps the functions it hands to joblib in ``_FuncWrapper``
    (to carry its config to the workers); the wrapped function is compared.
    """
    target = getattr(function, "function", function)
    if target is not _FIT_AND_SCORE:
        return None
    return FIT_AND_SCORE_SIGNATURE.bind(*args, **kwargs).arguments


def split_arguments(arguments):
    """``_fit_and_score``'s arguments by name, back to ``(args, kwargs)``."""
    args, kwargs = [], {}
    for name, parameter in FIT_AND_SCORE_SIGNATURE.parameters.items():
        if name not in arguments:
            continue
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
            args.append(arguments[name])
        elif parameter.kind is parameter.VAR_KEYWORD:
            kwargs.update(arguments[name])
        else:
            kwargs[name] = arguments[name]
    return tuple(args), kwargs


def indexable(data):
    """Return sparse data as CSR, which rows can index.

    scikit-learn's ``_make_indexable`` turns it so before it splits fit
    parameters.
    """
    return data.tocsr() if sp.issparse(data) else data


def calling(function, replacement):
    """Return ``function`` calling ``replacement`` instead of what it wraps.

    scikit-learn hands joblib its tasks wrapped (``_FuncWrapper``) to carry
    its configuration and warning filters to the workers; the copy keeps
    them, with the replacement inside.
    """
    if hasattr(function, "function"):
        wrapper = copy.copy(function)
        wrapper.function = replacement
        return wrapper
    return replacement
