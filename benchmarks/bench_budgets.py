"""Time limits on a search with runaway candidates, side by side with loky.

The workload is a grid search of an SVC over 7 values of ``C`` and 4 of
``gamma``, ``KFold(3, shuffle=True, random_state=0)``, on
``make_classification`` data (``--samples`` rows, 20 features, 5 % of the
labels flipped), standardised. With a large ``C``, libsvm chases the flipped
labels: a few candidates take tens of times the median fit, and score no
better. For each number of workers N, each system in a fresh process after
a small warm-up search:

- ``loky``: scikit-learn's ``GridSearchCV(n_jobs=N)``, no limit;
- ``sklearn_ipp``: ``IPyParallelGridSearchCV`` on N engines of an
  ``ipyparallel.Cluster`` started by the process and given as ``client``,
  no limit;
- ``fit_timeout``: the same with ``fit_timeout`` at ``--factor`` times the
  median fit time of the loky run. An SVC fits in one call of compiled code,
  which the stop signal cannot interrupt: the client scores the fit as
  failed 2 s plus a tenth of the limit after the limit, and ends and
  replaces its engine, which this process started;
- ``fit_timeout-kept``: the same, but the cluster given as an
  ``ipyparallel.Client``, as a cluster started by ``ipcluster`` would be:
  the engines are not ended, and run the stopped fits to their end;
- ``time_budget``: ``time_budget`` at ``--budgets`` fractions of the wall
  time of the ``sklearn_ipp`` run: the candidates evaluated by the deadline
  and the best score among them.

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

SYSTEMS = ("loky", "sklearn_ipp", "fit_timeout", "fit_timeout-kept", "time_budget")
GRID = {"C": [0.1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5], "gamma": [1e-4, 1e-3, 1e-2, 1e-1]}


def _workload(n_samples):
    from sklearn.datasets import make_classification
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(
        n_samples=n_samples,
        n_features=20,
        n_informative=8,
        flip_y=0.05,
        random_state=0,
    )
    return StandardScaler().fit_transform(X), y, KFold(3, shuffle=True, random_state=0)


def _run_child(system, n_workers, n_samples, limit):
    from sklearn.exceptions import FitFailedWarning
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y, cv = _workload(n_samples)
    cluster = None
    if system == "loky":
        search = GridSearchCV(SVC(), GRID, cv=cv, n_jobs=n_workers)
    else:
        from bench_search_memory import new_cluster

        from sklearn_ipp import IPyParallelGridSearchCV

        cluster = new_cluster(n_workers)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n_workers, timeout=120)
        options = {"client": client if system == "fit_timeout-kept" else cluster}
        if system.startswith("fit_timeout"):
            options["fit_timeout"] = limit
        search = IPyParallelGridSearchCV(SVC(), GRID, cv=cv, **options)
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


def _run(system, n_workers, n_samples, limit=None):
    command = [sys.executable, __file__, "--child", system]
    command += ["--workers", str(n_workers), "--samples", str(n_samples)]
    if limit is not None:
        command += ["--limit", repr(limit)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        raise SystemExit(f"{system} on {n_workers} workers failed")
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"system": system, "workers": n_workers, "limit": limit, **row}


def _plot(rows, path, command):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for k, n_workers in enumerate(sorted({row["workers"] for row in rows})):
        mine = [row for row in rows if row["workers"] == n_workers]
        budget = sorted(
            (row for row in mine if row["system"] == "time_budget"),
            key=lambda row: row["limit"],
        )
        (unlimited,) = [row for row in mine if row["system"] == "sklearn_ipp"]
        x = [row["limit"] for row in budget] + [unlimited["wall"]]
        y = [row["best_score"] for row in budget] + [unlimited["best_score"]]
        ax.plot(x, y, "o-", color=f"C{k}", label=f"{n_workers} engines")
        for row in budget:
            ax.annotate(
                f"{row['candidates']}",
                (row["limit"], row["best_score"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                size=8,
                color=f"C{k}",
            )
        ax.axvline(unlimited["wall"], color=f"C{k}", ls=":", lw=1)
    ax.set_xlabel("time_budget (s); the last point of each line: no budget")
    ax.set_ylabel("best validation accuracy")
    ax.set_title(
        "Best score within a time budget (labels: candidates evaluated)\n" + command,
        size=9,
    )
    ax.legend()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--samples", type=int, default=6000)
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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(args.child, args.workers[0], args.samples, args.limit)
        return
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return

    print(f"{saved_run.machine()}; {args.samples} samples")
    rows = []
    for n_workers in args.workers:
        loky = _run("loky", n_workers, args.samples)
        limit = round(args.factor * loky["median_fit"], 2)
        unlimited = _run("sklearn_ipp", n_workers, args.samples)
        rows += [loky, unlimited]
        rows += [
            _run(system, n_workers, args.samples, limit)
            for system in ("fit_timeout", "fit_timeout-kept")
        ]
        rows += [
            _run("time_budget", n_workers, args.samples, round(f * unlimited["wall"]))
            for f in args.budgets
        ]
    walls = {row["workers"]: row["wall"] for row in rows if row["system"] == "loky"}
    best = {row["workers"]: row for row in rows if row["system"] == "loky"}
    print(
        f"\nmedian fit {rows[0]['median_fit']:.2f} s, slowest candidate "
        f"{rows[0]['slowest_fit']:.1f} s a fit (loky, {rows[0]['workers']} workers)"
    )
    header = f"{'system':<17} {'workers':>7} {'limit s':>7} {'wall s':>7} {'x loky':>6}"
    print(f"{header} {'failed fits':>11} {'candidates':>10} {'best score':>10} best")
    print("-" * 100)
    for row in rows:
        same = row["best_params"] == best[row["workers"]]["best_params"]
        found = "same as loky" if same else row["best_params"]
        limit = "-" if row["limit"] is None else f"{row['limit']:g}"
        print(
            f"{row['system']:<17} {row['workers']:>7} {limit:>7} "
            f"{row['wall']:>7.1f} {row['wall'] / walls[row['workers']]:>6.2f} "
            f"{row['failed_fits']:>11} {row['candidates']:>10} "
            f"{row['best_score']:>10.4f} {found}"
        )
    print(
        "\nlimit: fit_timeout (s), at the factor times loky's median fit; "
        "time_budget (s), at fractions of sklearn_ipp's wall"
    )
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
