"""Pickling of task messages: fast when possible, by value when needed.

cloudpickle sends classes and functions defined in ``__main__`` by value, so
that engines can run what a notebook defined; but it runs Python code for
every object and is many times slower than the standard pickler on the
thousands of small objects of a batch of tasks. The standard pickler is used
unless the message refers to a class or function that engines could not
import: one from ``__main__``, from a module registered with
``cloudpickle.register_pickle_by_value``, or one defined inside a function.

Either way, large numpy arrays anywhere in a message (arguments, attributes of
estimators, blocks of DataFrames) can be swapped for references into the
store: ``persist(array)`` writes the array once and returns a ``StoredData``,
which unpickles on the engine as a read-only memory map.
"""

import io
import pickle
import types
from collections import ChainMap

import cloudpickle
import numpy as np

__all__ = ["dumps"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _NeedsCloudpickle(Exception):
    pass


def _persisted(obj, persist, min_nbytes):
    """Return the reduction of a stored copy of ``obj``, or None to pickle it."""
    if (
        persist is not None
        and type(obj) in (np.ndarray, np.memmap)
        and obj.nbytes >= min_nbytes
        and not obj.dtype.hasobject
    ):
        return persist(obj).__reduce__()
    return None


class _ReferencePickler(pickle.Pickler):
    """The C pickler, refusing what only cloudpickle can send."""

    def __init__(self, file, by_value_modules, persist, min_nbytes):
        super().__init__(file, protocol=_PROTOCOL)
        self._by_value_modules = by_value_modules
        self._persist = persist
        self._min_nbytes = min_nbytes

    def reducer_override(self, obj):
        # Classes and functions are pickled as references to their module.
        if isinstance(obj, (type, types.FunctionType)):
            module = getattr(obj, "__module__", None) or "__main__"
            # As cloudpickle decides: the module or any package above it.
            parts = module.split(".")
            if any(
                ".".join(parts[:depth]) in self._by_value_modules
                for depth in range(1, len(parts) + 1)
            ):
                raise _NeedsCloudpickle
            return NotImplemented
        reduction = _persisted(obj, self._persist, self._min_nbytes)
        return NotImplemented if reduction is None else reduction


def _code_reduce(code):
    """Reduce a code object as cloudpickle does, keeping its file name.

    cloudpickle 3.1 and later write ``<dynamic-code>`` instead, so that the
    tracebacks of code sent by value (a FitFailedWarning's, an estimator's
    error) would no longer name the user's file; the line numbers travel
    either way.
    """
    constructor, args = _CLOUDPICKLE_CODE_REDUCE(code)
    return _code_with_filename, (constructor, args, code.co_filename)


def _code_with_filename(constructor, args, filename):
    code = constructor(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


_CLOUDPICKLE_CODE_REDUCE = cloudpickle.Pickler.dispatch_table[types.CodeType]


class _StoringCloudPickler(cloudpickle.Pickler):
    """cloudpickle, with large arrays swapped for store references."""

    dispatch_table = ChainMap(
        {types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table
    )

    def __init__(self, file, persist, min_nbytes):
        super().__init__(file, protocol=_PROTOCOL)
        self._persist = persist
        self._min_nbytes = min_nbytes

    def reducer_override(self, obj):
        reduction = _persisted(obj, self._persist, self._min_nbytes)
        if reduction is not None:
            return reduction
        return super().reducer_override(obj)


def dumps(obj, persist=None, min_nbytes=2**20):
    """Pickle ``obj`` for an engine, with cloudpickle only where needed.

    Parameters
    ----------
    obj : object
        What to send.
    persist : callable or None, default=None
        ``persist(array) -> StoredData``; None sends arrays in the message.
    min_nbytes : int, default=1 MB
        Arrays at least this large are given to ``persist``.

    Returns
    -------
    payload : bytes
        Readable with ``pickle.loads`` wherever cloudpickle is installed.
    """
    by_value = {"__main__", *cloudpickle.list_registry_pickle_by_value()}
    buffer = io.BytesIO()
    try:
        _ReferencePickler(buffer, by_value, persist, min_nbytes).dump(obj)
    except Exception:  # by-value references, lambdas, local classes...
        buffer = io.BytesIO()
        _StoringCloudPickler(buffer, persist, min_nbytes).dump(obj)
    return buffer.getvalue()
