"""The fold store: one write per fold, read-only zero-copy views, small tasks."""

import json
import os
import subprocess
import tempfile
import time

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.exceptions import FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_ipp import IPyParallelGridSearchCV, resolve_cluster
from sklearn_ipp._backend import ClusterBackend
from sklearn_ipp._folds import SMALL_FOLDS_BYTES
from sklearn_ipp._messages import Messenger
from sklearn_ipp._store import MMAP_MIN_BYTES, RowRangeArray, Store, StoreError

from ._sklearn_compare import assert_same_search, fit_both
from .conftest import needs_root


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """Scores what it saw in fit: 1 for read-only X, +2 for memory-mapped X."""

    def __init__(self, tag=0):
        self.tag = tag

    def fit(self, X, y):
        base = X
        while base is not None and not isinstance(base, np.memmap):
            base = getattr(base, "base", None)  # a bytes object ends the chain
        self.read_only_ = not X.flags.writeable
        self.memory_mapped_ = base is not None
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])

    def score(self, X, y):
        return float(self.read_only_) + 2.0 * float(self.memory_mapped_)


class WritingClassifier(ProbeClassifier):
    """Writes zeros into its training data when ``tag`` is 1."""

    def fit(self, X, y):
        if self.tag == 1:
            X[:] = 0
        self.column_sums_ = np.asarray(X).sum(axis=0)
        return super().fit(X, y)

    def score(self, X, y):
        return float(self.column_sums_.sum())


class FlagFlippingClassifier(WritingClassifier):
    """Makes its training data writable first, then writes into it (tag 1)."""

    def fit(self, X, y):
        if self.tag == 1:
            X.flags.writeable = True
        return super().fit(X, y)


def _run_with_backend(
    client, search, X, y, store_dir=None, fit_params=None, large_folds=False
):
    """Fit a plain sklearn search under the cluster backend; return the backend.

    ``large_folds``: every fold counts as large, stored one at a time.
    """
    with resolve_cluster(client) as connection:
        store = Store(store_dir, expected_nbytes=getattr(X, "nbytes", 0))
        backend = ClusterBackend(connection, store)
        if large_folds:
            backend.folds.small_folds_bytes = 0
        try:
            with parallel_config(backend=backend):
                search.fit(X, y, **(fit_params or {}))
        finally:
            backend.close()
            store.close()
    return backend, store


def _large_data(n_samples=3000, n_features=60):
    # Above MMAP_MIN_BYTES, so that engines memory-map it.
    X, y = make_classification(
        n_samples=n_samples, n_features=n_features, random_state=0
    )
    assert X.nbytes > 1.2 * MMAP_MIN_BYTES
    return X, y


def test_engines_fit_on_read_only_memory_mapped_views(client):
    X, y = _large_data()
    search = IPyParallelGridSearchCV(
        ProbeClassifier(), {"tag": [0, 1, 2]}, client=client
    )
    search.fit(X, y)
    # 3 = read-only (1) + memory-mapped (2), for every candidate and split.
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], [3.0] * 3)


def test_small_folds_are_read_into_memory_read_only(client):
    X, y = make_classification(n_samples=300, random_state=0)
    search = IPyParallelGridSearchCV(ProbeClassifier(), {"tag": [0, 1]}, client=client)
    search.fit(X, y)
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], [1.0] * 2)


def test_each_fold_is_written_once_for_all_candidates(client):
    X, y = make_classification(n_samples=400, random_state=0)
    n_candidates, n_splits = 5, 4
    search = GridSearchCV(
        ProbeClassifier(),
        {"tag": list(range(n_candidates))},
        cv=n_splits,
        pre_dispatch="all",
    )
    backend, store = _run_with_backend(client, search, X, y)
    # One X and one y file per fold, however many candidates use the fold.
    assert store.n_writes == 2 * n_splits
    assert store.bytes_written == n_splits * (X.nbytes + y.nbytes)
    assert backend.n_tasks_sent == n_candidates * n_splits
    assert not os.path.exists(store.path)


def test_large_folds_are_written_once_under_joblibs_window(client):
    # scikit-learn's own search, with joblib's window of a few tasks: the
    # backend takes the rest of the search's tasks before sending any, so
    # that each large fold (one stored at a time) is written once, not once
    # for every few candidates.
    X, y = make_classification(n_samples=400, random_state=0)
    n_candidates, n_splits = 6, 3
    grid = {"C": list(np.logspace(-3, 2, n_candidates))}
    estimator = LogisticRegression()
    # joblib's default window, pre_dispatch="2*n_jobs".
    search = GridSearchCV(estimator, grid, cv=n_splits, n_jobs=2)
    backend, store = _run_with_backend(client, search, X, y, large_folds=True)
    assert store.n_writes == 2 * n_splits
    # Each fit sent once. (scikit-learn < 1.8's LogisticRegression sends a
    # task of its own from the refit, under the same backend.)
    assert backend.n_fold_tasks_sent == n_candidates * n_splits
    reference = GridSearchCV(estimator, grid, cv=n_splits).fit(X, y)
    assert_same_search(search, reference, X)


class SleepingLogisticRegression(LogisticRegression):
    """LogisticRegression whose fit also waits 20 ms, as a fit bound by latency."""

    def fit(self, X, y, sample_weight=None):
        time.sleep(0.02)
        return super().fit(X, y, sample_weight=sample_weight)


def test_short_fits_share_messages_across_stored_folds(client, monkeypatch):
    # As many candidates as messages in flight (2 per engine): a fold's tasks
    # alone give one task per message, so only messages spanning folds can
    # carry several fits.
    folds_per_message = []
    send = Messenger.send

    def recording_send(messenger, tasks):
        folds_per_message.append({task.key for task in tasks})
        return send(messenger, tasks)

    monkeypatch.setattr(Messenger, "send", recording_send)
    X, y = make_classification(n_samples=300, random_state=0)
    n_candidates, n_splits = 2 * len(client.ids), 5
    grid = {"C": list(np.logspace(-2, 2, n_candidates))}
    ours = IPyParallelGridSearchCV(
        SleepingLogisticRegression(), grid, cv=n_splits, client=client
    )
    reference = GridSearchCV(SleepingLogisticRegression(), grid, cv=n_splits)
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)
    assert len(folds_per_message) < n_candidates * n_splits
    assert max(len(folds) for folds in folds_per_message) > 1


@pytest.mark.parametrize("grow", ["features", "samples"])
def test_task_messages_do_not_grow_with_the_data(client, grow):
    sizes = {}
    for factor in (1, 100):
        n_samples, n_features = (
            (300, 10 * factor) if grow == "features" else (300 * factor, 10)
        )
        X, y = make_classification(
            n_samples=n_samples, n_features=n_features, random_state=0
        )
        search = GridSearchCV(ProbeClassifier(), {"tag": [0, 1, 2, 3]}, cv=3)
        backend, _ = _run_with_backend(client, search, X, y)
        sizes[X.nbytes] = backend.payload_bytes / backend.n_tasks_sent
    small, large = sorted(sizes)
    assert large / small == 100
    assert sizes[large] <= sizes[small] * 1.05 + 64


def test_large_folds_are_stored_one_at_a_time(client):
    # Just over the small-data budget: folds must not be stored together.
    n_samples = 3000
    n_features = SMALL_FOLDS_BYTES // (8 * n_samples) // 2 + 1
    X = np.random.RandomState(0).rand(n_samples, n_features)
    y = np.arange(n_samples) % 2
    search = GridSearchCV(ProbeClassifier(), {"tag": [0, 1]}, cv=3, pre_dispatch="all")
    backend, store = _run_with_backend(client, search, X, y)
    assert store.n_writes == 2 * 3
    assert backend.max_stored_bytes == X.nbytes  # one fold: all rows, once


def test_store_files_are_removed_after_fit_and_after_an_error(client, tmp_path):
    X, y = make_classification(n_samples=100, random_state=0)
    search = IPyParallelGridSearchCV(
        ProbeClassifier(), {"tag": [0, 1]}, client=client, store_dir=str(tmp_path)
    )
    search.fit(X, y)
    assert os.listdir(tmp_path) == []
    failing = IPyParallelGridSearchCV(
        WritingClassifier(),
        {"tag": [0, 1]},
        client=client,
        store_dir=str(tmp_path),
        error_score="raise",
    )
    with pytest.raises(ValueError, match="read-only"):
        failing.fit(X, y)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "writer, error",
    [
        (WritingClassifier, "assignment destination is read-only"),
        (FlagFlippingClassifier, "cannot set WRITEABLE flag"),
    ],
)
def test_an_estimator_writing_into_x_does_not_corrupt_other_fits(client, writer, error):
    # Small data (read into engine memory, not mapped), one message for all
    # the tasks of a split: they share the arrays it unpickles.
    X, y = make_classification(n_samples=120, random_state=0)
    assert X.nbytes < MMAP_MIN_BYTES
    cv = KFold(3)
    ours = IPyParallelGridSearchCV(
        writer(), {"tag": [1, 0, 1, 0]}, client=client, cv=cv
    )
    reference = GridSearchCV(WritingClassifier(), {"tag": [0]}, cv=cv).fit(X, y)
    with pytest.warns(FitFailedWarning, match=error) as record:
        ours.fit(X, y)
    assert any("X = X.copy()" in str(w.message) for w in record)
    scores = ours.cv_results_["mean_test_score"]
    # The writers fail on the read-only data; the others see it intact.
    assert np.isnan(scores[0]) and np.isnan(scores[2])
    np.testing.assert_allclose(
        scores[[1, 3]], reference.cv_results_["mean_test_score"][0]
    )


def test_row_range_array_gives_views_for_ranges_and_copies_otherwise():
    array = np.arange(20.0).reshape(10, 2).view(RowRangeArray)
    view = array[np.arange(2, 6)]
    assert np.shares_memory(view, array)
    np.testing.assert_array_equal(view, np.arange(20.0).reshape(10, 2)[2:6])
    view = array[np.arange(3, 5), ...]
    assert np.shares_memory(view, array)
    # The estimator gets plain arrays: scikit-learn checks them faster.
    assert type(view) is np.ndarray
    assert type(array[np.array([3, 1])]) is np.ndarray
    for key in (np.array([3, 1]), np.array([1, 2, 4]), np.array([-2, -1])):
        picked = array[key]
        assert not np.shares_memory(picked, array)
        np.testing.assert_array_equal(picked, np.asarray(array)[key])


def test_unwritable_store_dir_names_the_path_and_the_parameter(client):
    X, y = make_classification(n_samples=60, random_state=0)
    search = IPyParallelGridSearchCV(
        ProbeClassifier(),
        {"tag": [0]},
        client=client,
        store_dir="/proc/sklearn_ipp_store",
    )
    with pytest.raises(
        StoreError, match="Cannot create the data store in '/proc/sklearn_ipp_store'"
    ) as info:
        search.fit(X, y)
    assert "store_dir=" in str(info.value)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MB tmpfs: a real full disk."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True
    )
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


@needs_root("mounts a 1 MB tmpfs as a full store_dir")
def test_full_store_dir_names_the_path_and_the_parameter(client, tiny_filesystem):
    X = np.random.RandomState(0).rand(2000, 100)  # 1.6 MB
    y = np.arange(2000) % 2
    search = IPyParallelGridSearchCV(
        ProbeClassifier(),
        {"tag": [0]},
        client=client,
        store_dir=str(tiny_filesystem),
        cv=2,
    )
    with pytest.raises(StoreError, match=r"MB free but 1\.6 MB are needed") as info:
        search.fit(X, y)
    assert str(tiny_filesystem) in str(info.value)
    assert "store_dir=" in str(info.value)
    assert os.listdir(tiny_filesystem) == []


class StoreLocationProbe(ProbeClassifier):
    """Scores 1 when its training data is a memory map of a file under ``tag``."""

    def fit(self, X, y):
        base = X
        while base is not None and not isinstance(base, np.memmap):
            base = getattr(base, "base", None)  # a bytes object ends the chain
        self.in_store_ = base is not None and str(base.filename).startswith(self.tag)
        return super().fit(X, y)

    def score(self, X, y):
        return float(self.in_store_)


def test_given_store_dir_holds_the_data_and_results_match(client, tmp_path):
    X, y = _large_data()
    probe = IPyParallelGridSearchCV(
        StoreLocationProbe(),
        {"tag": [str(tmp_path)]},
        client=client,
        store_dir=str(tmp_path),
    ).fit(X, y)
    np.testing.assert_array_equal(probe.cv_results_["mean_test_score"], [1.0])
    grid = {"C": [0.1, 1.0]}
    ours = IPyParallelGridSearchCV(
        LogisticRegression(), grid, client=client, store_dir=str(tmp_path)
    )
    reference = GridSearchCV(LogisticRegression(), grid)
    fit_both(ours, reference, X, y)
    assert_same_search(ours, reference, X)
    assert os.listdir(tmp_path) == []


def test_a_single_engine_does_the_work_not_the_client(client):
    X, y = _large_data()
    one_engine = client.load_balanced_view(targets=[client.ids[-1]])
    search = IPyParallelGridSearchCV(
        ProbeClassifier(), {"tag": [0, 1]}, client=one_engine
    )
    search.fit(X, y)
    # Memory-mapped, read-only data is only ever seen on an engine.
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], [3.0, 3.0])


def test_several_parallel_calls_on_one_backend_match_sklearn(client):
    # Successive halving calls Parallel once per iteration, each with other
    # training-set sizes, within one configured backend.
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y = make_classification(n_samples=400, random_state=0)
    grid = {"C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}
    ours = HalvingGridSearchCV(LogisticRegression(), grid, random_state=0)
    reference = HalvingGridSearchCV(LogisticRegression(), grid, random_state=0)
    reference.fit(X, y)
    backend, _ = _run_with_backend(client, ours, X, y)
    assert ours.n_iterations_ == reference.n_iterations_ > 1
    assert_same_search(ours, reference, X)
    n_fits = len(reference.cv_results_["params"]) * ours.n_splits_
    assert backend.n_fold_tasks_sent == n_fits


# Hygiene: private directories, no stale stores, nothing read from others ----


def test_stores_are_private_and_unpredictable():
    first, second = Store(), Store()
    try:
        for store in (first, second):
            assert os.stat(store.path).st_mode & 0o777 == 0o700
            parent = os.path.dirname(store.path)
            # A per-user directory nobody else may enter.
            assert os.stat(parent).st_uid == os.geteuid()
            assert os.stat(parent).st_mode & 0o777 == 0o700
        assert first.path != second.path
    finally:
        first.close()
        second.close()


def test_stores_of_dead_processes_are_removed_at_the_next_start(tmp_path):
    import socket

    from sklearn_ipp._store import make_store_directory

    dead = {
        "hostname": socket.gethostname(),
        "pid": 2**22 + 1,  # above pid_max: no such process
        "create_time": time.time(),
    }
    stale = make_store_directory(str(tmp_path), dead)
    # A dead client's local cluster: the watchdog's, which ends its processes.
    cluster = tmp_path / "sklearn_ipp-cluster-abc"
    cluster.mkdir(mode=0o700)
    (cluster / "owner.json").write_text(json.dumps(dead))
    running = Store(str(tmp_path))  # a live process's store
    try:
        assert not os.path.exists(stale)
        assert cluster.exists()
        newer = Store(str(tmp_path))
        assert os.path.exists(running.path)
        newer.close()
    finally:
        running.close()


def test_data_is_never_read_from_a_directory_others_can_write(tmp_path):
    from sklearn_ipp._checkpoint import DirectoryCheckpoint
    from sklearn_ipp._store import load_stored

    shared = tmp_path / "shared"
    shared.mkdir()
    np.save(shared / "x.npy", np.arange(3))
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="Refusing to read data from"):
        load_stored(str(shared / "x.npy"), "npy")
    with pytest.raises(PermissionError, match="mode 0700"):
        DirectoryCheckpoint(shared)


def test_a_corrupted_copy_is_refused(tmp_path):
    import hashlib

    from sklearn_ipp._hosts import receive_chunk

    directory = tmp_path / "host-store"
    directory.mkdir(mode=0o700)
    data = b"0123456789" * 100
    good = hashlib.sha256(data).hexdigest()
    receive_chunk(str(directory), "a.npy", 0, data[:500])
    receive_chunk(str(directory), "a.npy", 500, data[500:], good)
    assert (directory / "a.npy").read_bytes() == data
    receive_chunk(str(directory), "b.npy", 0, data[:500])
    with pytest.raises(OSError, match="corrupted on the way"):
        receive_chunk(str(directory), "b.npy", 500, data[500:-1] + b"x", good)
    assert sorted(os.listdir(directory)) == ["a.npy"]


@pytest.mark.parametrize(
    "rows",
    [
        np.arange(300),
        np.r_[100:300, 0:100],  # KFold's train then test
        np.random.default_rng(0).permutation(300)[:250],  # ShuffleSplit's
        np.array([], dtype=np.intp),
        np.array([5, -1, 3]),
    ],
)
def test_packed_rows_come_back_the_same(rows):
    from sklearn_ipp._store import pack_rows, packed_nbytes, unpack_rows

    packed = pack_rows(rows)
    np.testing.assert_array_equal(unpack_rows(packed), rows)
    assert unpack_rows(packed).dtype == np.intp
    if rows.size == 300:  # sorted runs: a few bytes for them all
        assert packed_nbytes(packed) < 50
    assert pack_rows(None) is None and unpack_rows(None) is None


@pytest.mark.parametrize(
    "kind", ["dense", "dense, rows and columns", "sparse", "whole"]
)
def test_a_host_cuts_the_same_file_the_client_stores(tmp_path, kind):
    import hashlib

    from scipy import sparse

    from sklearn_ipp._hosts import cut_stored, receive_chunk
    from sklearn_ipp._store import is_plain_array, load_stored, npy_chunks, pack_rows

    data = np.random.default_rng(0).random((400, 400))
    rows, columns = np.random.default_rng(1).permutation(400)[:300], None
    if kind == "dense, rows and columns":
        columns = rows
    elif kind == "sparse":
        data = sparse.csr_matrix(np.where(data > 0.9, data, 0))
    elif kind == "whole":
        rows = None
    store = Store(str(tmp_path / "client"))
    client_ref = store.write(data, rows, columns)
    # The host's copy of the data, as the client sends it.
    host = tmp_path / "host"
    host.mkdir(mode=0o700)
    if is_plain_array(data):
        content, source_kind = b"".join(map(bytes, npy_chunks(data))), "npy"
    else:
        whole = store.write(data)
        with open(whole.path, "rb") as f:
            content, source_kind = f.read(), "joblib"
    receive_chunk(str(host), "data", 0, content, hashlib.sha256(content).hexdigest())
    cut_stored(
        str(host), "data", source_kind, "fold", pack_rows(rows), pack_rows(columns)
    )
    with open(client_ref.path, "rb") as f:
        expected = f.read()
    if source_kind == "npy":
        # Byte for byte what the client wrote.
        assert (host / "fold").read_bytes() == expected
    else:
        cut = load_stored(str(host / "fold"), "joblib")
        assert (cut != load_stored(client_ref.path, "joblib")).nnz == 0
    if kind == "whole":
        # The data itself, linked: no second copy on the host.
        assert os.path.samefile(host / "fold", host / "data")
    assert sorted(os.listdir(host)) == ["data", "fold"]
    store.close()


def test_stored_files_are_checked_at_every_read(tmp_path):
    from sklearn_ipp._store import load_stored

    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    np.save(store / "x.npy", np.arange(3.0))
    assert load_stored(str(store / "x.npy"), "npy").tolist() == [0.0, 1.0, 2.0]
    (store / "x.npy").chmod(0o666)  # anyone could have replaced it
    with pytest.raises(PermissionError, match="Refusing to read data from"):
        load_stored(str(store / "x.npy"), "npy")
    (store / "x.npy").chmod(0o600)
    os.symlink(store / "x.npy", store / "link.npy")  # a link is not followed
    with pytest.raises(OSError):
        load_stored(str(store / "link.npy"), "npy")
    store.chmod(0o777)  # checked again, not remembered from the first read
    with pytest.raises(PermissionError, match="Refusing to read data from"):
        load_stored(str(store / "x.npy"), "npy")


@pytest.mark.parametrize("shape", [(50, 4), (1000, 200)], ids=["read", "mapped"])
def test_stored_arrays_cannot_be_made_writable(tmp_path, shape):
    from sklearn_ipp._store import load_stored

    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    original = np.random.RandomState(0).rand(*shape)
    np.save(store / "x.npy", np.asfortranarray(original))
    array = load_stored(str(store / "x.npy"), "npy")
    np.testing.assert_array_equal(array, original)
    assert array.flags.f_contiguous
    with pytest.raises(ValueError, match="WRITEABLE"):
        array.flags.writeable = True
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 1.0


class StoreDirectoryProbe(ProbeClassifier):
    """Scores 1 when its training data is mapped from under ``tag``, else 0."""

    def fit(self, X, y):
        base = X
        while base is not None and not isinstance(base, np.memmap):
            base = getattr(base, "base", None)
        self.under_tag_ = str(getattr(base, "filename", "")).startswith(self.tag)
        time.sleep(0.5)  # the folds of the next tasks are stored meanwhile
        return super().fit(X, y)

    def score(self, X, y):
        return float(self.under_tag_)


@needs_root("mounts an 8 MB tmpfs as a /dev/shm that fills up")
def test_data_goes_to_the_temporary_directory_when_dev_shm_fills(
    client, tmp_path, monkeypatch
):
    import subprocess

    from sklearn_ipp import _store

    shm = tmp_path / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", shm], check=True)
    try:
        monkeypatch.setattr(_store, "_SHM_DIR", str(shm))
        # 1.9 MB per fold, several stored at once, while /dev/shm must keep
        # room for 4 times what it takes: the first fold fits in it, the
        # next go to the temporary directory while it is there (y, small,
        # stays).
        X = np.random.RandomState(0).rand(1000, 238)
        y = np.arange(1000) % 2
        assert X.nbytes > MMAP_MIN_BYTES
        spill_base = _store.user_directory(tempfile.gettempdir())
        search = GridSearchCV(StoreDirectoryProbe(), {"tag": [spill_base]}, cv=KFold(5))
        _, store = _run_with_backend(client, search, X, y)
        assert store.path.startswith(str(shm))
        where = [search.cv_results_[f"split{i}_test_score"][0] for i in range(5)]
        assert where[0] == 0.0  # in /dev/shm...
        assert sum(where) >= 1  # ...then in the temporary directory
        assert sum(where) == store.n_spilled  # the X of each fold that moved
        assert not os.path.exists(store.path)
        assert not os.path.exists(_store.spill_directory(store.path))
    finally:
        subprocess.run(["umount", shm], check=True)
