"""Exceptions raised by sklearn_ipp.

Each derives from the built-in exception a caller would already catch for the
same kind of failure, so ``except TimeoutError`` keeps working.
"""

__all__ = ["ClusterNotFoundError", "EngineTimeoutError", "EngineVersionError"]


class ClusterNotFoundError(ConnectionError):
    """No running ipyparallel cluster matches what was asked for."""


class EngineTimeoutError(TimeoutError):
    """Fewer engines registered with the controller than were expected in time."""


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
