"""Time limits on searches with runaway candidates, side by side with loky.

Two workloads, each a grid search with ``KFold(3, shuffle=True,
random_state=0)`` on ``make_classification`` data (20 features, 8
informative, 5 % of the labels flipped):

- ``svc``: an SVC over 7 values of ``C`` (0.1 to 1e5) and 4 of ``gamma``,
  on 6,000 rows, standardised. With a large ``C``, libsvm chases the flipped
  labels: a few candidates take 6 to 75 times the median fit, and score no
  better. An SVC fits in one call of compiled code, which the engine's stop
  signal cannot interrupt: the client scores such a fit as failed 2 s plus a
  tenth of the limit after the limit, and ends its engine and starts a new
  one when this process started it;
- ``hgb``: a HistGradientBoostingClassifier (``max_iter=3000``, early
  stopping) over 5 learning rates and 3 values of ``max_leaf_nodes``, on
  4,000 rows. The tiny learning rates run thousands of iterations, 10 to 40
  times the median fit. Its fits return to Python between iterations: the
  stop signal ends them at once.

For each number of workers N, each system runs in a fresh process after a
small warm-up search:

- ``loky``: scikit-learn's ``GridSearchCV(n_jobs=N)``, no limit;
- ``sklearn_ipp``: ``IPyParallelGridSearchCV`` on N engines of an
  ``ipyparallel.Cluster`` started by the process and given as ``client``,
  no limit;
- ``fit_timeout``: the same with ``fit_timeout`` at ``--factor`` times the
  median fit time of the loky run;
- ``fit_timeout-kept``: the same, but the cluster given as an
  ``ipyparallel.Client``, as a cluster started by ``ipcluster`` would be:
  engines are never ended, and run the fits they could not stop to their end;
- ``time_budget``: ``time_budget`` at ``--budgets`` fractions of the wall
  time of the ``sklearn_ipp`` run.

The table gives each run's wall time, its ratio to loky's, the fits that
failed (stopped at the limit), the candidates evaluated on every split, and
the best candidate and score, checked against loky's. ``--plot`` draws the
best score against the time budget.

    python benchmarks/bench_budgets.py --workers 2 4
"""

import argparse
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import saved_run

WORKLOADS = ("svc", "hgb")


def _workload(name):
    """Return ``(estimator, grid, X, y)`` of a workload."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = make_classification(
        n_samples=6000 if name == "svc" else 4000,
        n_features=20,
        n_informative=8,
        flip_y=0.05,
        random_state=0,
    )
    if name == "svc":
        grid = {"C": [0.1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5]}
        grid["gamma"] = [1e-4, 1e-3, 1e-2, 1e-1]
        return SVC(), grid, StandardScaler().fit_transform(X), y
    estimator = HistGradientBoostingClassifier(
        max_iter=3000, early_stopping=True, random_state=0
    )
    grid = {"learning_rate": [0.3, 0.1, 0.03, 0.01, 0.001]}
    grid["max_leaf_nodes"] = [7, 15, 31]
    return estimator, grid, X, y


def _run_child(system, workload, n_workers, limit):
    from sklearn.exceptions import FitFailedWarning
    from sklearn.model_selection import GridSearchCV, KFold

    estimator, grid, X, y = _workload(workload)
    cv = KFold(3, shuffle=True, random_state=0)
    cluster = None
    if system == "loky":
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_workers)
    else:
        from bench_search_memory import new_cluster

        from sklearn_ipp import IPyParallelGridSearchCV

        cluster = new_cluster(n_workers)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n_workers, timeout=120)
        options = {"client": client if system == "fit_timeout-kept" else cluster}
        if system.startswith("fit_timeout"):
            options["fit_timeout"] = limit
        search = IPyParallelGridSearchCV(estimator, grid, cv=cv, **options)
    # Warm-up on a few rows: workers started, modules imported.
    search.fit(X[:300], y[:300])
    if system == "time_budget":
        search.set_params(time_budget=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", UserWarning)  # non-finite scores, budget
        start = time.perf_counter()
        search.fit(X, y)
        wall = time.perf_counter() - start
    results = search.cv_results_
    splits = np.array([results[f"split{k}_test_score"] for k in range(3)])
    row = {
        "wall": wall,
        "failed_fits": int(np.isnan(splits).sum()),
        "candidates": len(results["params"]),
        "best_params": search.best_params_,
        "best_score": float(search.best_score_),
        "median_fit": float(np.median(results["mean_fit_time"])),
        "slowest_fit": float(np.max(results["mean_fit_time"])),
    }
    print(json.dumps(row))
    if cluster is not None:
        cluster.stop_cluster_sync()


def _run(system, workload, n_workers, limit=None):
    command = [sys.executable, __file__, "--child", system, workload]
    command += ["--workers", str(n_workers)]
    if limit is not None:
        command += ["--limit", repr(limit)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        raise SystemExit(f"{system} on {n_workers} workers failed")
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"  {workload} {system} on {n_workers}: {row['wall']:.1f} s", flush=True)
    row = {"workload": workload, "system": system, "workers": n_workers, **row}
    return {**row, "limit": limit}


def _plot(rows, path, command):
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(row["workload"] for row in rows))
    fig, axes = plt.subplots(
        1, len(workloads), figsize=(5.5 * len(workloads), 4.2), layout="constrained"
    )
    for ax, workload in zip(np.atleast_1d(axes), workloads, strict=True):
        of_workload = [row for row in rows if row["workload"] == workload]
        for k, n_workers in enumerate(sorted({row["workers"] for row in of_workload})):
            mine = [row for row in of_workload if row["workers"] == n_workers]
            budget = sorted(
                (row for row in mine if row["system"] == "time_budget"),
                key=lambda row: row["limit"],
            )
            (unlimited,) = [row for row in mine if row["system"] == "sklearn_ipp"]
            x = [row["limit"] for row in budget] + [unlimited["wall"]]
            y = [row["best_score"] for row in budget] + [unlimited["best_score"]]
            ax.plot(x, y, "o-", color=f"C{k}", label=f"{n_workers} engines")
            for row in [*budget, unlimited]:
                ax.annotate(
                    f"{row['candidates']}",
                    (row["limit"] or row["wall"], row["best_score"]),
                    textcoords="offset points",
                    xytext=(0, 6 if k == 0 else -12),
                    ha="center",
                    size=8,
                    color=f"C{k}",
                )
        ax.set_xlabel("time_budget (s); each line's last point: no budget")
        ax.set_ylabel("best validation accuracy")
        ax.set_title(f"{workload} (labels: candidates evaluated)", size=10)
        ax.legend()
    fig.suptitle(f"Best score within a time budget\n{command}", size=9)
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS)
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=5.0,
        help="fit_timeout: this times the median fit time of the loky run",
    )
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5],
        help="time_budget: these fractions of the sklearn_ipp run's wall time",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(*args.child, args.workers[0], args.limit)
        return
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return

    print(saved_run.machine())
    rows = []
    for workload in args.workloads:
        for n_workers in args.workers:
            loky = _run("loky", workload, n_workers)
            limit = round(args.factor * loky["median_fit"], 2)
            unlimited = _run("sklearn_ipp", workload, n_workers)
            rows += [loky, unlimited]
            rows += [
                _run(system, workload, n_workers, limit)
                for system in ("fit_timeout", "fit_timeout-kept")
            ]
            rows += [
                _run("time_budget", workload, n_workers, round(f * unlimited["wall"]))
                for f in args.budgets
            ]
    loky = {
        (row["workload"], row["workers"]): row
        for row in rows
        if row["system"] == "loky"
    }
    print()
    header = f"{'workload':<8} {'system':<17} {'workers':>7} {'median fit':>10}"
    header += f" {'limit s':>7} {'wall s':>7} {'x loky':>6} {'failed fits':>11}"
    print(f"{header} {'candidates':>10} {'best score':>10}  best candidate")
    print("-" * 120)
    for row in rows:
        reference = loky[row["workload"], row["workers"]]
        same = row["best_params"] == reference["best_params"]
        found = "same as loky" if same else row["best_params"]
        limit = "-" if row["limit"] is None else f"{row['limit']:g}"
        print(
            f"{row['workload']:<8} {row['system']:<17} {row['workers']:>7} "
            f"{row['median_fit']:>10.2f} {limit:>7} {row['wall']:>7.1f} "
            f"{row['wall'] / reference['wall']:>6.2f} {row['failed_fits']:>11} "
            f"{row['candidates']:>10} {row['best_score']:>10.4f}  {found}"
        )
    print(
        f"\nlimit: fit_timeout (s), {args.factor:g} x loky's median fit; "
        "time_budget (s), fractions of sklearn_ipp's wall"
    )
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
