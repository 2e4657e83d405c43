"""The parallel model selection tutorial, end to end, on a local cluster.

Each step of the tutorial, with sklearn_ipp doing the parallel work:

1. start (or find) a cluster and look at its engines and hosts;
2. run a grid search of an SVC on the digits data in the background, print
   the progress and the best candidates so far while it runs, and add an
   engine in the middle of it;
3. print the ranked report (mean +/- standard error over the splits) and
   draw the parameter boxplots and the score heatmap;
4. run a randomized search with a time budget and stop it: the candidates
   run in a random order, so what finished is an unbiased sample;
5. compute a learning curve on the cluster;
6. look at the engines' memory and the hosts' free memory again.

Run it from a checkout, with the ``plot`` extra installed::

    pip install ".[plot]"
    python examples/tutorial_walkthrough.py --output-dir walkthrough

The figures are written to ``--output-dir``. ``--client PROFILE`` runs on a
running cluster instead of starting a local one; ``--quick`` makes every
step small (it is what the tests run).
"""

import argparse
import os
import time

import ipyparallel as ipp
import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import ShuffleSplit
from sklearn.svm import SVC

import sklearn_ipp

matplotlib.use("Agg")  # files only: the script may run without a screen


def show_cluster(client):
    """Print what the tutorial looks at before and after a search."""
    memory = sklearn_ipp.engines_memory(client)
    print(f"  engines: {len(memory)}, resident MB: ", end="")
    print(", ".join(f"{e}: {mb:.0f}" for e, mb in sorted(memory.items())))
    for host, available in sorted(sklearn_ipp.hosts_free_memory(client).items()):
        print(f"  host {host}: {available:,.0f} MB available")


def grid_search(client, X, y, args, cluster):
    """Run a grid search in the background; watch it; add an engine to it."""
    n_c, n_gamma = (2, 3) if args.quick else (4, 5)
    n_splits = 3 if args.quick else 5
    search = sklearn_ipp.IPyParallelGridSearchCV(
        SVC(),
        {"C": np.logspace(-1, 2, n_c), "gamma": np.logspace(-4, 0, n_gamma)},
        cv=ShuffleSplit(n_splits=n_splits, test_size=0.25, random_state=42),
        return_train_score=True,
        client=client,
    )
    search.fit_async(X, y)
    added = False
    while not search.wait(timeout=args.poll):
        finished, total = search.progress()
        bests = search.find_bests(n_top=1)
        best = f", best so far {bests[0][0]:.4f}" if bests else ""
        print(f"  {finished}/{total} fits{best}")
        if cluster is not None and not added and finished >= total // 3:
            # Engines may join a running search: they get the next tasks.
            cluster.start_engines_sync(n=1)
            print("  started one more engine")
            added = True
    print(search.report(n_top=3))
    best = {name: float(value) for name, value in search.best_params_.items()}
    print(f"  best: {best}, refitted on all the data")
    boxplots = sklearn_ipp.ParameterBoxplotDisplay.from_search(
        search, display_train=True
    )
    boxplots.figure_.savefig(os.path.join(args.output_dir, "boxplots.png"))
    heatmap = sklearn_ipp.ScoreHeatmapDisplay.from_search(search)
    heatmap.figure_.savefig(os.path.join(args.output_dir, "heatmap.png"))
    return added


def truncated_randomized_search(client, X, y, args):
    """Sample candidates in a random order and stop after a time budget."""
    search = sklearn_ipp.IPyParallelRandomizedSearchCV(
        SVC(),
        {"C": np.logspace(-1, 3, 20), "gamma": np.logspace(-5, 0, 20)},
        n_iter=8 if args.quick else 60,
        cv=ShuffleSplit(n_splits=3, test_size=0.25, random_state=0),
        random_state=0,
        client=client,
    )
    search.fit_async(X, y)
    if not search.wait(timeout=args.budget):
        search.abort()
    print(search.report(n_top=3))
    return search


def main(argv=None):
    """Run the walkthrough; ``argv`` as on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--client",
        default=None,
        help="profile, cluster file or connection file of a running cluster "
        "(default: start a local cluster for this script)",
    )
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--output-dir", default="walkthrough")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between looks")
    parser.add_argument(
        "--budget", type=float, default=10.0, help="seconds for the randomized search"
    )
    parser.add_argument("--quick", action="store_true", help="small steps")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)

    print("1. The cluster")
    cluster = None
    if args.client is None:
        cluster = ipp.Cluster(n=args.engines)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(args.engines, timeout=120)
    else:
        client = sklearn_ipp.get_client(args.client)
    try:
        show_cluster(client)
        digits = load_digits()
        X, y = digits.data, digits.target
        if args.quick:
            X, y = X[:600], y[:600]

        print("2-3. A grid search in the background")
        start = time.perf_counter()
        added = grid_search(client, X, y, args, cluster)
        print(f"  {time.perf_counter() - start:.1f} s")

        print("4. A randomized search stopped after its budget")
        truncated_randomized_search(client, X, y, args)

        print("5. A learning curve on the cluster")
        curve = sklearn_ipp.LearningCurveDisplay.from_estimator(
            SVC(gamma=1e-3),
            X,
            y,
            train_sizes=np.linspace(0.1, 1.0, 3 if args.quick else 5),
            cv=ShuffleSplit(n_splits=3, test_size=0.25, random_state=0),
            client=client,
        )
        curve.figure_.savefig(os.path.join(args.output_dir, "learning_curve.png"))
        print(f"  validation scores: {np.round(curve.test_scores.mean(axis=1), 4)}")

        print("6. The cluster afterwards")
        if added:
            client.wait_for_engines(args.engines + 1, timeout=120)
        show_cluster(client)
        print(f"Figures written to {args.output_dir}")
    finally:
        client.close()
        if cluster is not None:
            cluster.stop_cluster_sync()


if __name__ == "__main__":
    main()
