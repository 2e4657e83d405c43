"""Scheduling efficiency with latency-bound fits, side by side.

A grid search whose every fit sleeps 0.2 s (no CPU, no data to speak of), on
N engines with sklearn_ipp and on loky with ``n_jobs=N``, each in a fresh
process after a warm-up search. With 10 fits per worker the ideal wall time
is 10 x 0.2 s = 2 s whatever N; efficiency is that ideal over the measured
wall time (the refit is left out: ``refit=False``), the median of
``--repeats`` searches.

    python benchmarks/bench_scheduling.py --workers 4 8 16
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import saved_run
from bench_search_memory import new_cluster
from ratio_plot import label, plot_ratios
from sklearn.base import BaseEstimator, ClassifierMixin

SYSTEMS = ("loky", "sklearn_ipp")
SLEEP_SECONDS = 0.2
FITS_PER_WORKER = 10
N_SPLITS = 5
TARGET = 0.9


class SleepingClassifier(ClassifierMixin, BaseEstimator):
    """Sleeps ``SLEEP_SECONDS`` in fit; predicts the first class."""

    def __init__(self, tag=0):
        self.tag = tag

    def fit(self, X, y):  # noqa: D102
        time.sleep(SLEEP_SECONDS)
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):  # noqa: D102
        return np.full(len(X), self.classes_[0])


def _run_child(system, n_workers, repeats):
    from sklearn.model_selection import GridSearchCV

    n_candidates = FITS_PER_WORKER * n_workers // N_SPLITS
    grid = {"tag": list(range(n_candidates))}
    rng = np.random.RandomState(0)
    X, y = rng.standard_normal((200, 5)), rng.randint(0, 2, size=200)
    client = cluster = None
    if system == "sklearn_ipp":
        from sklearn_ipp import IPyParallelGridSearchCV

        cluster = new_cluster(n_workers)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n_workers, timeout=300)
        search = IPyParallelGridSearchCV(
            SleepingClassifier(), grid, cv=N_SPLITS, refit=False, client=client
        )
    else:
        search = GridSearchCV(
            SleepingClassifier(), grid, cv=N_SPLITS, refit=False, n_jobs=n_workers
        )
    search.fit(X, y)  # warm-up: workers started, modules imported
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        search.fit(X, y)
        walls.append(time.perf_counter() - start)
    wall = float(np.median(walls))
    n_fits = n_candidates * N_SPLITS
    ideal = n_fits / n_workers * SLEEP_SECONDS
    print(
        json.dumps(
            {
                "system": system,
                "workers": n_workers,
                "fits": n_fits,
                "wall": wall,
                "walls": walls,
                "ideal": ideal,
                "efficiency": ideal / wall,
            }
        )
    )
    if client is not None:
        client.close()
        cluster.stop_cluster_sync()


def _efficiency_range(row):
    """Return the lowest and highest efficiency of a row's searches."""
    if "range" in row:  # transcribed from the docs' table
        return tuple(row["range"])
    if "walls" in row:
        return row["ideal"] / max(row["walls"]), row["ideal"] / min(row["walls"])
    return None


def _plot(rows, path, command):
    # Efficiency is already a ratio, to the ideal wall time: drawn as it is,
    # with the spread of the repeated searches.
    bars = [
        {
            "group": f"{row['workers']} workers",
            "series": ", ".join(filter(None, [label(row["system"]), row.get("run")])),
            "system": row["system"],
            "values": (row["efficiency"],),
            "ranges": (_efficiency_range(row),),
        }
        for row in rows
    ]
    plot_ratios(
        path,
        bars,
        title=(
            f"Scheduling efficiency: fits sleeping {SLEEP_SECONDS} s, "
            f"{FITS_PER_WORKER} per worker"
        ),
        xlabels=("efficiency: ideal wall time / measured (median, range)",),
        reference="ideal",
        target=(TARGET, f"target: {TARGET:.0%}"),
        percent=True,
        subtitle=command,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed searches per configuration"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(args.child, args.workers[0], args.repeats)
        return
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return

    print(
        f"{saved_run.machine()}; fits sleep {SLEEP_SECONDS} s, "
        f"{FITS_PER_WORKER} fits per worker, median of {args.repeats} searches"
    )
    rows = []
    for n_workers in args.workers:
        for system in args.systems:
            command = [sys.executable, __file__, "--child", system]
            command += ["--workers", str(n_workers), "--repeats", str(args.repeats)]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                print(completed.stderr, file=sys.stderr)
                raise SystemExit(f"{system} on {n_workers} workers failed")
            rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(
        f"\n{'system':<14} {'workers':>8} {'fits':>6} {'wall s':>8} "
        f"{'ideal s':>8} {'efficiency':>11}  {'range':>9}"
    )
    print("-" * 71)
    for row in rows:
        print(
            f"{row['system']:<14} {row['workers']:>8} {row['fits']:>6} "
            f"{row['wall']:>8.2f} {row['ideal']:>8.2f} {row['efficiency']:>10.0%}"
            f"  {row['ideal'] / max(row['walls']):>4.0%}-"
            f"{row['ideal'] / min(row['walls']):.0%}"
        )
    print(f"\nsklearn_ipp target: at least {TARGET:.0%} of ideal")
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
