"""Pickling of task messages: fast when possible, by value when needed.

cloudpickle sends classes and functions defined in ``__main__`` by value, so
that engines can run what a notebook defined; but it runs Python code for
every object and is many times slower than the standard pickler on the
thousands of small objects of a batch of tasks. The standard pickler is used
unless the message refers to a class or function that engines could not
import: one from ``__main__``, from a module registered with
``cloudpickle.register_pickle_by_value``, or one defined inside a function.
"""

import io
import pickle
import types

import cloudpickle

__all__ = ["dumps"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _NeedsCloudpickle(Exception):
    pass


class _ReferencePickler(pickle.Pickler):
    """The C pickler, refusing what only cloudpickle can send."""

    def __init__(self, file, by_value_modules):
        super().__init__(file, protocol=_PROTOCOL)
        self._by_value_modules = by_value_modules

    def reducer_override(self, obj):
        # Classes and functions are pickled as references to their module.
        if isinstance(obj, (type, types.FunctionType)):
            module = getattr(obj, "__module__", None) or "__main__"
            if module.split(".")[0] in self._by_value_modules or module in (
                self._by_value_modules
            ):
                raise _NeedsCloudpickle
        return NotImplemented


def dumps(obj):
    """Pickle ``obj`` for an engine, with cloudpickle only where needed.

    Parameters
    ----------
    obj : object
        What to send.

    Returns
    -------
    payload : bytes
        Readable with ``pickle.loads`` wherever cloudpickle is installed.
    """
    by_value = {"__main__", *cloudpickle.list_registry_pickle_by_value()}
    buffer = io.BytesIO()
    try:
        _ReferencePickler(buffer, by_value).dump(obj)
    except Exception:  # by-value references, lambdas, local classes...
        return cloudpickle.dumps(obj, protocol=_PROTOCOL)
    return buffer.getvalue()
