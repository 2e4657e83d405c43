"""What a task says besides its result: warnings, printed text, callback messages.

In-process, a fit's warnings reach the user's filters and
``warnings.catch_warnings`` blocks, what it prints (scikit-learn's ``verbose``
lines) reaches the user's standard output, and scikit-learn's callbacks
(1.9 and later) deliver their messages to listeners of the user's callback
objects. On an engine all three would stay there: scikit-learn's own
callback transport is a UNIX socket, which reaches only processes of its
host and filesystem.

On the engine, ``captured()`` collects them around each task into a
``TaskOutput``, sent back with the task's outcome (None when the task said
nothing, which costs nothing). On the client, ``TaskOutput.replay`` issues
the warnings again with their category, message and origin, writes the text
to ``sys.stdout`` and ``sys.stderr``, and hands the callback messages to
their listeners, before the task's result is handed over, as in-process.
"""

import contextlib
import functools
import importlib
import io
import pickle
import sys
import threading
import warnings

import cloudpickle

from ._pickling import _within

__all__ = [
    "TaskOutput",
    "captured",
    "current_warning_filters",
    "engine_warning_filters",
    "keep_callback_listeners",
    "said_unless_failed",
]


class TaskOutput:
    """What one task warned, printed and told its callbacks, in order.

    Attributes
    ----------
    warnings : list of (Warning, type, str, int)
        Each warning's message, category, file name and line number.
    stdout, stderr : str
        The text the task wrote.
    callback_messages : list of (str, bytes)
        The address of a callback listener and the pickled message for it,
        in which the task's ``caller`` (the search whose fit the task is
        part of) is a reference to the client's.
    """

    __slots__ = ("callback_messages", "stderr", "stdout", "warnings")

    def __init__(self):
        self.warnings = []
        self.stdout = self.stderr = ""
        self.callback_messages = []

    def __bool__(self):
        return bool(
            self.warnings or self.stdout or self.stderr or self.callback_messages
        )

    def replay(self, caller=None):
        """Say it all again in this process, as the task would have in-process.

        ``caller`` is the task's ``caller`` argument on the client: the
        user's own search, which the callbacks' messages name instead of
        the engine's copy of it, as in-process.

        Warnings go through ``warnings.warn_explicit`` with the module that
        raised them, so that the user's filters and ``catch_warnings``
        blocks treat them as in-process. Their registry of warnings already
        shown is the task's own: scikit-learn runs each task in a
        ``catch_warnings`` block of the caller's filters, which clears the
        registries, so that a ``default`` action shows a warning once per
        task. Callback messages go to the listener of this process they were
        meant for; one that is closed since is not there.
        """
        registry = {}
        for message, category, filename, lineno in self.warnings:
            warnings.warn_explicit(
                message,
                category,
                filename,
                lineno,
                module=_module_of(filename),
                registry=registry,
            )
        if self.stdout:
            sys.stdout.write(self.stdout)
        if self.stderr:
            sys.stderr.write(self.stderr)
        if self.callback_messages:
            consumers = _transport()._message_consumers
            for address, data in self.callback_messages:
                consumer = dict.get(consumers, address)
                if consumer is not None:
                    consumer(_MessageUnpickler(io.BytesIO(data), caller).load())


_module_files = {}  # file name -> module name, of the modules seen


def _module_of(filename):
    """Return the name of the imported module whose file is ``filename``.

    What ``warnings.warn`` takes from the frame that warns in-process, and
    what filters with a ``module`` match.
    """
    if filename not in _module_files:
        for name, value in list(sys.modules.items()):
            path = getattr(value, "__file__", None)
            if path:
                _module_files.setdefault(path, name)
        _module_files.setdefault(filename, None)
    module = _module_files[filename]
    return module if module in sys.modules else None


# The task's caller, in callback messages.
_CALLER = "sklearn_ipp_caller"


class _MessagePickler(cloudpickle.Pickler):
    """cloudpickle (a task's classes may be sent by value), with the caller kept out."""

    def __init__(self, file, caller):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._caller = caller

    def persistent_id(self, obj):
        if obj is self._caller and obj is not None:
            return _CALLER
        return None


class _MessageUnpickler(pickle.Unpickler):
    def __init__(self, file, caller):
        super().__init__(file)
        self._caller = caller

    def persistent_load(self, pid):
        if pid != _CALLER:
            raise pickle.UnpicklingError(f"Unknown reference {pid!r}.")
        return self._caller


def current_warning_filters():
    """Return the warning filters in force here, to send with the tasks.

    Free-threaded Python 3.14 keeps them per context, behind
    ``warnings._get_filters``, as scikit-learn reads them. A category is
    sent by name when its module is one the engines import (a filter for a
    package they lack cannot match there, and is left out by
    ``engine_warning_filters``), the class itself when it is sent by value.
    """
    get_filters = getattr(warnings, "_get_filters", None)
    filters = get_filters() if get_filters is not None else warnings.filters
    by_value = {"__main__", *cloudpickle.list_registry_pickle_by_value()}
    sent = []
    for action, message, category, module, lineno in filters:
        name = getattr(category, "__module__", "__main__")
        if not _within(name, by_value):
            category = _Category(name, category.__qualname__)
        sent.append((action, message, category, module, lineno))
    return sent


class _Category:
    """A warning category by name, found on the engine if it is there."""

    __slots__ = ("module", "qualname")

    def __init__(self, module, qualname):
        self.module, self.qualname = module, qualname

    def resolve(self):
        """Return the class, or None when this process cannot import it."""
        try:
            value = importlib.import_module(self.module)
            for part in self.qualname.split("."):
                value = getattr(value, part)
        except Exception:
            return None
        return value


def engine_warning_filters(filters):
    """Return the client's filters with their categories found here; or None."""
    if filters is None:
        return None
    resolved = []
    for action, message, category, module, lineno in filters:
        if isinstance(category, _Category):
            category = category.resolve()
            if category is None:
                continue  # no warning of that class can happen here
        resolved.append((action, message, category, module, lineno))
    return resolved


# Engine side ---------------------------------------------------------------


class _CallbackRouting(dict):
    """scikit-learn's listeners of this process, plus the capture of a task.

    Replaces ``sklearn.callback._transport._message_consumers``, which its
    ``send`` looks a listener up in: a listener of this process is used as
    before; while a task runs, a message for any other is kept for the
    client instead of going to its socket.
    """

    def __init__(self, consumers):
        super().__init__(consumers)
        self.capture = None  # the messages of the running task
        self.caller = None  # and its caller
        self.lock = threading.Lock()

    def get(self, address, default=None):
        consumer = dict.get(self, address)
        if consumer is not None or self.capture is None:
            return consumer if consumer is not None else default
        messages, caller, lock = self.capture, self.caller, self.lock

        def keep(message):
            # Pickled now, as the socket would: later changes are not sent.
            buffer = io.BytesIO()
            _MessagePickler(buffer, caller).dump(message)
            with lock:
                messages.append((address, buffer.getvalue()))

        return keep


def _callback_routing():
    """Return the engine's routing of callback messages; None before 1.9."""
    transport = _transport()
    if transport is None:
        return None
    consumers = getattr(transport, "_message_consumers", None)
    if consumers is None:
        return None
    if not isinstance(consumers, _CallbackRouting):
        consumers = transport._message_consumers = _CallbackRouting(consumers)
    return consumers


class _Reachable:
    def close(self):
        pass


@functools.cache
def _transport():
    """Return scikit-learn's callback transport; None before scikit-learn 1.9."""
    try:
        import sklearn.callback._transport as transport
    except ImportError:
        return None
    return transport if hasattr(transport, "Client") else None


@contextlib.contextmanager
def keep_callback_listeners():
    """Around unpickling tasks: callbacks keep the client's listeners.

    scikit-learn's ``ScoringMonitor`` checks on unpickling whether its
    listener can be reached, and opens one of its own in this process when
    not (on another host), where its messages would stay. They are reached
    through the task's output instead: the check must say yes.
    """
    transport = _transport()
    if transport is None:
        yield
        return
    client = transport.Client
    transport.Client = lambda *args, **kwargs: _Reachable()
    try:
        yield
    finally:
        transport.Client = client


@contextlib.contextmanager
def captured(caller=None, warning_filters=None):
    """Collect what the task run in the block says; yield its ``TaskOutput``.

    ``caller`` is the task's ``caller`` argument, named by reference in its
    callback messages (see ``TaskOutput.replay``). ``warning_filters`` are
    the caller's ``warnings.filters`` (``engine_warning_filters``), which
    the task runs under, as it
    would in-process: a warning made an error fails the task, an ignored
    one is not even sent (scikit-learn 1.9 does the same for its own tasks;
    earlier versions, and plain joblib tasks, run under the worker's).
    """
    output = TaskOutput()
    stdout, stderr = io.StringIO(), io.StringIO()
    routing = _callback_routing()
    if routing is not None:
        # Blocks may nest (a fit on a pipeline prefix collects what it says
        # inside its task's block): the outer one gets its routing back.
        outer = routing.capture, routing.caller
        routing.capture, routing.caller = output.callback_messages, caller
    try:
        with (
            warnings.catch_warnings(record=True) as records,
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            if warning_filters is not None:
                warnings.resetwarnings()  # also forgets the warnings shown
                warnings.filters[:] = warning_filters
            yield output
    finally:
        if routing is not None:
            routing.capture, routing.caller = outer
        output.stdout, output.stderr = stdout.getvalue(), stderr.getvalue()
        output.warnings = [
            (record.message, record.category, record.filename, record.lineno)
            for record in records
        ]


@contextlib.contextmanager
def said_unless_failed():
    """Say what the block warned and printed only if it does not fail.

    A task that falls back to scikit-learn's own way when a faster one
    fails (a candidate whose remaining steps fail on a pipeline prefix runs
    whole; a continued fit runs from scratch) says it all again, as
    scikit-learn would have.
    """
    with captured() as output:
        yield
    output.replay()
