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


def _fit(estimator, X, y):
    start = time.perf_counter()
    estimator.fit(X, y)
    return time.perf_counter() - start


def _autogroup():
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as flag:
            return "on" if flag.read().strip() == "1" else "off"
    except OSError:
        return "not available"


def main(argv=None):
    from bench_threads import _workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)

    # The first training split of bench_threads' catboost workload, with the
    # deeper of its trees.
    estimator, _, cv, X, y = _workload("catboost", 1.0)
    estimator.set_params(depth=6)
    train, _ = next(cv.split(X))
    X, y = X[train], y[train]
    context = multiprocessing.get_context("spawn")
    pools = {
        "one session": context.Pool(2),
        "a session each": context.Pool(2, initializer=os.setsid),
    }
    times = {name: [] for name in pools}
    try:
        for pool in pools.values():  # warm-up: catboost imported
            pool.starmap(_fit, [(estimator, X[:300], y[:300])] * 2)
        for _ in range(args.repeat):
            for name, pool in pools.items():
                times[name] += pool.starmap(_fit, [(estimator, X, y)] * 2)
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
