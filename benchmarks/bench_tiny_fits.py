"""Throughput of tiny fits: 2000 DummyClassifier fits, side by side.

A grid search of ``DummyClassifier`` over 400 candidates x 5 folds of a small
dataset, where the cost is all scheduling, run serially, on loky, under
ipyparallel's own joblib backend and with sklearn_ipp, each in a fresh
process after a warm-up search, then ``--repeats`` timed searches: the table
gives their median and range.

It also says where the CPU went during the timed searches: the CPU time of
the client, of the workers (engines, loky's processes) and of ipyparallel's
controller, per fit, and all of it over what the machine's CPUs offered in
that time. A run that uses nearly all of it is bound by the CPUs, not by
waiting; its **bound** is the fits per second the workers' own CPU time
allows when the client and controller have CPUs of their own (workers x
1 / worker CPU per fit, the engines' share of the CPUs being the rest).

    python benchmarks/bench_tiny_fits.py --workers 2 --repeats 5
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import saved_run
from bench_search_memory import new_cluster
from ratio_plot import plot_ratios, ratios

SYSTEMS = ("serial", "loky", "ipyparallel-builtin", "sklearn_ipp")

# DESIGN.md, same workload on 2 workers: fits per second.
ANCHORS = {"serial": 406, "loky": 399, "ipyparallel-builtin": 293}
TARGET = 600


def _search_parts(n_candidates):
    from sklearn.dummy import DummyClassifier

    rng = np.random.RandomState(0)
    X = rng.standard_normal((300, 10))
    y = rng.randint(0, 2, size=300)
    grid = {"strategy": ["prior"], "random_state": list(range(n_candidates))}
    return DummyClassifier(), grid, X, y


def _cpu_by_role():
    """CPU seconds so far of this process and its descendants, by role."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    cpu = {"client": times.user + times.system}
    for process in me.children(recursive=True):
        try:
            command = " ".join(process.cmdline())
            times = process.cpu_times()
        except psutil.Error:
            continue
        engine = "ipyparallel.engine" in command and "nanny" not in command
        loky_worker = "loky" in command and "resource_tracker" not in command
        if engine or loky_worker:
            role = "workers"
        elif "controller" in command:
            role = "controller"
        else:
            role = "other"  # engines' nannies, loky's resource tracker
        cpu[role] = cpu.get(role, 0.0) + times.user + times.system
    return cpu


def _run_child(system, n_workers, n_candidates, n_repeats):
    from sklearn.model_selection import GridSearchCV

    estimator, grid, X, y = _search_parts(n_candidates)
    client = cluster = None
    if system in ("ipyparallel-builtin", "sklearn_ipp"):
        cluster = new_cluster(n_workers)
        client = cluster.start_and_connect_sync()
    if system == "sklearn_ipp":
        from sklearn_ipp import IPyParallelGridSearchCV

        search = IPyParallelGridSearchCV(estimator, grid, cv=5, client=client)
        run = search.fit
    else:
        n_jobs = None if system == "serial" else n_workers
        search = GridSearchCV(estimator, grid, cv=5, n_jobs=n_jobs)
        run = search.fit
        if system == "ipyparallel-builtin":
            from joblib import parallel_backend

            client.load_balanced_view().register_joblib_backend()

            def run(X, y):
                with parallel_backend("ipyparallel"):
                    search.fit(X, y)

    run(X, y)  # warm-up: worker pools started, modules imported
    walls = []
    before = _cpu_by_role()
    for _ in range(n_repeats):
        start = time.perf_counter()
        run(X, y)
        walls.append(time.perf_counter() - start)
    after = _cpu_by_role()
    n_fits = len(search.cv_results_["params"]) * 5
    cpu_ms = {
        role: 1e3 * (after[role] - before.get(role, 0.0)) / (n_fits * n_repeats)
        for role in after
    }
    available = (os.cpu_count() or 1) * sum(walls)
    used = sum(after[role] - before.get(role, 0.0) for role in after)
    rates = sorted(n_fits / wall for wall in walls)
    print(
        json.dumps(
            {
                "system": system,
                "fits_per_second": float(np.median(rates)),
                "fits_per_second_range": [rates[0], rates[-1]],
                "fits": n_fits,
                "cpu_ms_per_fit": cpu_ms,
                "cpu_used": used / available,
            }
        )
    )
    if client is not None:
        client.close()
        cluster.stop_cluster_sync()


def _plot(rows, path, command):
    # The table's reference is serial: its target, 600 fits/s against a
    # serial anchor of 406, asks for 1.48 x serial's throughput. Rows of
    # several runs are grouped by run, each run against its own serial.
    bars = ratios(
        rows,
        ("fits_per_second",),
        group=lambda row: row.get("run") or f"{row['workers']} workers",
        reference="serial",
    )
    target = TARGET / ANCHORS["serial"]
    plot_ratios(
        path,
        bars,
        title=(
            f"{rows[0]['fits']} DummyClassifier fits on {rows[0]['workers']} "
            "workers: fits per second relative to serial"
        ),
        xlabels=("fits per second / serial's (higher is faster)",),
        reference="serial",
        target=(
            target,
            f"target: {TARGET} fits/s against a serial anchor of "
            f"{ANCHORS['serial']} ({target:.2f}x)",
        ),
        subtitle=command,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=400)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed searches per system (this machine is noisy): median and range",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(args.child, args.workers, args.candidates, args.repeats)
        return
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return

    print(f"{saved_run.machine()}; {args.workers} workers")
    rows = []
    for system in args.systems:
        command = [sys.executable, __file__, "--child", system]
        command += [
            "--workers",
            str(args.workers),
            "--candidates",
            str(args.candidates),
            "--repeats",
            str(args.repeats),
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(completed.stderr, file=sys.stderr)
            raise SystemExit(f"{system} failed")
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        rows.append({**row, "workers": args.workers})
    print(
        f"\n{rows[0]['fits']} DummyClassifier fits; fits/s: the median of "
        f"{args.repeats} searches, and their range\n"
    )
    serial = next((r for r in rows if r["system"] == "serial"), None)
    header = (
        f"{'system':<20} {'fits/s':>7} {'range':>11} {'x serial':>8} "
        f"{'anchor':>6}  {'CPU ms per fit: client':>22} {'workers':>7} "
        f"{'controller':>10}  {'CPU used':>8} {'bound fits/s':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        low, high = row["fits_per_second_range"]
        cpu = row["cpu_ms_per_fit"]
        workers_ms = cpu.get("workers")
        # Without workers of its own (serial), the client does the fits.
        per_fit = workers_ms or cpu["client"]
        n_workers = args.workers if workers_ms else 1
        bound = 1e3 * n_workers / per_fit
        x_serial = (
            f"{row['fits_per_second'] / serial['fits_per_second']:.2f}"
            if serial
            else "-"
        )
        print(
            f"{row['system']:<20} {row['fits_per_second']:>7.0f} "
            f"{f'{low:.0f}-{high:.0f}':>11} {x_serial:>8} "
            f"{ANCHORS.get(row['system'], ''):>6}  {cpu['client']:>22.2f} "
            f"{workers_ms or 0:>7.2f} {cpu.get('controller', 0):>10.2f}  "
            f"{row['cpu_used']:>8.0%} {bound:>12.0f}"
        )
    print(
        f"\nsklearn_ipp target: at least {TARGET} fits/s on 2 engines. CPU used: "
        "the CPU time of every process over the CPUs x wall time; bound: the fits "
        "per second of the workers' own CPU time per fit, were the CPUs theirs "
        "alone"
    )
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
