"""scikit-learn model selection on an ipyparallel cluster.

Model selection trains many models on the same data. sklearn_ipp runs that
work on the engines of an ipyparallel cluster and moves the data once per host,
where every engine memory-maps one read-only copy.
"""

from ._backend import register_backend
from ._cluster import (
    ClusterConnection,
    get_client,
    resolve_cluster,
    stop_local_cluster,
)
from ._engines import (
    check_engines,
    engine_facts,
    engines_memory,
    hosts_free_memory,
    one_engine_per_host,
)
from ._exceptions import (
    BackendStoppedError,
    CheckpointWarning,
    ClusterNotFoundError,
    ControllerLostError,
    EngineLostError,
    EngineTimeoutError,
    EngineVersionError,
    FitTimeoutError,
    StoreError,
    TimeBudgetError,
)
from ._learning_curve import learning_curve, validation_curve
from ._optuna_search import IPyParallelOptunaSearchCV
from ._plot import (
    LearningCurveDisplay,
    ParameterBoxplotDisplay,
    ScoreHeatmapDisplay,
    ValidationCurveDisplay,
)
from ._search import (
    IPyParallelGridSearchCV,
    IPyParallelHalvingGridSearchCV,
    IPyParallelHalvingRandomSearchCV,
    IPyParallelRandomizedSearchCV,
)
from ._version import __version__  # noqa: F401  (the package version)

__all__ = [  # noqa: RUF022 (grouped by topic, as in the documentation)
    # Model selection on the cluster
    "IPyParallelGridSearchCV",
    "IPyParallelRandomizedSearchCV",
    "IPyParallelHalvingGridSearchCV",
    "IPyParallelHalvingRandomSearchCV",
    "IPyParallelOptunaSearchCV",
    "learning_curve",
    "validation_curve",
    # Plots (matplotlib, the "plot" extra)
    "LearningCurveDisplay",
    "ParameterBoxplotDisplay",
    "ScoreHeatmapDisplay",
    "ValidationCurveDisplay",
    # joblib backend
    "register_backend",
    # Connecting to a cluster
    "ClusterConnection",
    "get_client",
    "resolve_cluster",
    "stop_local_cluster",
    "SameSessionEngineSetLauncher",
    # Facts about the engines
    "check_engines",
    "engine_facts",
    "engines_memory",
    "hosts_free_memory",
    "one_engine_per_host",
    # Errors
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


def __getattr__(name):
    # The launcher subclasses ipyparallel's, which this package otherwise
    # imports only once it connects to a cluster.
    if name == "SameSessionEngineSetLauncher":
        from ._launcher import SameSessionEngineSetLauncher

        return SameSessionEngineSetLauncher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Unchanged scikit-learn code runs on the cluster inside
# ``with parallel_backend("ipyparallel")``.
register_backend()
