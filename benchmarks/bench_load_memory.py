"""Memory of the client and the controller over a search of 10,000 tiny fits.

A grid search of ``DummyClassifier`` over 2000 candidates x 5 folds (10,000
fits whose cost is all scheduling) runs on a local 2-engine cluster, while a
thread samples the resident memory of the client process and of the
controller (its process and the scheduler processes it starts) every 0.1 s.
The table gives their memory when the search starts, at each quarter of its
fits, and at their peak, with the same search at 2,500 fits for comparison:
memory that grows with the number of fits shows as a larger rise for the
larger search.

    python benchmarks/bench_load_memory.py
"""

import argparse
import contextlib
import threading
import time

import numpy as np
import psutil
from bench_search_memory import new_cluster

MB = 1e6


def _rss(processes):
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # ended meanwhile
            total += process.memory_info().rss
    return total / MB


def measure(n_candidates, client, controller):
    from sklearn.dummy import DummyClassifier

    from sklearn_ipp import IPyParallelGridSearchCV

    rng = np.random.RandomState(0)
    X, y = rng.standard_normal((300, 10)), rng.randint(0, 2, size=300)
    grid = {"strategy": ["prior"], "random_state": list(range(n_candidates))}
    search = IPyParallelGridSearchCV(DummyClassifier(), grid, cv=5, client=client)
    me = psutil.Process()
    controllers = [controller, *controller.children(recursive=True)]
    samples = []  # (fits done, client MB, controller MB)
    done = threading.Event()
    progress = [0]

    def sample():
        while not done.is_set():
            samples.append((progress[0], _rss([me]), _rss(controllers)))
            time.sleep(0.1)

    def on_progress(n_done, n_submitted):
        progress[0] = n_done

    sampler = threading.Thread(target=sample, daemon=True)
    start_client, start_controller = _rss([me]), _rss(controllers)
    sampler.start()
    started = time.perf_counter()
    search.fit_async(X, y)
    # Progress as fits end, read from the search's own report.
    while not search.done():
        line = search.report().splitlines()[0]
        if "(" in line:
            progress[0] = int(line.split("(")[1].split("/")[0])
        time.sleep(0.1)
    search.wait()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    n_fits = n_candidates * 5
    row = {
        "fits": n_fits,
        "seconds": seconds,
        "client": [start_client],
        "controller": [start_controller],
    }
    for quarter in (0.25, 0.5, 0.75, 1.0):
        reached = [s for s in samples if s[0] >= quarter * n_fits]
        last = reached[0] if reached else samples[-1]
        row["client"].append(last[1])
        row["controller"].append(last[2])
    row["client"].append(max(s[1] for s in samples))
    row["controller"].append(max(s[2] for s in samples))
    del search
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--candidates", type=int, nargs="+", default=[500, 2000])
    args = parser.parse_args()
    cluster = new_cluster(args.engines)
    client = cluster.start_and_connect_sync()
    client.wait_for_engines(args.engines)
    controller = psutil.Process(cluster.controller.process.pid)
    try:
        measure(20, client, controller)  # warm-up: imports on the engines
        rows = [measure(n, client, controller) for n in args.candidates]
    finally:
        client.close()
        cluster.stop_cluster_sync()
    print("| fits | seconds | process | start | 25% | 50% | 75% | 100% | peak | rise |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        for name in ("client", "controller"):
            values = row[name]
            cells = " | ".join(f"{value:.0f}" for value in values)
            print(
                f"| {row['fits']} | {row['seconds']:.1f} | {name} | {cells} "
                f"| {values[-1] - values[0]:+.0f} |"
            )
    print("(resident memory in MB)")


if __name__ == "__main__":
    main()
