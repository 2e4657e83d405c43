"""Model-based search (TPE) against randomized searches, on the same budget.

The workload: a ``HistGradientBoostingClassifier`` (100 iterations, no early
stopping) on 30,000 rows of ``make_classification`` (30 features, 12
informative), six hyperparameters searched (``learning_rate``,
``max_leaf_nodes``, ``min_samples_leaf``, ``l2_regularization``,
``max_features``, ``max_bins``), ``KFold(3, shuffle=True, random_state=0)``,
``n_iter`` candidates, no refit. A fit takes 0.3 to 3 s on one core, about
1 s on average.

Systems, each on N workers, for each seed (``random_state``):

- ``tpe``: ``IPyParallelOptunaSearchCV`` (its default TPE sampler) on N
  engines;
- ``random``: ``IPyParallelRandomizedSearchCV`` on N engines;
- ``loky``: scikit-learn's ``RandomizedSearchCV(n_jobs=N)``;
- ``optuna-integration``: optuna-integration's ``OptunaSearchCV(n_jobs=N)``
  (its TPE sampler; N threads in this process).

The table gives, per system, the wall time per fit (the search's wall time
over its fits, median over the seeds, and its ratio to ``random``'s; for
``tpe``, also its ratio to our grid search of exactly its candidates, in
the same order on the same engines, run right after it: what the proposals
cost, apart from what the candidates they chose cost), the final best score
(median), the workers' wall time (wall time x N) over the
seconds its fits and scorings took (1: the workers never idle; above, what
the system adds to the work whatever the candidates, since a model-based
search may well propose costlier candidates than a randomized one), and
how soon it reached the final best score of
``random`` with the same seed: the fraction of its fits done by then, and
the seconds (medians; a system that never reached it counts as 2, after
all its fits). The searches on the cluster are watched every 0.25 s for
the candidates finished on every split; ``loky`` is not watched, and its
candidates are taken to finish evenly over its wall time;
``optuna-integration``'s trials record when they finished.

    python benchmarks/bench_model_based.py --workers 2 4 --seeds 5 --plot best.png
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import saved_run

SYSTEMS = ("tpe", "random", "loky", "optuna-integration")
N_SPLITS = 3
NEVER = 2.0  # the fraction of fits counted for a target never reached


def _data():
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=30000,
        n_features=30,
        n_informative=12,
        n_redundant=6,
        flip_y=0.03,
        class_sep=0.8,
        random_state=0,
    )


def _space(optuna_distributions=False):
    if optuna_distributions:
        from optuna.distributions import FloatDistribution, IntDistribution

        return {
            "learning_rate": FloatDistribution(0.01, 0.5, log=True),
            "max_leaf_nodes": IntDistribution(4, 127),
            "min_samples_leaf": IntDistribution(2, 199),
            "l2_regularization": FloatDistribution(1e-3, 10, log=True),
            "max_features": FloatDistribution(0.2, 0.8),
            "max_bins": IntDistribution(16, 255),
        }
    from scipy.stats import loguniform, randint, uniform

    return {
        "learning_rate": loguniform(0.01, 0.5),
        "max_leaf_nodes": randint(4, 128),
        "min_samples_leaf": randint(2, 200),
        "l2_regularization": loguniform(1e-3, 10),
        "max_features": uniform(0.2, 0.6),
        "max_bins": randint(16, 256),
    }


def _estimator():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=100, early_stopping=False, random_state=0
    )


def _watch(search, X, y):
    """Fit ``search`` in the background; return its wall time and finish times.

    The finish time of each candidate (index in ``cv_results_``): when it
    was first seen finished on every split.
    """
    finished = {}
    start = time.perf_counter()
    search.fit_async(X, y)
    while not search.done():
        time.sleep(0.25)
        results = search.partial_results()
        if results is None:
            continue
        now = time.perf_counter() - start
        done = np.ones(len(results["params"]), dtype=bool)
        for k in range(N_SPLITS):
            done &= ~np.ma.getmaskarray(results[f"split{k}_test_score"])
        for index in np.flatnonzero(done):
            key = repr(sorted(results["params"][index].items()))
            finished.setdefault(key, now)
    search.wait()
    wall = time.perf_counter() - start
    params = search.cv_results_["params"]
    times = [finished.get(repr(sorted(p.items())), wall) for p in params]
    return wall, times


def _run_child(system, n_workers, seeds, n_iter):
    import warnings

    from sklearn.model_selection import KFold, RandomizedSearchCV

    warnings.simplefilter("ignore")
    X, y = _data()
    cv = KFold(N_SPLITS, shuffle=True, random_state=0)
    cluster = None
    if system in ("tpe", "random"):
        from bench_search_memory import new_cluster

        cluster = new_cluster(n_workers)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n_workers, timeout=120)
    if system == "optuna-integration":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def make(seed, n):
        if system == "loky":
            return RandomizedSearchCV(
                _estimator(),
                _space(),
                n_iter=n,
                cv=cv,
                refit=False,
                random_state=seed,
                n_jobs=n_workers,
            )
        if system == "optuna-integration":
            from optuna_integration import OptunaSearchCV

            return OptunaSearchCV(
                _estimator(),
                _space(True),
                n_trials=n,
                cv=cv,
                refit=False,
                random_state=seed,
                n_jobs=n_workers,
            )
        from sklearn_ipp import (
            IPyParallelOptunaSearchCV,
            IPyParallelRandomizedSearchCV,
        )

        cls = (
            IPyParallelOptunaSearchCV
            if system == "tpe"
            else IPyParallelRandomizedSearchCV
        )
        return cls(
            _estimator(),
            _space(),
            n_iter=n,
            cv=cv,
            refit=False,
            random_state=seed,
            client=cluster,
        )

    # Warm-up on a few rows: workers started, modules imported.
    make(0, 2).fit(X[:600], y[:600])
    for seed in seeds:
        search = make(seed, n_iter)
        if system in ("tpe", "random"):
            wall, times = _watch(search, X, y)
        elif system == "loky":
            start = time.perf_counter()
            search.fit(X, y)
            wall = time.perf_counter() - start
        if system != "optuna-integration":
            results = search.cv_results_
            scores = list(results["mean_test_score"])
            busy = N_SPLITS * float(
                np.sum(results["mean_fit_time"] + results["mean_score_time"])
            )
            if system == "loky":
                times = [wall * (k + 1) / len(scores) for k in range(len(scores))]
        else:
            start_time = time.time()
            start = time.perf_counter()
            search.fit(X, y)
            wall = time.perf_counter() - start
            trials = search.study_.trials
            scores = [t.value if t.value is not None else np.nan for t in trials]
            times = [
                t.datetime_complete.timestamp() - start_time
                if t.datetime_complete is not None
                else wall
                for t in trials
            ]
            busy = N_SPLITS * sum(
                t.user_attrs.get(f"mean_{name}", 0.0)
                for t in trials
                for name in ("fit_time", "score_time")
            )
        run = {"seed": seed, "wall": wall, "busy": busy, "scores": scores}
        if system == "tpe":
            run["replay_wall"] = _replay(search.cv_results_["params"], cluster, X, y)
        print(json.dumps({**run, "times": times}, default=float), flush=True)
    if cluster is not None:
        cluster.stop_cluster_sync()


def _replay(candidates, cluster, X, y):
    """Return the wall time of our grid search of exactly ``candidates``.

    The same fits, in the same order, on the same engines, by the machinery
    of our randomized search: what the TPE search's wall time is compared
    with to tell the cost of its proposals from the cost of its candidates.
    """
    from sklearn.model_selection import KFold

    from sklearn_ipp import IPyParallelGridSearchCV

    grid = [{name: [value] for name, value in c.items()} for c in candidates]
    search = IPyParallelGridSearchCV(
        _estimator(),
        grid,
        cv=KFold(N_SPLITS, shuffle=True, random_state=0),
        refit=False,
        client=cluster,
    )
    start = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - start


def _run(system, n_workers, seeds, n_iter):
    command = [sys.executable, __file__, "--child", system]
    command += ["--workers", str(n_workers), "--n-iter", str(n_iter)]
    command += ["--seed-list", *map(str, seeds)]
    environment = dict(os.environ, PYTHONWARNINGS="ignore")
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        raise SystemExit(f"{system} on {n_workers} workers failed")
    runs = [
        json.loads(line)
        for line in completed.stdout.splitlines()
        if line.startswith("{")
    ]
    walls = ", ".join(f"{run['wall']:.0f}" for run in runs)
    print(f"  {system} on {n_workers}, seed {seeds}: {walls} s", flush=True)
    return [
        {"system": system, "workers": n_workers, "n_iter": n_iter, **run}
        for run in runs
    ]


def _in_finish_order(run):
    """Return scores and finish times, in the order the candidates finished."""
    order = np.argsort(np.asarray(run["times"]), kind="stable")
    scores = np.asarray(run["scores"], dtype=float)[order]
    return scores, np.asarray(run["times"], dtype=float)[order]


def _reached(run, target):
    """Return the fraction of its fits, and the seconds, to reach ``target``."""
    scores, times = _in_finish_order(run)
    best = np.fmax.accumulate(np.nan_to_num(scores, nan=-np.inf))
    hits = np.flatnonzero(best >= target - 1e-12)
    if not len(hits):
        return NEVER, np.inf
    return (hits[0] + 1) / len(scores), float(times[hits[0]])


def _table(rows):
    targets = {
        (row["workers"], row["seed"]): float(np.nanmax(row["scores"]))
        for row in rows
        if row["system"] == "random"
    }
    summary = []
    for n_workers in sorted({row["workers"] for row in rows}):
        per_fit = {
            system: float(
                np.median(
                    [
                        r["wall"] / (len(r["scores"]) * N_SPLITS)
                        for r in rows
                        if r["system"] == system and r["workers"] == n_workers
                    ]
                )
            )
            for system in SYSTEMS
            if any(r["system"] == system and r["workers"] == n_workers for r in rows)
        }
        for system in SYSTEMS:
            runs = [
                r for r in rows if r["system"] == system and r["workers"] == n_workers
            ]
            if not runs:
                continue
            fractions, seconds = [], []
            for run in runs:
                target = targets.get((n_workers, run["seed"]))
                if target is not None:
                    fraction, second = _reached(run, target)
                    fractions.append(fraction)
                    seconds.append(second)
            summary.append(
                {
                    "system": system,
                    "workers": n_workers,
                    "seeds": len(runs),
                    "seconds_per_fit": per_fit[system],
                    "per_fit_vs_random": per_fit[system] / per_fit["random"]
                    if "random" in per_fit
                    else None,
                    # The same candidates fitted by our grid search: the
                    # time the proposals add, whatever the candidates cost.
                    "per_fit_vs_same_candidates": float(
                        np.median([r["wall"] / r["replay_wall"] for r in runs])
                    )
                    if all("replay_wall" in r for r in runs)
                    else None,
                    "best": float(np.median([np.nanmax(r["scores"]) for r in runs])),
                    # Worker-seconds per second of fitting and scoring: what
                    # the system adds to the work, whatever the candidates.
                    "overhead": float(
                        np.median([r["wall"] * n_workers / r["busy"] for r in runs])
                    ),
                    "fraction_to_target": float(np.median(fractions))
                    if fractions
                    else None,
                    "fractions": fractions,
                    "seconds_to_target": float(np.median(seconds)) if seconds else None,
                }
            )
    print()
    print(
        f"{'system':<19} {'workers':>7} {'seeds':>5} {'s/fit':>6} {'x random':>8} "
        f"{'x same candidates':>17} {'wall x N / busy':>15} "
        f"{'best (median)':>13} {'fits to random best':>19} {'s to it':>8}"
    )
    print("-" * 126)
    for row in summary:
        ratio = row["per_fit_vs_random"]
        same = row["per_fit_vs_same_candidates"]
        fraction = row["fraction_to_target"]
        print(
            f"{row['system']:<19} {row['workers']:>7} {row['seeds']:>5} "
            f"{row['seconds_per_fit']:>6.2f} "
            f"{'-' if ratio is None else f'{ratio:.2f}':>8} "
            f"{'-' if same is None else f'{same:.2f}':>17} {row['overhead']:>15.2f} "
            f"{row['best']:>13.4f} "
            f"{'-' if fraction is None else f'{fraction:.2f}':>19} "
            f"{row['seconds_to_target']:>8.1f}"
        )
    return summary


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = sorted({row["workers"] for row in rows})
    fig, axes = plt.subplots(
        2, len(workers), figsize=(5 * len(workers), 7), squeeze=False
    )
    for column, n_workers in enumerate(workers):
        for system in SYSTEMS:
            runs = [
                r for r in rows if r["system"] == system and r["workers"] == n_workers
            ]
            if not runs:
                continue
            curves, timed = [], []
            for run in runs:
                scores, times = _in_finish_order(run)
                best = np.fmax.accumulate(np.nan_to_num(scores, nan=-np.inf))
                curves.append(best)
                timed.append((times, best))
            fits = np.arange(1, len(curves[0]) + 1) * N_SPLITS
            (line,) = axes[0, column].plot(
                fits, np.median(curves, axis=0), label=system
            )
            for times, best in timed:
                axes[1, column].step(
                    times, best, where="post", color=line.get_color(), alpha=0.5
                )
        axes[0, column].set_title(f"{n_workers} workers: median over the seeds")
        axes[0, column].set_xlabel("fits")
        axes[1, column].set_title(f"{n_workers} workers: each seed")
        axes[1, column].set_xlabel("wall time (s)")
        for row in (0, 1):
            axes[row, column].set_ylabel("best mean test score so far")
        axes[0, column].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 to this - 1")
    parser.add_argument("--n-iter", type=int, default=30)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--seed-list", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(args.child, args.workers[0], args.seed_list, args.n_iter)
        return
    if args.replot:
        rows = saved_run.load(args.replot)["rows"]
        _table(rows)
        _plot(rows, args.plot)
        return
    print(saved_run.machine())
    rows = []
    seeds = list(range(args.seeds))
    for n_workers in args.workers:
        # Each seed's systems in turn, so that a busy moment of the machine
        # is shared out.
        for seed in seeds:
            for system in args.systems:
                rows += _run(system, n_workers, [seed], args.n_iter)
    _table(rows)
    if args.plot:
        _plot(rows, args.plot)
    if args.save:
        saved_run.save(args.save, rows, argv)


if __name__ == "__main__":
    main()
