"""How many threads the BLAS and OpenMP pools of an engine may use.

An engine is a plain process: each OpenMP or BLAS library in it sizes its
thread pool to every CPU of the host, so that several engines running
multi-threaded fits (HistGradientBoosting, KMeans, PCA, anything doing linear
algebra) start many times more threads than the host has CPUs, which then
spin against each other. loky limits the pools of its workers to
``cpu_count() // n_jobs`` (joblib's ``inner_max_num_threads``); the engines
get the same: ``max(1, CPUs of the host // engines of the cluster there)``,
set with threadpoolctl around the tasks of every message and undone after
them, so that whatever else runs on the engines keeps its own settings.

Some libraries size their threads themselves, from the CPUs that
``joblib.cpu_count()`` reports, and set that number explicitly on every
call, which overrides any limit set on the pools from outside: LightGBM
(``n_jobs=None`` is ``joblib.cpu_count(only_physical_cores=True)``), and
``n_jobs=-1`` in scikit-learn's estimators. So while the tasks run, that
count is the engine's share too: ``LOKY_MAX_CPU_COUNT``, which joblib reads
at every call, is set to it, unless the engine's environment sets it
already (the user's choice, kept). A thread count the user gave a library
(``n_jobs=4``) is kept. ``os.cpu_count()`` is left as it is: joblib's
physical-core count, which LightGBM asks for, would take a lowered
``os.cpu_count()`` for no limit at all and return every core.
"""

import contextlib
import os
import sys

__all__ = [
    "CPU_COUNT_VARIABLE",
    "THREAD_VARIABLES",
    "limited_threads",
    "thread_environment",
    "threads_per_engine",
]

# What loky sets in its workers' environment (joblib's LokyBackend), read by
# the libraries when they load: OpenMP, OpenBLAS, MKL, BLIS, Apple's
# Accelerate, numba and numexpr.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
# The CPUs joblib.cpu_count() reports, when lower than the host's (loky's
# variable, read at every call).
CPU_COUNT_VARIABLE = "LOKY_MAX_CPU_COUNT"
# Lets the TBB schedulers of several processes share the CPUs (as loky does).
_TBB_VARIABLE = "TBB_ENABLE_IPC"

# The engine's threadpoolctl controller, and how many modules were loaded
# when it was made: making one scans every loaded library (about 6 ms), too
# slow for every message of tiny fits. Native libraries are loaded by
# imports, so a new module means the controller may miss a pool.
_controller = None
_controller_modules = 0


def threads_per_engine(n_cpus, n_engines):
    """Return the threads each of ``n_engines`` engines sharing ``n_cpus`` gets.

    Parameters
    ----------
    n_cpus : int
        CPUs the engines of a host may use.
    n_engines : int
        Engines of the cluster on that host.

    Returns
    -------
    n_threads : int
        ``max(1, n_cpus // n_engines)``, loky's rule.
    """
    return max(1, n_cpus // max(1, n_engines))


def thread_environment(n_engines, environ=None):
    """Return the variables that limit the pools of engines started here.

    For a local cluster of ``n_engines``: every variable of
    ``THREAD_VARIABLES`` that ``environ`` does not set already (a value the
    user chose is kept, as loky keeps it) is set to ``threads_per_engine``.
    Libraries that an engine loads after its last message read them.

    Parameters
    ----------
    n_engines : int
        Engines that will share this host's CPUs.
    environ : mapping or None, default=None
        The environment the engines inherit; None means ``os.environ``.

    Returns
    -------
    variables : dict of str to str
    """
    from joblib import cpu_count

    environ = os.environ if environ is None else environ
    n_threads = str(threads_per_engine(cpu_count(), n_engines))
    variables = {name: n_threads for name in THREAD_VARIABLES if name not in environ}
    if _TBB_VARIABLE not in environ:
        variables[_TBB_VARIABLE] = "1"
    return variables


@contextlib.contextmanager
def limited_threads(n_threads):
    """Limit the threads of this process's libraries while in the block.

    Every BLAS and OpenMP pool gets ``n_threads``, and the CPUs that
    ``joblib.cpu_count()`` reports are ``n_threads`` too, unless
    ``LOKY_MAX_CPU_COUNT`` is set already.

    Parameters
    ----------
    n_threads : int or None
        Threads per pool; None leaves everything as it is. The previous
        limits are restored on exit.
    """
    if n_threads is None:
        yield
        return
    with _thread_controller().limit(limits=n_threads), _cpus_seen(n_threads):
        yield


@contextlib.contextmanager
def _cpus_seen(n_cpus):
    """Make ``joblib.cpu_count()`` say at most ``n_cpus``, physical or not."""
    if CPU_COUNT_VARIABLE in os.environ:
        yield  # the user's limit, which joblib applies already
        return
    value = os.environ[CPU_COUNT_VARIABLE] = str(n_cpus)
    try:
        yield
    finally:
        # Unless a task set a value of its own, which stays as tasks' changes
        # to the engine's environment do.
        if os.environ.get(CPU_COUNT_VARIABLE) == value:
            del os.environ[CPU_COUNT_VARIABLE]


def _thread_controller():
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _controller_modules = len(sys.modules)
    return _controller
