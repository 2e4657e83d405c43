"""Exceptions raised by sklearn_ipp.

Each derives from the built-in exception a caller would already catch for the
same kind of failure, so ``except TimeoutError`` keeps working.
"""

__all__ = [
    "BackendStoppedError",
    "CheckpointWarning",
    "ClusterNotFoundError",
    "ControllerLostError",
    "EngineLostError",
    "EngineTimeoutError",
    "EngineVersionError",
    "FitTimeoutError",
    "StoreError",
    "TimeBudgetError",
]


class ClusterNotFoundError(ConnectionError):
    """No running ipyparallel cluster matches what was asked for."""


class EngineTimeoutError(TimeoutError):
    """Fewer engines registered with the controller than were expected in time."""


class FitTimeoutError(TimeoutError):
    """A fit ran past ``fit_timeout`` and was stopped.

    The fit counts as failed, as a fit that raised: its scores are
    ``error_score``, and with ``error_score="raise"`` the search raises this
    error. Its message names the limit, the engine and its host.
    """


class TimeBudgetError(TimeoutError):
    """``time_budget`` ended a search before any candidate was evaluated.

    A candidate counts once every split of it has finished: with none, no
    best candidate can be chosen. Its message says how many fits had
    finished and how long they took.
    """


class EngineVersionError(RuntimeError):
    """An engine runs a different version of a package than the client.

    Attributes
    ----------
    mismatches : list of tuple
        One ``(engine_id, hostname, package, engine_version, client_version)``
        tuple per mismatch; ``engine_version`` is None when the package is
        missing on the engine.
    facts : dict
        What :func:`sklearn_ipp.engine_facts` found on every engine.
    """

    def __init__(self, message, mismatches, facts):
        super().__init__(message)
        self.mismatches = mismatches
        self.facts = facts


class _CallCut:
    """An error that ended a call part-way: how far it had come."""

    def __init__(self, message, n_done=None, n_submitted=None):
        super().__init__(message)
        self.n_done = n_done
        self.n_submitted = n_submitted


class EngineLostError(_CallCut, RuntimeError):
    """The engines running a call died or left, and no engine took over.

    Raised when a task's engine died more often than ``retries`` allows, or
    when the cluster had no engine left for a while. Results that finished
    are kept (in ``checkpoint_dir``, or on the search object), so calling
    ``fit`` again runs only the rest.

    Attributes
    ----------
    n_done : int
        Tasks that finished before the error.
    n_submitted : int
        Tasks handed to the cluster.
    """


class ControllerLostError(_CallCut, ConnectionError):
    """The controller of the cluster stopped answering during a call.

    Every message goes through the controller: without it no task can end.
    Results that finished are kept (in ``checkpoint_dir``, or on the search
    object), so calling ``fit`` again on a cluster that runs does only the
    rest.

    Attributes
    ----------
    n_done : int
        Tasks that finished before the error.
    n_submitted : int
        Tasks handed to the cluster.
    """


class BackendStoppedError(RuntimeError):
    """The joblib backend cannot run a call: nothing would ever run its tasks.

    Raised at once by a call made after the backend was closed (its search
    or ``with`` block ended), after the ``Parallel`` context that held it
    ended, or after its scheduling thread ended on an error (which is then
    the ``__cause__``); and by the tasks of a call still running when the
    backend was shut down. Make a new ``Parallel`` call inside an open
    ``parallel_config(backend="ipyparallel")`` block.
    """


class StoreError(OSError):
    """The data store cannot be created or written (full, not writable)."""


class CheckpointWarning(UserWarning):
    """A saved result in ``checkpoint_dir`` is not used; its fit runs again.

    The file was not written with this user's checkpoint key (another user's,
    a planted or a corrupted file), is not a regular file of this user's, or
    no longer loads.
    """
