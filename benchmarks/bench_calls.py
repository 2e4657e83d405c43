"""Small ``Parallel`` calls: loky and the backend side by side, in one run.

What a user who wraps a whole script in ``with parallel_config(backend=...)``
sees of every short call scikit-learn makes, on sklearn_ipp's own local
cluster (one engine per CPU, started by this process, as such a block
without a client starts it) and loky with as many workers, both warm:

- ``trivial``: one ``Parallel(n_jobs=N)`` call of 4 trivial tasks (the
  median of 20 calls);
- ``forest``: ``RandomForestClassifier(50, n_jobs=N)`` fit and
  ``predict_proba`` on 2,000 x 20 (median of 5);
- ``permutation``: ``permutation_importance`` of that fitted forest,
  ``n_repeats=5``, ``n_jobs=N`` (median of 5);
- ``test_forest`` (with ``--sklearn-tests``): scikit-learn's
  ``ensemble/tests/test_forest.py`` with every test under the backend, once,
  in a process of its own (minutes).

The systems alternate ``--rounds`` times, each row's loky and backend
timings taken in turn, so that a busy moment of the machine is shared out;
the table gives each system's best round and the ratio of the two.

    python benchmarks/bench_calls.py --rounds 2 --sklearn-tests
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import saved_run

BACKENDS = ("loky", "ipyparallel")


def _trivial(n_workers):
    from joblib import Parallel, delayed

    def once():
        Parallel(n_jobs=n_workers)(delayed(abs)(-i) for i in range(4))

    return once, 20


def _forest_data():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=2000, n_features=20, random_state=0)


def _forest(n_workers):
    from sklearn.ensemble import RandomForestClassifier

    X, y = _forest_data()

    def once():
        forest = RandomForestClassifier(50, n_jobs=n_workers, random_state=0)
        forest.fit(X, y).predict_proba(X)

    return once, 5


def _permutation(n_workers):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.inspection import permutation_importance

    X, y = _forest_data()
    forest = RandomForestClassifier(50, random_state=0).fit(X, y)

    def once():
        permutation_importance(
            forest, X, y, n_repeats=5, n_jobs=n_workers, random_state=0
        )

    return once, 5


WORKLOADS = {
    "trivial": ("Parallel(n_jobs=N) of 4 trivial tasks", _trivial),
    "forest": ("RandomForestClassifier(50) fit + predict_proba", _forest),
    "permutation": ("permutation_importance of the forest", _permutation),
}


def _config(backend, n_workers):
    from joblib import parallel_config

    if backend == "loky":
        return parallel_config(backend="loky", n_jobs=n_workers)
    return parallel_config(backend="ipyparallel")


def _median_seconds(once, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sklearn_tests(backend, n_workers):
    """Run scikit-learn's test_forest.py under ``backend``; return its seconds.

    In a process of its own: under the backend, it starts a local cluster
    of its own too.
    """
    import sklearn

    path = os.path.join(
        os.path.dirname(sklearn.__file__), "ensemble", "tests", "test_forest.py"
    )
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "bench_calls_plugin.py"), "w") as f:
            f.write(PLUGIN.format(backend=backend, n_workers=n_workers))
        # The plugin, and this file for its _config, before what the caller
        # set (the sklearn_ipp to measure).
        here = os.path.dirname(os.path.abspath(__file__))
        python_path = [directory, here, os.environ.get("PYTHONPATH", "")]
        environment = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, python_path))
        )
        command = [sys.executable, "-m", "pytest", path, "-q"]
        command += ["-p", "no:cacheprovider", "-p", "bench_calls_plugin"]
        start = time.perf_counter()
        completed = subprocess.run(
            command, capture_output=True, text=True, cwd=directory, env=environment
        )
        seconds = time.perf_counter() - start
    summary = completed.stdout.strip().splitlines()[-1:] or ["(no output)"]
    return seconds, summary[0]


# Every test of the file runs inside a parallel_config block of the backend.
PLUGIN = """
import pytest
from bench_calls import _config

import sklearn_ipp  # registers the backend


@pytest.fixture(autouse=True)
def _under_the_backend():
    with _config("{backend}", {n_workers}):
        yield
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--sklearn-tests",
        action="store_true",
        help="also run scikit-learn's test_forest.py under each (minutes)",
    )
    args = parser.parse_args(argv)
    print(saved_run.machine())
    # The cluster's profile and files in a directory of this run only.
    os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="bench-calls-")
    from sklearn_ipp import get_client

    # sklearn_ipp's own local cluster, one engine per CPU, as a user's
    # parallel_config block without a client starts it; loky gets as many.
    n_workers = len(get_client().ids)
    print(f"{n_workers} engines, {n_workers} loky workers")
    workloads = {name: make(n_workers) for name, (_, make) in WORKLOADS.items()}
    best = {}
    for round_number in range(args.rounds):
        for name, (once, repeats) in workloads.items():
            for backend in BACKENDS:
                with _config(backend, n_workers):
                    once()  # warm: loky's workers, imports on the engines
                    seconds = _median_seconds(once, repeats)
                key = (name, backend)
                best[key] = min(best.get(key, float("inf")), seconds)
                print(
                    f"  round {round_number + 1}: {name} on {backend}: "
                    f"{seconds * 1e3:.1f} ms",
                    flush=True,
                )
    rows = [
        (WORKLOADS[name][0], best[(name, "loky")], best[(name, "ipyparallel")])
        for name in WORKLOADS
    ]
    if args.sklearn_tests:
        seconds = {}
        for backend in BACKENDS:
            seconds[backend], summary = _sklearn_tests(backend, n_workers)
            print(
                f"  test_forest.py on {backend}: {seconds[backend]:.0f} s ({summary})"
            )
        rows.append(("scikit-learn's test_forest.py", *(seconds[b] for b in BACKENDS)))
    print()
    print(f"{'work':<48} {'loky':>10} {'backend':>10} {'ratio':>6}")
    print("-" * 77)
    for label, loky, backend in rows:
        print(
            f"{label:<48} {_duration(loky):>10} {_duration(backend):>10} "
            f"{backend / loky:>6.2f}"
        )


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds * 1e3:.1f} ms"


if __name__ == "__main__":
    main()
