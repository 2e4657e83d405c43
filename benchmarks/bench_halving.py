"""Successive halving whose rounds continue their models, against loky.

Two workloads, each a ``HalvingGridSearchCV`` over 81 candidates with
``factor=3`` (five rounds: 81, 27, 9, 3 and 1 candidates) and
``KFold(3, shuffle=True, random_state=0)`` on ``make_classification`` data
(20 features, 8 informative):

- ``forest``: a RandomForestClassifier on 3,000 rows,
  ``resource="n_estimators"`` from 4 to 324 trees, over ``max_features``,
  ``min_samples_leaf``, ``max_depth`` and ``criterion`` (3 x 3 x 3 x 3);
- ``hgb``: a HistGradientBoostingClassifier on 20,000 rows,
  ``resource="max_iter"`` from 3 to 243 iterations, over ``learning_rate``,
  ``max_leaf_nodes``, ``min_samples_leaf`` and ``l2_regularization``
  (3 x 3 x 3 x 3).

For each number of workers N, each system runs in a fresh process after a
small warm-up search:

- ``loky``: scikit-learn's ``HalvingGridSearchCV(n_jobs=N)``;
- ``from-scratch``: ``IPyParallelHalvingGridSearchCV`` on N engines with
  ``warm_start_rounds=False``, every round fitted from scratch as
  scikit-learn does;
- ``warm_start_rounds``: the same with its default,
  ``warm_start_rounds=True``: promoted candidates continue their models;
- ``asynchronous``: the same with ``asynchronous=True`` too: a candidate is
  promoted as soon as it ranks in the top third of those finished at its
  level.

The table gives the wall time, the CPU seconds of the workers (loky's
processes or the engines, the controller left out) while the search ran,
both relative to loky's, the best score, and whether ``cv_results_`` (times
left out) equal loky's to ``rtol=1e-9`` (asynchronous halving's differ by
design: it promotes other candidates).

With ``--repeat``, each system runs that many times, in turn with the
others, and the table gives the median wall and CPU times.

    python benchmarks/bench_halving.py --workers 2 4 --repeat 3
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import saved_run

WORKLOADS = ("forest", "hgb")
SYSTEMS = ("loky", "from-scratch", "warm_start_rounds", "asynchronous")
TIME_KEYS = ("mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time")


def _workload(name):
    """Return ``(estimator, grid, resource, min_resources, X, y)``."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )

    if name == "forest":
        X, y = make_classification(3000, 20, n_informative=8, random_state=0)
        estimator = RandomForestClassifier(random_state=0)
        grid = {
            "max_features": [0.2, 0.5, 1.0],
            "min_samples_leaf": [1, 4, 16],
            "max_depth": [4, 8, None],
            "criterion": ["gini", "entropy", "log_loss"],
        }
        return estimator, grid, "n_estimators", 4, X, y
    # More rows: a boosting iteration on 3,000 rows costs less than what
    # every fit costs besides (binning the data, scoring).
    X, y = make_classification(20000, 20, n_informative=8, random_state=0)
    estimator = HistGradientBoostingClassifier(random_state=0)
    grid = {
        "learning_rate": [0.03, 0.1, 0.3],
        "max_leaf_nodes": [7, 15, 31],
        "min_samples_leaf": [5, 20, 80],
        "l2_regularization": [0.0, 0.1, 1.0],
    }
    return estimator, grid, "max_iter", 3, X, y


def _worker_cpu(me):
    """CPU seconds of this process's worker processes, the controller left out."""
    import psutil

    total = 0.0
    for process in me.children(recursive=True):
        try:
            if any("ipyparallel.controller" in part for part in process.cmdline()):
                continue
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _run_child(system, workload, n_workers):
    import psutil
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV, KFold

    estimator, grid, resource, min_resources, X, y = _workload(workload)
    kwargs = {
        "resource": resource,
        "min_resources": min_resources,
        "max_resources": min_resources * 81,
        "factor": 3,
        "cv": KFold(3, shuffle=True, random_state=0),
        "random_state": 0,
    }
    cluster = None
    if system == "loky":
        search = HalvingGridSearchCV(estimator, grid, n_jobs=n_workers, **kwargs)
    else:
        from bench_search_memory import new_cluster

        from sklearn_ipp import IPyParallelHalvingGridSearchCV

        cluster = new_cluster(n_workers)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n_workers, timeout=120)
        search = IPyParallelHalvingGridSearchCV(
            estimator,
            grid,
            client=cluster,
            warm_start_rounds=system != "from-scratch",
            asynchronous=system == "asynchronous",
            **kwargs,
        )
    # Warm-up on a few rows: workers started, modules imported.
    search.fit(X[:300], y[:300])
    me = psutil.Process()
    cpu_before = _worker_cpu(me)
    start = time.perf_counter()
    search.fit(X, y)
    wall = time.perf_counter() - start
    cpu = _worker_cpu(me) - cpu_before
    results = {
        key: np.asarray(value).tolist()
        for key, value in search.cv_results_.items()
        if key not in TIME_KEYS and key != "params" and not key.startswith("param_")
    }
    row = {
        "wall": wall,
        "worker_cpu": cpu,
        "best_score": float(search.best_score_),
        "best_params": search.best_params_,
        "n_candidates": list(search.n_candidates_),
        "results": results,
    }
    print(json.dumps(row, default=str))
    if cluster is not None:
        cluster.stop_cluster_sync()


def _run(system, workload, n_workers):
    command = [sys.executable, __file__, "--child", system, workload]
    command += ["--workers", str(n_workers)]
    environment = dict(os.environ, PYTHONWARNINGS="ignore")
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        raise SystemExit(f"{system} on {n_workers} workers failed")
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"  {workload} {system} on {n_workers}: {row['wall']:.1f} s", flush=True)
    return {"workload": workload, "system": system, "workers": n_workers, **row}


def _same_results(ours, reference):
    if sorted(ours) != sorted(reference):
        return False
    for key, expected in reference.items():
        got = ours[key]
        try:
            if not np.allclose(
                np.asarray(got, dtype=float),
                np.asarray(expected, dtype=float),
                rtol=1e-9,
                equal_nan=True,
            ):
                return False
        except (TypeError, ValueError):
            if got != expected:
                return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS)
    )
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each system; the median times"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(*args.child, args.workers[0])
        return
    if args.replot:
        parser.error("this benchmark draws no plot")

    print(saved_run.machine())
    rows = []
    for workload in args.workloads:
        for n_workers in args.workers:
            # In turn, so that a busy moment of the machine is shared out.
            runs = {system: [] for system in args.systems}
            for _ in range(args.repeat):
                for system in args.systems:
                    runs[system].append(_run(system, workload, n_workers))
            for system, repeats in runs.items():
                row = dict(repeats[0])
                for key in ("wall", "worker_cpu"):
                    row[key] = float(np.median([run[key] for run in repeats]))
                    row[f"{key}_runs"] = [run[key] for run in repeats]
                if system == "asynchronous":
                    # Its promotions depend on the order fits end in.
                    row["best_scores"] = [run["best_score"] for run in repeats]
                    row["n_candidates_runs"] = [run["n_candidates"] for run in repeats]
                rows.append(row)
    reference = {
        (row["workload"], row["workers"]): row
        for row in rows
        if row["system"] == "loky"
    }
    print()
    header = f"{'workload':<8} {'system':<18} {'workers':>7} {'wall s':>7}"
    header += f" {'x loky':>6} {'worker CPU s':>12} {'x loky':>6} {'best score':>10}"
    print(f"{header}  same results  candidates per level")
    print("-" * 118)
    for row in rows:
        loky = reference.get((row["workload"], row["workers"]))
        same = "-"
        if loky is not None and row["system"] != "asynchronous":
            same = _same_results(row["results"], loky["results"])
        row["same_results"] = same
        wall_ratio = "-" if loky is None else f"{row['wall'] / loky['wall']:.2f}"
        cpu_ratio = (
            "-" if loky is None else f"{row['worker_cpu'] / loky['worker_cpu']:.2f}"
        )
        print(
            f"{row['workload']:<8} {row['system']:<18} {row['workers']:>7} "
            f"{row['wall']:>7.1f} {wall_ratio:>6} {row['worker_cpu']:>12.1f} "
            f"{cpu_ratio:>6} {row['best_score']:>10.4f}  "
            f"{'yes' if same is True else 'NO' if same is False else same:>12}  "
            f"{'/'.join(map(str, row['n_candidates']))}"
        )
    if args.save:
        for row in rows:
            del row["results"]
        saved_run.save(args.save, rows, argv)


if __name__ == "__main__":
    main()
