"""Checkpoints unpickle only what this user's key signed, checked at every open."""

import os
import pathlib
import pickle
import random
import shutil
import stat
import subprocess
import warnings

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from sklearn_ipp import CheckpointWarning, IPyParallelGridSearchCV
from sklearn_ipp._checkpoint import (
    KEY_ENVIRONMENT_VARIABLE,
    DirectoryCheckpoint,
    checkpoint_key,
)

from ._sklearn_compare import assert_same_search
from .conftest import needs_root

as_other_user_too = needs_root(
    "plays another user with setpriv, who plants files a checkpoint must refuse"
)
OTHER_UID = 65534  # nobody


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "config" / "checkpoint.key"
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, str(path))
    return path


class _RunsCommand:
    """A pickle that runs a command when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def shared_tmp():
    """A directory like /tmp: every user may write there, sticky."""
    import tempfile

    path = tempfile.mkdtemp(prefix="sklearn_ipp-tests-shared-")
    os.chmod(path, 0o1777)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def as_other_user(command, *args, data=b""):
    """Run a shell ``command`` as another user, ``data`` on its stdin.

    A shell, not this Python, which that user may not be allowed to run
    (an interpreter under /root).
    """
    subprocess.run(
        [
            "setpriv",
            f"--reuid={OTHER_UID}",
            f"--regid={OTHER_UID}",
            "--clear-groups",
            "sh",
            "-c",
            command,
            "sh",
            *map(str, args),
        ],
        input=data,
        check=True,
    )


def _result(i=0):
    return {"test_scores": 0.5 + i, "fit_time": 0.1, "fit_error": None}


def test_the_key_is_made_on_first_use_readable_by_this_user_only(key_file, monkeypatch):
    assert not key_file.exists()
    key = checkpoint_key()
    assert len(key) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert checkpoint_key() == key  # reused, not made again
    key_file.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        checkpoint_key()
    key_file.chmod(0o600)
    link = key_file.parent / "link.key"
    link.symlink_to(key_file)
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, str(link))
    with pytest.raises(PermissionError, match="symbolic link"):
        checkpoint_key()


def test_processes_making_the_key_at_once_agree_on_it(key_file):
    import threading

    keys = []
    start = threading.Barrier(8)

    def make():
        start.wait()
        keys.append(checkpoint_key())

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert os.listdir(key_file.parent) == [key_file.name]  # nothing else left


def test_results_come_back_and_the_key_stays_out_of_the_directory(key_file, tmp_path):
    checkpoint = DirectoryCheckpoint(tmp_path / "fits")
    checkpoint.put("a" * 64, _result())
    assert checkpoint.get("a" * 64) == (True, _result())
    assert checkpoint.get("b" * 64) == (False, None)
    assert os.listdir(tmp_path / "fits") == ["a" * 64 + ".result"]
    assert key_file.exists() and tmp_path / "fits" not in key_file.parents


def test_a_planted_pickle_is_never_loaded(key_file, tmp_path):
    checkpoint = DirectoryCheckpoint(tmp_path / "fits")
    marker = tmp_path / "planted-ran"
    name = "c" * 64
    planted = tmp_path / "fits" / f"{name}.result"
    planted.write_bytes(pickle.dumps(_RunsCommand(marker)))
    with pytest.warns(CheckpointWarning, match=str(planted)) as record:
        assert checkpoint.get(name) == (False, None)
    assert len(record) == 1
    assert "not written with this user's checkpoint key" in str(record[0].message)
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per file, not per look-up
        assert checkpoint.get(name) == (False, None)


def test_a_result_signed_with_another_key_or_renamed_is_missing(key_file, tmp_path):
    mine = DirectoryCheckpoint(tmp_path / "fits")
    theirs = DirectoryCheckpoint(tmp_path / "fits", key=b"k" * 32)
    theirs.put("d" * 64, _result())
    with pytest.warns(CheckpointWarning):
        assert mine.get("d" * 64) == (False, None)
    mine.put("e" * 64, _result(1))
    os.replace(
        tmp_path / "fits" / ("e" * 64 + ".result"),
        tmp_path / "fits" / ("f" * 64 + ".result"),
    )
    with pytest.warns(CheckpointWarning):
        assert mine.get("f" * 64) == (False, None)


def test_every_corrupted_byte_is_detected(key_file, tmp_path):
    checkpoint = DirectoryCheckpoint(tmp_path / "fits")
    result = {"test_scores": np.linspace(0, 1, 50), "fit_error": None}
    checkpoint.put("0" * 64, result)
    path = tmp_path / "fits" / ("0" * 64 + ".result")
    good = path.read_bytes()
    rng = random.Random(0)
    outcomes = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        for _ in range(3000):
            damaged = bytearray(good)
            position = rng.randrange(len(good))
            damaged[position] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(damaged))
            outcomes.add(DirectoryCheckpoint(tmp_path / "fits").get("0" * 64))
        # Cut short, as by a crash of the writer that the rename did not hide.
        path.write_bytes(good[: len(good) // 2])
        outcomes.add(DirectoryCheckpoint(tmp_path / "fits").get("0" * 64))
    assert outcomes == {(False, None)}
    path.write_bytes(good)
    found, loaded = checkpoint.get("0" * 64)
    assert found and np.array_equal(loaded["test_scores"], result["test_scores"])


def test_files_are_checked_at_every_open(key_file, tmp_path):
    checkpoint = DirectoryCheckpoint(tmp_path / "fits")
    checkpoint.put("1" * 64, _result())
    path = tmp_path / "fits" / ("1" * 64 + ".result")
    path.chmod(0o622)  # writable by others: anyone could have replaced it
    with pytest.warns(CheckpointWarning, match="mode"):
        assert checkpoint.get("1" * 64) == (False, None)
    path.chmod(0o600)
    assert checkpoint.get("1" * 64) == (True, _result())
    # A symbolic link to a (valid) result is not followed.
    checkpoint.put("2" * 64, _result(2))
    os.symlink(
        tmp_path / "fits" / ("2" * 64 + ".result"),
        tmp_path / "fits" / ("3" * 64 + ".result"),
    )
    with pytest.warns(CheckpointWarning, match="cannot be opened safely"):
        assert checkpoint.get("3" * 64) == (False, None)
    # The directory too, every time: made writable by others after the start.
    (tmp_path / "fits").chmod(0o777)
    with pytest.raises(PermissionError, match="checkpoint_dir="):
        checkpoint.get("1" * 64)
    with pytest.raises(PermissionError, match="Refusing to use"):
        checkpoint.put("4" * 64, _result())


@as_other_user_too
def test_a_directory_replaced_by_another_user_is_refused(
    key_file, tmp_path, shared_tmp
):
    # This user's checkpoint path leads (through a link of this user's) to a
    # directory in a shared /tmp, checked when first used; it is removed
    # (a cleaner of /tmp) and another user makes one of that name, with a
    # result planted in it.
    mine = shared_tmp / "checkpoint"
    mine.mkdir(mode=0o700)
    link = tmp_path / "checkpoint"
    link.symlink_to(mine)
    checkpoint = DirectoryCheckpoint(link)
    checkpoint.put("5" * 64, _result())
    assert checkpoint.get("5" * 64) == (True, _result())
    shutil.rmtree(mine)
    marker = tmp_path / "planted-ran"
    name = "5" * 64 + ".result"
    as_other_user(
        'mkdir -m 700 "$1" && cat > "$1/$2"',
        mine,
        name,
        data=pickle.dumps(_RunsCommand(marker)),
    )
    with pytest.raises(PermissionError, match=f"belongs to uid {OTHER_UID}"):
        checkpoint.get("5" * 64)
    with pytest.raises(PermissionError, match=f"belongs to uid {OTHER_UID}"):
        DirectoryCheckpoint(link)
    assert not marker.exists()


@as_other_user_too
def test_a_link_made_by_another_user_is_refused(key_file, tmp_path, shared_tmp):
    # Another user's link in a shared /tmp, even to a directory of this
    # user's, could be re-pointed at any time.
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = shared_tmp / "checkpoint"
    as_other_user('ln -s "$1" "$2"', mine, link)
    with pytest.raises(PermissionError, match=f"symbolic link of uid {OTHER_UID}"):
        DirectoryCheckpoint(link)


@as_other_user_too
def test_files_another_user_planted_before_a_chmod_are_refused(
    key_file, tmp_path, shared_tmp
):
    directory = shared_tmp / "fits"
    directory.mkdir()
    directory.chmod(0o777)  # open to others for a while...
    marker = tmp_path / "planted-ran"
    name = "6" * 64 + ".result"
    as_other_user(
        'cat > "$1"',
        directory / name,
        data=pickle.dumps(_RunsCommand(marker)),
    )
    directory.chmod(0o700)  # ...then closed: the files stay theirs
    checkpoint = DirectoryCheckpoint(directory)
    with pytest.warns(CheckpointWarning, match=f"belongs to uid {OTHER_UID}"):
        assert checkpoint.get("6" * 64) == (False, None)
    assert not marker.exists()


def test_a_search_refits_what_does_not_verify_and_runs_nothing_planted(
    client, tmp_path
):
    rng = np.random.RandomState(0)
    X, y = rng.randn(60, 4), rng.randint(0, 2, 60)
    grid = {"C": [0.5, 1.0]}
    checkpoint_dir = tmp_path / "checkpoint"

    def search():
        return IPyParallelGridSearchCV(
            SVC(), grid, cv=3, client=client, checkpoint_dir=checkpoint_dir
        )

    search().fit(X, y)
    files = sorted(checkpoint_dir.iterdir())
    assert len(files) == 6
    marker = tmp_path / "planted-ran"
    files[0].write_bytes(pickle.dumps(_RunsCommand(marker)))  # planted
    damaged = bytearray(files[1].read_bytes())
    damaged[-5] ^= 0xFF
    files[1].write_bytes(bytes(damaged))  # corrupted
    with pytest.warns(CheckpointWarning) as record:
        resumed = search().fit(X, y)
    named = sorted(str(w.message).split("'")[1] for w in record)
    assert named == sorted(str(path) for path in files[:2])
    assert not marker.exists()
    assert_same_search(resumed, GridSearchCV(SVC(), grid, cv=3).fit(X, y), X)
    # Both fits ran again and were saved again, signed.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        search().fit(X, y)


def test_part_files_of_interrupted_writes_are_removed(key_file, tmp_path):
    checkpoint = DirectoryCheckpoint(tmp_path / "fits")
    checkpoint.put("7" * 64, _result())
    checkpoint.put("8" * 64, _result())
    (tmp_path / "fits" / "sklearn_ipp-0123.part").write_bytes(b"half a result")
    (tmp_path / "fits" / "notes.part").write_bytes(b"the user's own")
    checkpoint.keep_only({"7" * 64})
    assert sorted(os.listdir(tmp_path / "fits")) == ["7" * 64 + ".result", "notes.part"]


def test_many_unusable_files_do_not_flood_the_warnings(key_file, tmp_path):
    theirs = DirectoryCheckpoint(tmp_path / "fits", key=b"k" * 32)
    for i in range(20):
        theirs.put(f"{i:064d}", _result(i))
    mine = DirectoryCheckpoint(tmp_path / "fits")
    with pytest.warns(CheckpointWarning) as record:
        for i in range(20):
            assert mine.get(f"{i:064d}") == (False, None)
    messages = [str(w.message) for w in record]
    assert len(messages) == 6
    assert all("is not used" in message for message in messages[:5])
    assert messages[5].startswith("More saved results in")


class _SlowSVC(SVC):
    """SVC whose fits take a moment, so that a search is still running."""

    def __init__(self, C=1.0, delay=0.2):
        super().__init__(C=C)
        self.delay = delay

    def fit(self, X, y, **fit_params):
        import time

        time.sleep(self.delay)
        return super().fit(X, y, **fit_params)


def _wait_for(condition, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _search_on(client, checkpoint_dir, n_candidates=20):
    return IPyParallelGridSearchCV(
        _SlowSVC(),
        {"C": list(np.linspace(0.1, 2.0, n_candidates))},
        cv=3,
        client=client,
        checkpoint_dir=checkpoint_dir,
    )


def _data():
    rng = np.random.RandomState(0)
    return rng.randn(60, 4), rng.randint(0, 2, 60)


def test_a_removed_checkpoint_directory_ends_the_fit_with_the_path(client, tmp_path):
    import time

    checkpoint_dir = tmp_path / "checkpoint"
    search = _search_on(client, checkpoint_dir)
    search.fit_async(*_data())
    _wait_for(lambda: checkpoint_dir.exists() and len(os.listdir(checkpoint_dir)) >= 2)
    # Moved away first: results written meanwhile would make removing it fail.
    checkpoint_dir.rename(tmp_path / "removed")
    shutil.rmtree(tmp_path / "removed")
    removed = time.monotonic()
    with pytest.raises(OSError, match="checkpoint_dir=") as info:
        search.wait(timeout=30)  # returns False, not raising, if still running
    assert time.monotonic() - removed < 10
    assert str(checkpoint_dir) in str(info.value)
    search.abort()  # returns at once: the run is over


@needs_root("mounts a 64 kB tmpfs as a checkpoint_dir that fills up")
def test_a_full_checkpoint_disk_ends_the_fit_and_keeps_what_was_saved(client, tmp_path):
    import time

    checkpoint_dir = tmp_path / "small"
    checkpoint_dir.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", checkpoint_dir],
        check=True,
    )
    try:
        search = _search_on(client, checkpoint_dir, n_candidates=40)
        started = time.monotonic()
        with pytest.raises(OSError, match="No space left on device") as info:
            search.fit(*_data())
        assert time.monotonic() - started < 60
        message = str(info.value)
        assert str(checkpoint_dir) in message and "checkpoint_dir=" in message
        names = os.listdir(checkpoint_dir)
        assert names and all(name.endswith(".result") for name in names)  # no .part
        saved = len(names)
        assert saved < 120
        # What was saved is used: the next fit (with room) runs only the rest.
        subprocess.run(["mount", "-o", "remount,size=4m", checkpoint_dir], check=True)
        search = _search_on(client, checkpoint_dir, n_candidates=40)
        search.fit(*_data())
        assert len(os.listdir(checkpoint_dir)) == 120
    finally:
        subprocess.run(["umount", checkpoint_dir], check=True)
