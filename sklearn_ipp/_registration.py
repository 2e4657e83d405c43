"""The joblib backend named 'ipyparallel', registered when sklearn_ipp loads."""

from joblib import register_parallel_backend

from ._backend import ClusterBackend

__all__ = ["register_backend"]


def register_backend(name="ipyparallel", client=None, make_default=False, **options):
    """Register sklearn_ipp's joblib backend under ``name``.

    Importing sklearn_ipp registers it as ``'ipyparallel'``, replacing
    ipyparallel's own backend of that name, which sends the data with every
    task. Inside ``with parallel_backend('ipyparallel'):`` or
    ``parallel_config(backend='ipyparallel')``, unchanged scikit-learn code
    runs on the cluster: arrays of at least ``max_nbytes`` in the tasks are
    written once per ``with`` block into a private store that the engines
    memory-map read-only, and sklearn's cross-validation tasks use the fold
    store of :class:`IPyParallelGridSearchCV`.

    Parameters
    ----------
    name : str, default="ipyparallel"
        The name to use in ``parallel_backend(name)``.
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as in :func:`sklearn_ipp.resolve_cluster`, resolved when
        the backend is first used. A backend this package connected or
        started is closed with it; a cluster it did not start is never
        stopped.
    make_default : bool, default=False
        Make it joblib's default backend.
    **options
        ``store_dir`` and ``max_nbytes`` of the backend (see
        :class:`sklearn_ipp._backend.ClusterBackend`); ``parallel_backend``
        can pass them too.

    Examples
    --------
    >>> from joblib import parallel_backend
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.svm import SVC
    >>> import sklearn_ipp  # registers 'ipyparallel'
    >>> X, y = load_iris(return_X_y=True)
    >>> with parallel_backend("ipyparallel"):  # doctest: +SKIP
    ...     cross_val_score(SVC(), X, y, n_jobs=-1)
    """
    defaults = {"client": client, **options}

    def factory(**backend_params):
        # parallel_backend(name, client=...) overrides what was registered.
        return ClusterBackend(**{**defaults, **backend_params})

    register_parallel_backend(name, factory, make_default=make_default)
