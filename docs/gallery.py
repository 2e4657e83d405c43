"""What the documentation build needs to run the gallery in ``examples/``.

The examples call sklearn_ipp with no ``client=``, as a user would: it then
uses the running cluster of the default IPython profile. :func:`start_cluster`
starts one, a local cluster of 2 engines in a temporary IPYTHONDIR, so that the
build never touches the user's own profiles, and :func:`stop_cluster` stops it
when the build ends.
"""

import atexit
import os
import shutil
import tempfile

# The pages' reading order: the tutorial first, then each workflow.
ORDER = [
    "plot_tutorial.py",
    "plot_curves.py",
    "plot_backend.py",
    "plot_pipeline_prefix.py",
    "plot_halving.py",
    "plot_asynchronous_halving.py",
    "plot_model_based.py",
    "plot_resilience.py",
    "plot_budgets.py",
]

N_ENGINES = 2

_cluster = None
_ipython_dir = None


class ExampleOrder:
    """Sort the examples of a gallery by :data:`ORDER`; others go last by name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        """Return the sort key of ``filename``."""
        name = os.path.basename(filename)
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    def __repr__(self):
        return f"ExampleOrder({self.src_dir!r})"


def start_cluster(app=None):
    """Start the local cluster the examples run on, unless it is running."""
    global _cluster, _ipython_dir
    if _cluster is not None:
        return
    import ipyparallel as ipp

    _ipython_dir = tempfile.mkdtemp(prefix="sklearn_ipp-docs-ipython-")
    # Before anything resolves a profile: the engines inherit it too.
    os.environ["IPYTHONDIR"] = _ipython_dir
    _cluster = ipp.Cluster(
        n=N_ENGINES, profile_dir=os.path.join(_ipython_dir, "profile_default")
    )
    client = _cluster.start_and_connect_sync()
    try:
        client.wait_for_engines(N_ENGINES, timeout=120)
    finally:
        client.close()
    atexit.register(stop_cluster)


def stop_cluster(app=None, exception=None):
    """Stop the cluster :func:`start_cluster` started, and remove its files."""
    global _cluster
    if _cluster is not None:
        cluster, _cluster = _cluster, None
        cluster.stop_cluster_sync()
        shutil.rmtree(_ipython_dir, ignore_errors=True)
