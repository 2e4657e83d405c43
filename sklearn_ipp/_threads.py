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
"""

import contextlib
import os
import sys

__all__ = [
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
    """Limit every BLAS and OpenMP pool of this process while in the block.

    Parameters
    ----------
    n_threads : int or None
        Threads per pool; None leaves the pools as they are. The previous
        limits are restored on exit.
    """
    if n_threads is None:
        yield
        return
    with _thread_controller().limit(limits=n_threads):
        yield


def _thread_controller():
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _controller_modules = len(sys.modules)
    return _controller
