"""Oversubscribed fits side by side, in processes of one session or of a session each.

Two processes fit the same CatBoost model at once (``thread_count=-1``: a
thread per CPU in each, as on two engines of a host or two loky workers),
and each fit is timed inside its process:

- ``one session``: both in this process's session, as loky's workers, and as
  ``SameSessionEngineSetLauncher`` starts engines;
- ``a session each``: each in a session of its own (``os.setsid``), as
  ipyparallel's local launcher starts engines.

On Linux with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``
is 1, the default of most distributions), the kernel shares CPU time between
sessions first. The two pools alternate, ``--repeat`` times; the table gives
the median fit time of each. Needs catboost (the ``benchmark`` extra)::

    python benchmarks/bench_sessions.py --repeat 15
"""

import argparse
import multiprocessing
import os
import time

import numpy as np
import saved_run


def _fit(X, y):
    from catboost import CatBoostClassifier

    start = time.perf_counter()
    CatBoostClassifier(iterations=80, depth=6, random_seed=0, verbose=0).fit(X, y)
    return time.perf_counter() - start


def _autogroup():
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as flag:
            return "on" if flag.read().strip() == "1" else "off"
    except OSError:
        return "not available"


def main(argv=None):
    from sklearn.datasets import make_classification

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)

    # Two thirds of the rows of bench_threads' catboost workload, as a split.
    X, y = make_classification(20000, 40, random_state=0)
    X, y = X[: 2 * len(X) // 3], y[: 2 * len(y) // 3]
    context = multiprocessing.get_context("spawn")
    pools = {
        "one session": context.Pool(2),
        "a session each": context.Pool(2, initializer=os.setsid),
    }
    times = {name: [] for name in pools}
    try:
        for pool in pools.values():  # warm-up: catboost imported
            pool.starmap(_fit, [(X[:300], y[:300])] * 2)
        for _ in range(args.repeat):
            for name, pool in pools.items():
                times[name] += pool.starmap(_fit, [(X, y)] * 2)
    finally:
        for pool in pools.values():
            pool.terminate()
    print(f"{saved_run.machine()}; autogroup scheduling {_autogroup()}")
    print(f"\n{'processes':<16} {'fits':>5} {'median fit s':>13} {'x one session':>14}")
    print("-" * 51)
    reference = np.median(times["one session"])
    for name, values in times.items():
        median = np.median(values)
        print(
            f"{name:<16} {len(values):>5} {median:>13.3f} {median / reference:>14.2f}"
        )


if __name__ == "__main__":
    main()
