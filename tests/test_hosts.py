"""Hosts that do not see the client's filesystem get the data once per host.

Two fake hosts, each with its own hostname, its own /tmp and /dev/shm (new
UTS and mount namespaces) and two engines, join the session controller over
loopback.
"""

import os
import socket
import tempfile
import time

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config
from sklearn.datasets import make_classification
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold, learning_curve

from sklearn_ipp import IPyParallelGridSearchCV
from sklearn_ipp._backend import ClusterBackend

from ._sklearn_compare import assert_same_search
from .conftest import fake_host, on_engine
from .test_store import _run_with_backend

HOSTS = ("fakehost-a", "fakehost-b")
N_SPLITS = 3


@pytest.fixture(scope="module")
def fake_hosts(cluster, client):
    """``{hostname: [engine ids]}`` of two fake hosts with two engines each."""
    with (
        fake_host(cluster, client, HOSTS[0]) as first,
        fake_host(cluster, client, HOSTS[1]) as second,
    ):
        yield dict(zip(HOSTS, (first, second), strict=True))


@pytest.fixture
def remote_view(client, fake_hosts):
    engine_ids = sorted(i for ids in fake_hosts.values() for i in ids)
    return client.load_balanced_view(targets=engine_ids)


@on_engine
def _host_and_stores():
    import os
    import socket

    from sklearn_ipp._store import STORE_PREFIX, default_parent

    parent = default_parent(0)
    return socket.gethostname(), sorted(
        os.path.join(parent, name)
        for name in os.listdir(parent)
        if name.startswith(STORE_PREFIX)
    )


def _data():
    # Folds of 1.6 MB: memory-mapped on the engines.
    X, y = make_classification(n_samples=2000, n_features=100, random_state=0)
    return X, y


def _search(search_class=GridSearchCV, **kwargs):
    # An estimator without Parallel calls of its own: under the joblib
    # backend, those of LogisticRegression (scikit-learn < 1.8) in the refit
    # would send X to the hosts once more, through the generic path.
    return search_class(
        RidgeClassifier(), {"alpha": [0.01, 0.1, 1.0, 10.0]}, cv=N_SPLITS, **kwargs
    )


def test_fake_hosts_are_separate_hosts(client, fake_hosts):
    for hostname, engine_ids in fake_hosts.items():
        names = client[engine_ids].apply_sync(socket.gethostname)
        assert names == [hostname] * len(engine_ids)


def test_each_host_gets_each_file_once_and_results_match_sklearn(
    client, fake_hosts, remote_view
):
    X, y = _data()
    reference = _search().fit(X, y)
    ours = _search()
    backend, _ = _run_with_backend(remote_view, ours, X, y)
    assert_same_search(ours, reference, X)
    # X and y once per host, not once per split, engine or task: the host
    # cuts its folds from them.
    _assert_sent_once(backend, X.nbytes + y.nbytes, n_files=2)
    # Each host's copy is gone with the backend.
    for engine_ids in fake_hosts.values():
        _, stores = client[engine_ids[0]].apply_sync(_host_and_stores)
        assert stores == []


def test_learning_curve_sends_each_split_once_per_host(fake_hosts, remote_view):
    X, y = _data()
    train_sizes = [0.25, 0.5, 1.0]
    backend = ClusterBackend(remote_view)
    try:
        with parallel_config(backend=backend):
            ours = learning_curve(
                RidgeClassifier(), X, y, train_sizes=train_sizes, cv=N_SPLITS
            )
    finally:
        backend.close()
    reference = learning_curve(
        RidgeClassifier(), X, y, train_sizes=train_sizes, cv=N_SPLITS
    )
    for actual, expected in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(actual, expected)
    # As for a search: X and y once per host, whatever the number of splits
    # and train sizes.
    _assert_sent_once(backend, X.nbytes + y.nbytes, n_files=2)


def _assert_sent_once(backend, data_nbytes, n_files):
    transfers = backend.transfers
    assert sorted(transfers) == sorted(HOSTS)
    for files, n_bytes in transfers.values():
        assert files == n_files
        # Plus the .npy headers and each fold's row numbers, packed.
        assert data_nbytes < n_bytes <= 1.05 * data_nbytes


def _kernel_data():
    X, y = _data()
    return X @ X.T / X.shape[1], y


@pytest.mark.parametrize(
    "kind", ["dense, shuffled, with sample weights", "sparse", "precomputed kernel"]
)
def test_a_host_gets_the_data_once_for_kfold_5(fake_hosts, remote_view, kind):
    from scipy import sparse
    from sklearn.model_selection import KFold
    from sklearn.svm import SVC

    cv = KFold(5, shuffle=True, random_state=0)
    fit_params = {}
    estimator, grid = RidgeClassifier(), {"alpha": [0.1, 1.0]}
    X, y = _data()
    if kind.startswith("dense"):
        # One weight per sample: cut on the host as X is.
        fit_params["sample_weight"] = np.random.default_rng(0).random(len(y))
    elif kind == "sparse":
        X = sparse.csr_matrix(np.where(X > 1, X, 0))
    else:
        # Its columns are cut too: the rows and columns of each fold.
        X, y = _kernel_data()
        estimator, grid = SVC(kernel="precomputed"), {"C": [0.1, 1.0]}
    reference = GridSearchCV(estimator, grid, cv=cv).fit(X, y, **fit_params)
    ours = GridSearchCV(estimator, grid, cv=cv)
    backend, store = _run_with_backend(remote_view, ours, X, y, fit_params=fit_params)
    assert_same_search(ours, reference, X)
    # Every byte the client sent each host for its data: X, y and the
    # weights once (the 5 folds' rows are a few kB), not once per split.
    if sparse.issparse(X):
        data_nbytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    else:
        data_nbytes = X.nbytes
    data_nbytes += y.nbytes + sum(v.nbytes for v in fit_params.values())
    _assert_sent_once(backend, data_nbytes, n_files=2 + len(fit_params))
    # The client stored all 5 folds: 5 x the data, which the hosts cut.
    assert store.bytes_written >= 4 * data_nbytes


def test_halving_sends_the_data_once_per_host(fake_hosts, remote_view):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y = _data()
    grid = {"alpha": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}
    search, reference = (
        HalvingGridSearchCV(
            RidgeClassifier(), grid, cv=N_SPLITS, factor=2, random_state=0
        )
        for _ in range(2)
    )
    reference.fit(X, y)
    backend, _ = _run_with_backend(remote_view, search, X, y)
    assert search.n_iterations_ >= 3
    assert_same_search(search, reference, X)
    # Each iteration trains on more samples, cut from the one copy.
    _assert_sent_once(backend, X.nbytes + y.nbytes, n_files=2)


def test_search_class_runs_on_hosts_without_the_store(fake_hosts, remote_view):
    X, y = _data()
    reference = _search().fit(X, y)
    ours = _search(IPyParallelGridSearchCV, client=remote_view).fit(X, y)
    assert_same_search(ours, reference, X)


def test_generic_tasks_get_large_arrays_once_per_host(remote_view):
    X = np.random.default_rng(0).random((1000, 300))  # 2.4 MB
    backend = ClusterBackend(remote_view)
    try:
        with parallel_config(backend=backend):
            sums = Parallel(n_jobs=-1)(delayed(np.sum)(X, axis=0) for _ in range(8))
    finally:
        backend.close()
    for row_sums in sums:
        np.testing.assert_allclose(row_sums, X.sum(axis=0))
    for n_files, n_bytes in backend.transfers.values():
        assert n_files == 1
        assert X.nbytes < n_bytes <= X.nbytes + 4096


def test_a_shared_filesystem_is_used_without_transfer(client, fake_hosts, tmp_path):
    # /var/tmp is the same filesystem on the fake hosts (only /tmp and
    # /dev/shm are their own), as NFS would be.
    shared = tempfile.mkdtemp(prefix="sklearn_ipp-tests-", dir="/var/tmp")
    try:
        view = client.load_balanced_view(targets=fake_hosts[HOSTS[0]])
        X, y = _data()
        reference = _search().fit(X, y)
        ours = _search()
        backend, _ = _run_with_backend(view, ours, X, y, store_dir=shared)
        assert_same_search(ours, reference, X)
        assert backend.transfers == {HOSTS[0]: (0, 0)}
    finally:
        os.rmdir(shared)


@on_engine
def _make_stale_store(owner):
    from sklearn_ipp._store import default_parent, make_store_directory

    return make_store_directory(default_parent(0), owner)


def test_host_stores_of_dead_clients_are_removed(client, fake_hosts, remote_view):
    # A store a client of this host left on a fake host when it crashed.
    dead_client = {
        "hostname": socket.gethostname(),
        "pid": 2**22 + 1,  # above pid_max: no such process
        "create_time": time.time(),
        "uid": os.geteuid(),
    }
    engine_id = fake_hosts[HOSTS[0]][0]
    stale = client[engine_id].apply_sync(_make_stale_store, dead_client)
    _, stores = client[engine_id].apply_sync(_host_and_stores)
    assert stores == [stale]
    X, y = _data()
    _search(IPyParallelGridSearchCV, client=remote_view).fit(X, y)
    _, stores = client[engine_id].apply_sync(_host_and_stores)
    assert stores == []


def test_what_fits_say_on_another_host_reaches_the_client(remote_view, capsys):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from .test_output import ScoringMonitor

    X, y = make_classification(n_samples=120, n_features=5, random_state=0)

    def run(search_class, **kwargs):
        inner = LogisticRegression(max_iter=3)
        monitor = None
        if ScoringMonitor is not None:  # scikit-learn >= 1.9
            monitor = ScoringMonitor(scoring="accuracy")
            inner.set_callbacks(monitor)
        search = search_class(inner, {"C": [0.1, 10.0]}, cv=2, verbose=2, **kwargs)
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            search.fit(X, y)
        lines = sorted(
            line.split(" total time=")[0]
            for line in capsys.readouterr().out.splitlines()
            if line.startswith("[CV")
        )
        n_warnings = sum(r.category is ConvergenceWarning for r in records)
        logs = None
        if monitor is not None:
            logs = [sorted(map(repr, log.data)) for log in monitor.get_logs("all")]
        return search, lines, n_warnings, logs

    ours, *ours_said = run(IPyParallelGridSearchCV, client=remote_view)
    reference, *reference_said = run(GridSearchCV)
    assert_same_search(ours, reference, X)
    # The verbose lines, the 4 fits' warnings and the refit's; the callback's
    # messages, which scikit-learn's transport (a socket in the client's
    # /tmp) could not have carried from these hosts.
    assert ours_said == reference_said
    assert len(ours_said[0]) == 4 and ours_said[1] == 5


@on_engine
def _stores_in_temp_dir():
    import os
    import tempfile

    from sklearn_ipp._store import STORE_PREFIX, user_directory

    parent = user_directory(tempfile.gettempdir())
    return [name for name in os.listdir(parent) if name.startswith(STORE_PREFIX)]


@on_engine
def _resize_dev_shm(size):
    import subprocess

    # The fake host's own /dev/shm: the client's is not touched. Named in
    # full: in a user namespace, mount cannot look the filesystem up.
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"remount,size={size}", "tmpfs", "/dev/shm"],
        check=True,
    )


def test_a_host_whose_dev_shm_fills_keeps_the_rest_in_its_temp_dir(client, fake_hosts):
    from .test_store import StoreDirectoryProbe

    engine_ids = fake_hosts[HOSTS[0]]
    view = client.load_balanced_view(targets=engine_ids)
    client[engine_ids[0]].apply_sync(_resize_dev_shm, "9m")
    try:
        # X of 1.6 MB, then folds as large cut from it, several stored at once;
        # the host's /dev/shm keeps room for 4 times what comes: X and the
        # first fold fit there, then its /tmp takes the next ones while it is
        # there.
        X, y = _data()
        search = GridSearchCV(
            StoreDirectoryProbe(), {"tag": ["/tmp/"]}, cv=StratifiedKFold(5)
        )
        backend, _ = _run_with_backend(view, search, X, y)
        where = [search.cv_results_[f"split{i}_test_score"][0] for i in range(5)]
        assert where[0] == 0.0  # in /dev/shm...
        assert sum(where) >= 1  # ...then in the host's temporary directory
        assert sorted(backend.transfers) == [HOSTS[0]]
        _, stores = client[engine_ids[0]].apply_sync(_host_and_stores)
        assert stores == []
        assert client[engine_ids[0]].apply_sync(_stores_in_temp_dir) == []
    finally:
        client[engine_ids[0]].apply_sync(_resize_dev_shm, "50%")


def test_without_namespaces_the_fake_hosts_skip_saying_why(monkeypatch):
    from . import conftest

    # A kernel that refuses the namespaces, for root and for anyone else.
    refused = ["sh", "-c", "echo 'unshare: Operation not permitted' >&2; exit 1", "-"]
    monkeypatch.setattr(conftest, "_UNSHARE", refused)
    monkeypatch.setattr(conftest, "_UNSHARE_AS_USER", refused)
    command, why_not = conftest._unshare_command.__wrapped__()
    assert command is None
    assert "(unshare: Operation not permitted)" in why_not
    assert "hosts which do not see the client's files get the data once" in why_not
    assert "unshare --user --map-root-user true" in why_not
