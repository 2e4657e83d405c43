"""Multi-threaded estimators on the engines, side by side with loky.

Searches whose fits use OpenMP or BLAS threads, run serially, on loky with
``n_jobs=N`` and with sklearn_ipp on N engines, each in a fresh process after
a small warm-up search, with the same ``cv_results_`` checked across systems:

- ``hgb``: HistGradientBoostingClassifier (OpenMP), X 20000 x 40,
  ``max_iter=60``, 4 learning rates x KFold(3);
- ``pipeline``: StandardScaler, PCA(60, svd_solver="full") and
  LogisticRegression (BLAS), X 6000 x 1500, 10 values of C x KFold(5);
- ``kmeans``: KMeans (OpenMP), X 20000 x 40, 4 numbers of clusters x KFold(3).

loky limits each worker's pools to ``CPUs // N`` threads; sklearn_ipp limits
each engine's to ``CPUs of its host // its engines there``. The system
``sklearn_ipp-all-cpus`` gives every engine all CPUs
(``inner_max_num_threads=cpu_count()``), as engines had before they were
limited: slow, so not run unless asked.

    python benchmarks/bench_threads.py --workers 2 4
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import saved_run
from ratio_plot import plot_ratios, ratios

SYSTEMS = ("serial", "loky", "sklearn_ipp", "sklearn_ipp-all-cpus")
DEFAULT_SYSTEMS = ("serial", "loky", "sklearn_ipp")
WORKLOADS = ("hgb", "pipeline", "kmeans")
TARGET = 1.1  # sklearn_ipp's wall time at most this times loky's


def _workload(name, scale):
    """Return ``(estimator, grid, cv, X, y)`` of a workload."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_classification
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "hgb":
        X, y = make_classification(int(20000 * scale), 40, random_state=0)
        estimator = HistGradientBoostingClassifier(max_iter=60, random_state=0)
        grid = {"learning_rate": [0.05, 0.1, 0.2, 0.3]}
        cv = KFold(3)
    elif name == "pipeline":
        X, y = make_classification(
            int(6000 * scale), 1500, n_informative=60, random_state=0
        )
        estimator = make_pipeline(
            StandardScaler(),
            PCA(60, svd_solver="full"),
            LogisticRegression(max_iter=1000),
        )
        grid = {"logisticregression__C": np.logspace(-3, 2, 10)}
        cv = KFold(5)
    else:
        X, y = make_classification(int(20000 * scale), 40, random_state=0)
        estimator = KMeans(n_init=3, random_state=0)
        grid = {"n_clusters": [4, 8, 16, 32]}
        cv = KFold(3)
    return estimator, grid, cv, X, y


def _run_child(system, workload, n_workers, scale):
    from joblib import cpu_count, parallel_config
    from sklearn.model_selection import GridSearchCV

    estimator, grid, cv, X, y = _workload(workload, scale)
    stop_cluster = None
    if system.startswith("sklearn_ipp"):
        from bench_search_memory import local_cluster

        from sklearn_ipp import IPyParallelGridSearchCV

        client, stop_cluster = local_cluster(n_workers)
        search = IPyParallelGridSearchCV(estimator, grid, cv=cv, client=client)
    else:
        n_jobs = None if system == "serial" else n_workers
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_jobs)
    threads = cpu_count() if system == "sklearn_ipp-all-cpus" else None
    with parallel_config(backend="loky", inner_max_num_threads=threads):
        # Warm-up on a few rows: workers started, modules imported.
        search.fit(X[:300], y[:300])
        start = time.perf_counter()
        search.fit(X, y)
        wall = time.perf_counter() - start
    scores = search.cv_results_["mean_test_score"].tolist()
    print(json.dumps({"wall": wall, "scores": scores}))
    if stop_cluster is not None:
        stop_cluster()


def _run(system, workload, n_workers, scale):
    command = [sys.executable, __file__, "--child", system, workload]
    command += ["--workers", str(n_workers), "--scale", str(scale)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        raise SystemExit(f"{system} on {workload} failed")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _plot(rows, path, command):
    # serial has a single row per workload: it is compared with loky on each
    # number of workers, as the table's "x loky" column compares the others.
    workers = {}
    for row in rows:
        workers.setdefault(row["workload"], []).append(row["workers"])
    expanded = []
    for row in rows:
        if row["system"] == "serial":
            numbers = dict.fromkeys(n for n in workers[row["workload"]] if n != 1)
            expanded += [{**row, "workers": n} for n in numbers]
        else:
            expanded.append(row)
    bars = ratios(
        expanded,
        ("wall",),
        group=lambda row: f"{row['workload']}, {row['workers']} workers",
        stated={"wall": "x_loky"},
    )
    plot_ratios(
        path,
        bars,
        title="Searches of multi-threaded estimators: wall time relative to loky",
        xlabels=("wall time / loky's",),
        target=(TARGET, f"target: sklearn_ipp at most {TARGET:g}x"),
        subtitle=command,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS)
    )
    parser.add_argument(
        "--systems", nargs="+", choices=SYSTEMS, default=list(DEFAULT_SYSTEMS)
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the rows to use"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(*args.child, args.workers[0], args.scale)
        return
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return

    print(f"{saved_run.machine()}; rows x {args.scale:g}")
    rows = []
    for workload in args.workloads:
        first = len(rows)
        runs = [("serial", 1)] if "serial" in args.systems else []
        runs += [
            (system, n_workers)
            for n_workers in args.workers
            for system in args.systems
            if system != "serial"
        ]
        for system, n_workers in runs:
            result = _run(system, workload, n_workers, args.scale)
            row = {"workload": workload, "system": system, "workers": n_workers}
            rows.append({**row, **result})
        # Every system must find the scores of the first one.
        reference = rows[first]["scores"]
        for row in rows[first:]:
            same = np.allclose(row.pop("scores"), reference, rtol=1e-9)
            row["same_scores"] = bool(same)
    loky = {
        (row["workload"], row["workers"]): row["wall"]
        for row in rows
        if row["system"] == "loky"
    }
    print()
    header = f"{'workload':<10} {'system':<22} {'workers':>7} {'wall s':>8}"
    print(f"{header} {'x loky':>7} {'same scores':>12}")
    print("-" * 70)
    for row in rows:
        reference = loky.get((row["workload"], row["workers"]))
        ratio = f"{row['wall'] / reference:.2f}" if reference else "-"
        print(
            f"{row['workload']:<10} {row['system']:<22} {row['workers']:>7} "
            f"{row['wall']:>8.1f} {ratio:>7} "
            f"{'yes' if row['same_scores'] else 'NO':>12}"
        )
    print(f"\nsklearn_ipp target: at most {TARGET} x loky's wall time")
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
