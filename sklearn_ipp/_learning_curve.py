"""Learning and validation curves on the cluster.

scikit-learn's own functions, run under sklearn_ipp's backend: every fit is a
``_fit_and_score`` task, so each cross-validation split is stored once (per
host) and memory-mapped by the engines. The train sets of a learning curve
are prefixes of their split's train set, so every train size trains on a
view of the same stored split (see ``_backend._Fold``): no copy of the data
per train size or per task.
"""

from sklearn import model_selection

from ._backend import DEFAULT_RETRIES, on_cluster
from ._cluster import DEFAULT_TIMEOUT
from ._fit_timeout import check_fit_timeout

__all__ = ["curve_on_cluster", "learning_curve", "validation_curve"]


def curve_on_cluster(
    client, X, store_dir, retries, engine_wait, kwargs, fit_timeout=None
):
    """Return the context that runs a curve's fits on the cluster.

    ``n_jobs`` is removed from the curve's ``kwargs``, since the engines
    decide the parallelism; their ``verbose`` above 0 shows a progress bar.
    """
    kwargs.pop("n_jobs", None)
    return on_cluster(
        client,
        X,
        store_dir=store_dir,
        retries=retries,
        engine_wait=engine_wait,
        verbose=kwargs.get("verbose", 0),
        fit_timeout=check_fit_timeout(fit_timeout),
    )


def learning_curve(
    estimator,
    X,
    y,
    *,
    client=None,
    store_dir=None,
    retries=DEFAULT_RETRIES,
    engine_wait=DEFAULT_TIMEOUT,
    fit_timeout=None,
    **kwargs,
):
    """Compute a learning curve on the cluster.

    :func:`sklearn.model_selection.learning_curve`, with its fits on the
    engines: each cross-validation split is stored once and every train
    size trains on a memory-mapped view of it. Returns exactly what
    scikit-learn returns.

    Parameters
    ----------
    estimator : estimator object
        As in :func:`sklearn.model_selection.learning_curve`.
    X : array-like of shape (n_samples, n_features)
        Training vectors.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs) or None
        Target relative to X.
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as in :func:`sklearn_ipp.resolve_cluster`.
    store_dir : str, path or None, default=None
        Where the splits are stored, as in
        :class:`~sklearn_ipp.IPyParallelGridSearchCV`.
    retries : int, default=3
        Times a fit is sent again when the engine running it dies.
    engine_wait : float, default=60
        Seconds to wait for engines when there are none, at the start and
        when all were lost, as in
        :class:`~sklearn_ipp.IPyParallelGridSearchCV`.
    fit_timeout : float or None, default=None
        Seconds each fit may run on its engine; a fit past it is stopped
        and fails, its scores ``error_score``, as in
        :class:`~sklearn_ipp.IPyParallelGridSearchCV` (see :doc:`/budgets`).
    **kwargs
        The other parameters of
        :func:`sklearn.model_selection.learning_curve` (``train_sizes``,
        ``cv``, ``scoring``, ``shuffle``, ``random_state``, ``params``...).
        ``n_jobs`` is ignored: the engines decide the parallelism.

    Returns
    -------
    train_sizes_abs, train_scores, test_scores[, fit_times, score_times]
        As returned by :func:`sklearn.model_selection.learning_curve`.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.naive_bayes import GaussianNB
    >>> import sklearn_ipp
    >>> X, y = load_digits(return_X_y=True)
    >>> sizes, train, test = sklearn_ipp.learning_curve(
    ...     GaussianNB(), X, y, cv=5)  # doctest: +SKIP
    """
    with curve_on_cluster(
        client, X, store_dir, retries, engine_wait, kwargs, fit_timeout
    ):
        return model_selection.learning_curve(estimator, X, y, **kwargs)


def validation_curve(
    estimator,
    X,
    y,
    *,
    param_name,
    param_range,
    client=None,
    store_dir=None,
    retries=DEFAULT_RETRIES,
    engine_wait=DEFAULT_TIMEOUT,
    fit_timeout=None,
    **kwargs,
):
    """Compute a validation curve on the cluster.

    :func:`sklearn.model_selection.validation_curve`, with its fits on the
    engines and each cross-validation split stored once. Returns exactly
    what scikit-learn returns.

    Parameters
    ----------
    estimator : estimator object
        As in :func:`sklearn.model_selection.validation_curve`.
    X : array-like of shape (n_samples, n_features)
        Training vectors.
    y : array-like of shape (n_samples,) or (n_samples, n_outputs) or None
        Target relative to X.
    param_name : str
        Name of the parameter that will be varied.
    param_range : array-like of shape (n_values,)
        The values of the parameter that will be evaluated.
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as in :func:`sklearn_ipp.resolve_cluster`.
    store_dir : str, path or None, default=None
        Where the splits are stored.
    retries : int, default=3
        Times a fit is sent again when the engine running it dies.
    engine_wait : float, default=60
        Seconds to wait for engines when there are none, at the start and
        when all were lost, as in
        :class:`~sklearn_ipp.IPyParallelGridSearchCV`.
    fit_timeout : float or None, default=None
        Seconds each fit may run on its engine; a fit past it is stopped
        and fails, its scores ``error_score``, as in
        :class:`~sklearn_ipp.IPyParallelGridSearchCV` (see :doc:`/budgets`).
    **kwargs
        The other parameters of
        :func:`sklearn.model_selection.validation_curve` (``cv``,
        ``scoring``, ``params``...). ``n_jobs`` is ignored.

    Returns
    -------
    train_scores, test_scores : ndarray of shape (n_values, n_splits)
        As returned by :func:`sklearn.model_selection.validation_curve`.
    """
    with curve_on_cluster(
        client, X, store_dir, retries, engine_wait, kwargs, fit_timeout
    ):
        return model_selection.validation_curve(
            estimator, X, y, param_name=param_name, param_range=param_range, **kwargs
        )
