"""Multi-threaded estimators on the engines, side by side with loky.

Searches whose fits use OpenMP or BLAS threads, run serially, on loky with
``n_jobs=N`` and with sklearn_ipp on N engines, each in a fresh process after
a small warm-up search, with the same ``cv_results_`` checked across systems:

- ``hgb``: HistGradientBoostingClassifier (OpenMP), X 20000 x 40,
  ``max_iter=60``, 4 learning rates x KFold(3);
- ``pipeline``: StandardScaler, PCA(60, svd_solver="full") and
  LogisticRegression (BLAS), X 3000 x 1000, 6 values of C x KFold(3);
- ``kmeans``: KMeans (OpenMP), X 20000 x 40, 4 numbers of clusters x KFold(3);
- ``lightgbm``, ``xgboost``, ``catboost``: the three libraries' classifiers
  with their default thread settings, 80 trees, X 20000 x 40, 2 x 2
  candidates x ``KFold(3, shuffle=True, random_state=0)`` (installed with
  the ``benchmark`` extra; a workload whose library is missing is left out,
  saying so).

loky limits each worker's pools to ``CPUs // N`` threads; sklearn_ipp limits
each engine's to ``CPUs of its host // its engines there``, and makes that
the CPUs ``joblib.cpu_count()`` reports there while fits run, which
LightGBM sizes its threads from. ``sklearn_ipp`` runs
``IPyParallelGridSearchCV``; ``backend`` runs scikit-learn's own
``GridSearchCV`` under ``parallel_config(backend="ipyparallel")``. The
system ``sklearn_ipp-all-cpus`` gives every engine all CPUs
(``inner_max_num_threads`` and ``LOKY_MAX_CPU_COUNT`` set to
``cpu_count()``), as engines had before they were limited: slow, so not run
unless asked. The engines start in this process's session, as those of
sklearn_ipp's own local cluster; ``sklearn_ipp-own-sessions`` starts each in a
session of its own, as ipyparallel's local launcher does, which Linux
schedules as a group of its own (not run unless asked either).

    python benchmarks/bench_threads.py --workers 2 4 --repeat 3
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import time

import numpy as np
import saved_run
from ratio_plot import plot_ratios, ratios

SYSTEMS = (
    "serial",
    "loky",
    "sklearn_ipp",
    "backend",
    "sklearn_ipp-all-cpus",
    "sklearn_ipp-own-sessions",
)
DEFAULT_SYSTEMS = ("serial", "loky", "sklearn_ipp", "backend")
WORKLOADS = ("hgb", "pipeline", "kmeans", "lightgbm", "xgboost", "catboost")
# The workloads named after the library they need.
THIRD_PARTY = ("lightgbm", "xgboost", "catboost")
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
            int(3000 * scale), 1000, n_informative=60, random_state=0
        )
        estimator = make_pipeline(
            StandardScaler(),
            PCA(60, svd_solver="full"),
            LogisticRegression(max_iter=1000),
        )
        grid = {"logisticregression__C": np.logspace(-3, 2, 6)}
        cv = KFold(3)
    elif name == "kmeans":
        X, y = make_classification(int(20000 * scale), 40, random_state=0)
        estimator = KMeans(n_init=3, random_state=0)
        grid = {"n_clusters": [4, 8, 16, 32]}
        cv = KFold(3)
    else:
        X, y = make_classification(int(20000 * scale), 40, random_state=0)
        estimator, grid = _third_party(name)
        cv = KFold(3, shuffle=True, random_state=0)
    return estimator, grid, cv, X, y


def _third_party(name):
    """Return ``(estimator, grid)`` of a library's classifier, its threads unset."""
    if name == "lightgbm":
        from lightgbm import LGBMClassifier

        estimator = LGBMClassifier(n_estimators=80, deterministic=True, verbose=-1)
        grid = {"num_leaves": [15, 31], "learning_rate": [0.05, 0.1]}
    elif name == "xgboost":
        from xgboost import XGBClassifier

        estimator = XGBClassifier(n_estimators=80, tree_method="hist")
        grid = {"max_depth": [4, 6], "learning_rate": [0.05, 0.1]}
    else:
        from catboost import CatBoostClassifier

        estimator = CatBoostClassifier(iterations=80, random_seed=0, verbose=0)
        grid = {"depth": [4, 6], "learning_rate": [0.05, 0.1]}
    return estimator, grid


def _run_child(system, workload, n_workers, scale):
    from joblib import cpu_count, parallel_config
    from sklearn.model_selection import GridSearchCV

    estimator, grid, cv, X, y = _workload(workload, scale)
    stop_cluster = None
    backend = {"backend": "loky"}
    if system.startswith("sklearn_ipp") or system == "backend":
        from bench_search_memory import local_cluster

        from sklearn_ipp import IPyParallelGridSearchCV

        own_sessions = system == "sklearn_ipp-own-sessions"
        client, stop_cluster = local_cluster(n_workers, own_sessions=own_sessions)
        client.wait_for_engines(n_workers)
        if system == "backend":
            backend = {"backend": "ipyparallel", "client": client}
            search = GridSearchCV(estimator, grid, cv=cv)
        else:
            search = IPyParallelGridSearchCV(estimator, grid, cv=cv, client=client)
        if system == "sklearn_ipp-all-cpus":
            client[:].apply_sync(_see_all_cpus, cpu_count())
    else:
        n_jobs = None if system == "serial" else n_workers
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_jobs)
    threads = cpu_count() if system == "sklearn_ipp-all-cpus" else None
    with parallel_config(**backend, inner_max_num_threads=threads):
        # Warm-up on a few rows: workers started, modules imported.
        search.fit(X[:300], y[:300])
        start = time.perf_counter()
        search.fit(X, y)
        wall = time.perf_counter() - start
    results = search.cv_results_
    n_splits = cv.get_n_splits()
    scores = np.ravel([results[f"split{k}_test_score"] for k in range(n_splits)])
    scores = scores.tolist()
    print(json.dumps({"wall": wall, "scores": scores}))
    if stop_cluster is not None:
        stop_cluster()


def _see_all_cpus(n_cpus):
    import os

    os.environ["LOKY_MAX_CPU_COUNT"] = str(n_cpus)


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
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each system; the median wall"
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
    workloads = []
    for workload in args.workloads:
        if workload in THIRD_PARTY and importlib.util.find_spec(workload) is None:
            print(f"{workload}: left out, it is not installed")
        else:
            workloads.append(workload)
    for workload in workloads:
        first = len(rows)
        runs = [("serial", 1)] if "serial" in args.systems else []
        runs += [
            (system, n_workers)
            for n_workers in args.workers
            for system in args.systems
            if system != "serial"
        ]
        # Each system runs --repeat times, in turn with the others, so that a
        # slow spell of this machine slows them all: the median is kept.
        walls = {run: [] for run in runs}
        results = {}
        for _ in range(args.repeat):
            for system, n_workers in runs:
                result = _run(system, workload, n_workers, args.scale)
                walls[system, n_workers].append(result["wall"])
                results.setdefault((system, n_workers), result)
        for (system, n_workers), result in results.items():
            row = {"workload": workload, "system": system, "workers": n_workers}
            wall = float(np.median(walls[system, n_workers]))
            rows.append({**row, **result, "wall": wall})
        # Every system must find the scores of the first one, split by split.
        reference = rows[first]["scores"]
        for row in rows[first:]:
            same = np.allclose(row.pop("scores"), reference, rtol=1e-9)
            row["same_scores"] = bool(same)
    reference = {
        name: {
            (row["workload"], row["workers"] if name == "loky" else 1): row["wall"]
            for row in rows
            if row["system"] == name
        }
        for name in ("loky", "serial")
    }
    print()
    header = f"{'workload':<10} {'system':<24} {'workers':>7} {'wall s':>8}"
    print(f"{header} {'x serial':>8} {'x loky':>7} {'same scores':>12}")
    print("-" * 81)
    for row in rows:
        ratio = {}
        for name, walls in reference.items():
            key = (row["workload"], row["workers"] if name == "loky" else 1)
            ratio[name] = f"{row['wall'] / walls[key]:.2f}" if key in walls else "-"
        print(
            f"{row['workload']:<10} {row['system']:<24} {row['workers']:>7} "
            f"{row['wall']:>8.1f} {ratio['serial']:>8} {ratio['loky']:>7} "
            f"{'yes' if row['same_scores'] else 'NO':>12}"
        )
    print(f"\nsklearn_ipp target: at most {TARGET} x loky's wall time")
    print("third-party libraries: at most 1.0 x serial's and 1.1 x loky's")
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
