"""Pickling of task messages: fast when possible, by value when needed.

cloudpickle sends classes and functions defined in ``__main__`` by value, so
that engines can run what a notebook defined; but it runs Python code for
every object and is many times slower than the standard pickler on the
thousands of small objects of a batch of tasks. The standard pickler is used
unless the message refers to a class or function that engines could not
import: one from ``__main__``, from a module registered with
``cloudpickle.register_pickle_by_value``, or one defined inside a function.

Which modules the engines lack is learnt from them: when an engine cannot
load a message because a module the client imported is missing there (a
script's sibling module, a test module, a pure-Python package installed on
the client only), ``send_by_value`` registers that module with cloudpickle,
and the message is sent again. Code sent by value keeps its file name and
carries its source lines, so that tracebacks name the user's file and line
and quote it on any host, as in-process.

Either way, large numpy arrays anywhere in a message (arguments, attributes of
estimators, blocks of DataFrames) can be swapped for references into the
store: ``persist(array)`` writes the array once and returns a ``StoredData``,
which unpickles on the engine as a read-only memory map.
"""

import functools
import importlib.machinery
import io
import linecache
import logging
import os
import pickle
import sys
import threading
import types
from collections import ChainMap

import cloudpickle
import numpy as np

__all__ = ["by_value_generation", "dumps", "send_by_value"]

logger = logging.getLogger("sklearn_ipp")

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
            if _within(module, self._by_value_modules):
                raise _NeedsCloudpickle
            return NotImplemented
        reduction = _persisted(obj, self._persist, self._min_nbytes)
        return NotImplemented if reduction is None else reduction


def _within(module, modules):
    """Whether ``module`` or a package above it is one of ``modules``.

    As cloudpickle decides what a registered module covers.
    """
    parts = module.split(".")
    return any(".".join(parts[:depth]) in modules for depth in range(1, len(parts) + 1))


def _code_reduce(code):
    """Reduce a code object as cloudpickle does, keeping its file and source.

    cloudpickle 3.1 and later write ``<dynamic-code>`` instead, so that the
    tracebacks of code sent by value (a FitFailedWarning's, an estimator's
    error) would no longer name the user's file; the line numbers travel
    either way. The source lines of the code go along, for the engines whose
    host does not have the file (or a notebook's cell).
    """
    constructor, args = _CLOUDPICKLE_CODE_REDUCE(code)
    return _code_with_filename, (
        constructor,
        args,
        code.co_filename,
        _source_lines(code),
    )


@functools.lru_cache(maxsize=4096)
def _source_lines(code):
    """``((line number, text), ...)`` of the lines ``code`` itself runs."""
    numbers = {code.co_firstlineno}
    numbers.update(line for _, _, line in code.co_lines() if line is not None)
    lines = ((n, linecache.getline(code.co_filename, n)) for n in sorted(numbers))
    return tuple((n, text) for n, text in lines if text)


def _code_with_filename(constructor, args, filename, lines=()):
    code = constructor(*args)
    if lines:
        _remember_source(filename, lines)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


def _remember_source(filename, lines):
    """Give ``linecache`` the lines of a file this host does not have.

    Entries without a modification time are never dropped by
    ``linecache.checkcache``; a file this host has is read from disk.
    """
    if os.path.exists(filename):
        return
    entry = linecache.cache.get(filename)
    known = list(entry[2]) if entry is not None and len(entry) == 4 else []
    last = max(number for number, _ in lines)
    known += ["\n"] * (last - len(known))
    for number, text in lines:
        known[number - 1] = text
    linecache.cache[filename] = (sum(map(len, known)), None, known, filename)


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


_registering = threading.Lock()
_generation = 0  # how many modules send_by_value has registered


def by_value_generation():
    """Return a number that grows each time ``send_by_value`` registers a module.

    A message pickled before it grew may lack what is now sent by value.
    """
    return _generation


def send_by_value(name):
    """Send the client's module ``name`` by value from now on, if it can be.

    Called when an engine could not import ``name``. Returns False, changing
    nothing, when the client has not imported it either, when it is already
    sent by value (so it is not what the engine lacks), or when it is
    compiled code, which only installing it on the engines' hosts can fix.
    """
    module = sys.modules.get(name) if name else None
    if module is None or name == "__main__":
        return False
    with _registering:
        if _within(name, set(cloudpickle.list_registry_pickle_by_value())):
            return False
        if not _is_pure_python(module):
            return False
        cloudpickle.register_pickle_by_value(module)
        global _generation
        _generation += 1
    logger.info(
        "The engines cannot import module %r: its classes and functions are "
        "sent by value.",
        name,
    )
    return True


def _is_pure_python(module):
    """Whether ``module``, and every file of it if a package, is Python source."""
    filename = getattr(module, "__file__", None)
    if not filename or not filename.endswith(".py"):
        return False
    paths = getattr(module, "__path__", None)
    if not paths:
        return True
    compiled = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for path in paths:
        for _, _, files in os.walk(path):
            if any(file.endswith(compiled) for file in files):
                return False
    return True


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
