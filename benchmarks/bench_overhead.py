"""Cost of the cluster itself: start-up time and task throughput.

Every model-selection task pays these costs on top of its fit, so they bound
how fast tiny fits can go (the DESIGN target: 600 fits/s on 2 engines, against
293 fits/s measured for ipyparallel's built-in joblib backend).

    python benchmarks/bench_overhead.py --engines 2 --tasks 2000
"""

import argparse
import os
import platform
import tempfile
import time

import ipyparallel as ipp
import psutil

# Measured on the same machine, from DESIGN.md.
ANCHORS = {
    "anchor: ipyparallel's joblib backend, DummyClassifier fits": 293,
    "target: sklearn_ipp, DummyClassifier fits": 600,
}


def _noop(x):
    return x


_noop.__module__ = "__main__"  # ship by value: engines need not import this file


def _noop_batch(xs):
    return list(xs)


_noop_batch.__module__ = "__main__"


def _rate(n_tasks, seconds):
    return n_tasks / seconds


def measure(client, n_tasks, batch_size):
    """Return {label: tasks per second} for the ways of sending tiny tasks."""
    lbview = client.load_balanced_view()
    results = {}

    start = time.perf_counter()
    for i in range(min(n_tasks, 200)):
        lbview.apply_sync(_noop, i)
    results["one task at a time, waiting for each"] = _rate(
        min(n_tasks, 200), time.perf_counter() - start
    )

    start = time.perf_counter()
    futures = [lbview.apply_async(_noop, i) for i in range(n_tasks)]
    for future in futures:
        future.get()
    results["one message per task, all submitted"] = _rate(
        n_tasks, time.perf_counter() - start
    )

    start = time.perf_counter()
    batches = [
        range(i, min(i + batch_size, n_tasks)) for i in range(0, n_tasks, batch_size)
    ]
    futures = [lbview.apply_async(_noop_batch, batch) for batch in batches]
    for future in futures:
        future.get()
    results[f"batches of {batch_size} tasks per message"] = _rate(
        n_tasks, time.perf_counter() - start
    )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args(argv)

    print(
        f"machine: {platform.node()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python "
        f"{platform.python_version()}, ipyparallel {ipp.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ipython-") as ipython_dir:
        os.environ["IPYTHONDIR"] = ipython_dir
        start = time.perf_counter()
        cluster = ipp.Cluster(n=args.engines, log_level=40)
        client = cluster.start_and_connect_sync()
        startup = time.perf_counter() - start
        try:
            rates = measure(client, args.tasks, args.batch_size)
        finally:
            client.close()
            cluster.stop_cluster_sync()

    print(
        f"\nlocal cluster of {args.engines} engines started in {startup:.1f} s "
        "(DESIGN anchor: about 7 s for 2)\n"
    )
    rows = {**rates, **ANCHORS}
    width = max(map(len, rows))
    print(f"{'how tiny tasks are sent':<{width}}  tasks/s")
    print(f"{'-' * width}  -------")
    for label, rate in rows.items():
        print(f"{label:<{width}}  {rate:7.0f}")


if __name__ == "__main__":
    main()
