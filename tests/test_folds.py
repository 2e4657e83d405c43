"""The fold index without a cluster: finding folds, storing them, hashing."""

import gc
import inspect

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from sklearn_ipp._fit_and_score import fit_and_score_arguments
from sklearn_ipp._folds import FoldIndex

X = np.random.RandomState(0).standard_normal((30, 4))
Y = np.arange(30) % 2
TEST = np.arange(20, 30)


class Recorder:
    def __init__(self):
        self.written, self.removed = [], []

    def write(self, obj, rows=None, columns=None):
        self.written.append((len(rows), None if columns is None else len(columns)))
        return f"ref-{len(self.written)}"

    def remove(self, ref):
        self.removed.append(ref)


def arguments(train, test=TEST, X=X, estimator=None, **extra):
    return {
        "estimator": estimator or LogisticRegression(),
        "X": X,
        "y": Y,
        "train": np.asarray(train),
        "test": test,
        "parameters": {},
        "fit_params": None,
        **extra,
    }


def test_only_sklearns_fit_and_score_is_recognised():
    from sklearn.model_selection._validation import _fit_and_score

    # Every parameter this scikit-learn's _fit_and_score requires, by name.
    required = inspect.signature(_fit_and_score).parameters
    args = dict.fromkeys(required) | arguments(np.arange(20))
    found = fit_and_score_arguments(_fit_and_score, (), args)
    assert found["train"] is args["train"]
    assert fit_and_score_arguments(len, (X,), {}) is None


def test_train_sizes_of_a_learning_curve_share_the_longest_fold():
    recorder = Recorder()
    index = FoldIndex(recorder.write, recorder.remove)
    _, small, n_small = index.fold_of(arguments(np.arange(5)))
    _, large, n_large = index.fold_of(arguments(np.arange(20)))
    _, middle, n_middle = index.fold_of(arguments(np.arange(10)))
    assert small is large is middle
    assert (n_small, n_middle, n_large) == (5, 10, 20)
    index.store(index.to_store([small.key]))
    assert recorder.written == [(30, None), (30, None)]  # X and y, all rows once


def test_a_fold_being_stored_is_not_extended():
    index = FoldIndex(Recorder().write, Recorder().remove)
    _, fold, _ = index.fold_of(arguments(np.arange(5)))
    assert index.to_store([fold.key]) is fold  # chosen: its rows are final
    _, other, _ = index.fold_of(arguments(np.arange(20)))
    assert other is not fold
    assert len(fold.train) == 5


def test_a_precomputed_kernel_is_stored_square():
    recorder = Recorder()
    index = FoldIndex(recorder.write, recorder.remove)
    kernel = X @ X.T  # (30, 30)
    args = arguments(np.arange(20), X=kernel, estimator=SVC(kernel="precomputed"))
    _, fold, _ = index.fold_of(args)
    index.store(index.to_store([fold.key]))
    assert recorder.written[0] == (30, 30)


def test_small_folds_are_stored_together_large_ones_one_at_a_time():
    splits = [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)]
    for small_bytes, expected in [(10**9, 3), (0, 1)]:
        recorder = Recorder()
        index = FoldIndex(recorder.write, recorder.remove, 1, small_bytes)
        folds = []
        for test in splits:
            train = np.setdiff1d(np.arange(30), test)
            folds.append(index.fold_of(arguments(train, test=test))[1])
        keys = [fold.key for fold in folds]
        stored = []
        while (fold := index.to_store(keys)) is not None:
            index.store(fold)
            stored.append(fold)
        assert stored == folds[:expected]
        # Once a fold's tasks are done its files go, and the next one fits.
        index.release_idle()
        assert len(recorder.removed) == 2 * expected
        if expected == 1:
            assert index.to_store(keys[1:]) is folds[1]
        assert index.max_stored_bytes == sum(fold.nbytes for fold in stored)


def test_hashes_are_forgotten_with_their_arrays():
    index = FoldIndex(Recorder().write, Recorder().remove)
    array = np.arange(1000.0)
    first = index.hash(array)
    assert index.hash(array) == first
    n_entries = len(index._hash._entries)
    del array
    gc.collect()
    assert len(index._hash._entries) == n_entries - 1
    # A new array with other content, maybe at the same address, is hashed anew.
    assert index.hash(np.arange(1000.0) + 1) != first


def test_whole_data_is_one_fold_for_every_split_and_stays_stored():
    recorder = Recorder()
    index = FoldIndex(recorder.write, recorder.remove, whole_data=True)
    rng = np.random.RandomState(0)
    first_train, first_test = rng.permutation(20)[:8], np.array([25, 21, 29])
    key_a, fold_a, rows_a = index.fold_of(arguments(first_train, first_test))
    key_b, fold_b, _ = index.fold_of(arguments(np.arange(15, 30), np.arange(5)))
    assert fold_a is fold_b and key_a != key_b
    # Row numbers in the order given: the fold holds every row, in order.
    np.testing.assert_array_equal(rows_a[0], first_train)
    np.testing.assert_array_equal(rows_a[1], first_test)
    # The same split gives the same arrays, stored once when large.
    assert index.fold_of(arguments(first_train, first_test))[2][0] is rows_a[0]
    assert index.to_store([fold_a.key]) is fold_a
    index.store(fold_a)
    assert recorder.written == [(30, None)] * 2  # X and y
    fold_a.n_outstanding = 0
    index.release_idle()  # between two rounds of a halving search
    assert fold_a.stored and not recorder.removed
    rewritten, _ = fold_a.rewrite(arguments(first_train, first_test), rows_a)
    assert rewritten[1] == "ref-1" and rewritten[2] == "ref-2"
    index.clear()
    assert recorder.removed == ["ref-1", "ref-2"]
