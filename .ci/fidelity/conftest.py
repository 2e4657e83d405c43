"""Run scikit-learn's own tests against sklearn_ipp.

Copied next to test files of the installed scikit-learn by
``.ci/sklearn_fidelity.py``. One ipyparallel cluster (a controller and two
engines, as processes) runs for the session, in a temporary IPYTHONDIR, so
that ``client=None`` finds it. ``SKLEARN_IPP_FIDELITY_FACE`` says how the
tests meet sklearn_ipp:

- ``classes``: scikit-learn's ``GridSearchCV``, ``RandomizedSearchCV``,
  ``HalvingGridSearchCV`` and ``HalvingRandomSearchCV`` are rebound to
  sklearn_ipp's classes, before the test modules import them;
- ``backend``: scikit-learn's own classes, every test under
  ``parallel_config(backend="ipyparallel")``.

``SKLEARN_IPP_FIDELITY_MODE`` set to ``in-process`` runs the same tests with
scikit-learn's own classes and its default backend, and ``loky`` with its
own classes under ``parallel_config(backend="loky", n_jobs=2)``: the
references the counts are compared with.
"""

import logging
import os
import shutil
import tempfile

import ipyparallel as ipp
import pytest
import sklearn.model_selection
from joblib import parallel_config

import sklearn_ipp

# scikit-learn's own fixtures (global_random_seed...) and settings, as when
# its tests run from its package.
pytest_plugins = ("sklearn.conftest",)

REBOUND = {
    "GridSearchCV": sklearn_ipp.IPyParallelGridSearchCV,
    "RandomizedSearchCV": sklearn_ipp.IPyParallelRandomizedSearchCV,
    "HalvingGridSearchCV": sklearn_ipp.IPyParallelHalvingGridSearchCV,
    "HalvingRandomSearchCV": sklearn_ipp.IPyParallelHalvingRandomSearchCV,
}
MODE = os.environ.get("SKLEARN_IPP_FIDELITY_MODE", "cluster")
FACE = os.environ.get("SKLEARN_IPP_FIDELITY_FACE", "classes")
_state = {}


def pytest_configure(config):
    """Rebind the searches and start the session's cluster."""
    if MODE != "cluster":
        return
    if FACE == "classes":
        for name, cls in REBOUND.items():
            setattr(sklearn.model_selection, name, cls)
    ipython_dir = tempfile.mkdtemp(prefix="sklearn_ipp-fidelity-")
    os.environ["IPYTHONDIR"] = ipython_dir
    cluster = ipp.Cluster(
        n=int(os.environ.get("SKLEARN_IPP_TEST_ENGINES", "2")),
        profile_dir=os.path.join(ipython_dir, "profile_default"),
        log=logging.getLogger("sklearn_ipp.fidelity"),
    )
    client = cluster.start_and_connect_sync()
    client.wait_for_engines(cluster.n, timeout=120)
    client.close()
    _state.update(cluster=cluster, ipython_dir=ipython_dir)


def pytest_unconfigure(config):
    """Stop the session's cluster."""
    cluster = _state.pop("cluster", None)
    if cluster is not None:
        cluster.stop_cluster_sync()
    shutil.rmtree(_state.pop("ipython_dir", ""), ignore_errors=True)


@pytest.fixture(autouse=True)
def _on_the_cluster():
    if MODE == "loky":
        with parallel_config(backend="loky", n_jobs=2):
            yield
    elif MODE == "cluster" and FACE == "backend":
        with parallel_config(backend="ipyparallel"):
            yield
    else:
        yield
