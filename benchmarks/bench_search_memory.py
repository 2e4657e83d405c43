"""Memory and wall time of a 400 MB grid search, side by side with the anchors.

The workload of DESIGN.md: X of 40000 x 1250 float64 (400 MB),
``SGDClassifier(max_iter=5, tol=None)``, 4 values of ``alpha`` x ``KFold(3)``,
run by

- sklearn's GridSearchCV on loky with ``n_jobs`` = workers,
- sklearn's GridSearchCV under ipyparallel's own joblib backend,
- sklearn_ipp's IPyParallelGridSearchCV,
- sklearn's GridSearchCV under sklearn_ipp's joblib backend,
- sklearn's GridSearchCV under dask's joblib backend with ``scatter=[X, y]``
  on a ``distributed.LocalCluster`` of one single-threaded worker process per
  worker (only when dask.distributed is installed: ``pip install distributed``),

each on 2 and 4 workers or engines, each in a fresh process, after a fit on
600 rows has started the workers and imported scikit-learn in them (``--cold``
measures the first fit instead). Peak extra
memory is the peak, during ``fit``, of the summed proportional set size (PSS)
of every process of the run (client, loky workers, controller, engines) plus
the RAM-backed files it wrote in /dev/shm, minus the same sum just before
``fit``; shared-memory pages mapped by processes are counted once, as files.

    python benchmarks/bench_search_memory.py --workers 2 4
"""

import argparse
import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import saved_run
from ratio_plot import plot_ratios, ratios

DASK = "dask scatter=[X, y]"
SYSTEMS = (
    "loky",
    "ipyparallel-builtin",
    "sklearn_ipp",
    "sklearn on sklearn_ipp backend",
    DASK,
)

# DESIGN.md, measured on the same kind of machine: (wall s, peak extra x X).
ANCHORS = {
    ("loky", 2): (10.4, 3.6),
    ("loky", 4): (14.0, 6.1),
    ("ipyparallel-builtin", 2): (46.2, 14.5),
    ("ipyparallel-builtin", 4): (53.9, 21.1),
    (DASK, 2): (9.9, 4.1),
    (DASK, 4): (14.6, 8.1),
}
TARGET = (
    "targets: sklearn_ipp <= 1.5 x X, its backend <= 2 x X, both flat in engines"
    " and wall <= loky"
)

_SHM = "/dev/shm"
_SAMPLE_SECONDS = 0.05


def _unshared_pss(pid):
    """PSS of a process minus its mapped shared memory, in bytes."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:  # the process ended while being read
        return 0
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def _shm_bytes():
    total = 0
    for root, _, files in os.walk(_SHM):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _footprint():
    me = psutil.Process()
    pids = [me.pid] + [child.pid for child in me.children(recursive=True)]
    return sum(_unshared_pss(pid) for pid in pids) + _shm_bytes()


class _PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, _footprint())
            time.sleep(_SAMPLE_SECONDS)

    def stop(self):
        self._halt.set()
        self.join()
        self.peak = max(self.peak, _footprint())


def new_cluster(n_engines, own_sessions=False, **options):
    """Return an ``ipyparallel.Cluster`` of ``n_engines``, not started yet.

    It has a profile of its own, in a temporary directory removed when this
    process exits. The engines start in this process's session, as those of
    sklearn_ipp's own local cluster (``SameSessionEngineSetLauncher``); with
    ``own_sessions``, each in a session of its own, as ipyparallel's local
    launcher starts them. ``options`` are more of the cluster's options.
    The other benchmarks start their clusters with this too.
    """
    import ipyparallel as ipp

    from sklearn_ipp import SameSessionEngineSetLauncher

    ipython_dir = tempfile.mkdtemp(prefix="bench-ipython-")
    # Registered before the cluster's own exit handler, so run after it.
    atexit.register(shutil.rmtree, ipython_dir, ignore_errors=True)
    os.environ["IPYTHONDIR"] = ipython_dir
    launcher = "local" if own_sessions else SameSessionEngineSetLauncher
    return ipp.Cluster(
        n=n_engines, log_level=40, engine_launcher_class=launcher, **options
    )


def local_cluster(n_engines, own_sessions=False):
    """Start :func:`new_cluster`; return ``(client, stop)``."""
    cluster = new_cluster(n_engines, own_sessions)
    client = cluster.start_and_connect_sync()

    def stop():
        client.close()
        cluster.stop_cluster_sync()

    return client, stop


def _workload(n_samples, n_features):
    rng = np.random.RandomState(0)
    X = rng.standard_normal((n_samples, n_features))
    y = (X[:, :10].sum(axis=1) > 0).astype(int)
    return X, y


def _run_child(system, n_workers, n_samples, n_features, cold):
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import GridSearchCV, KFold

    X, y = _workload(n_samples, n_features)
    estimator = SGDClassifier(max_iter=5, tol=None, random_state=0)
    grid = {"alpha": [1e-4, 1e-3, 1e-2, 1e-1]}
    cv = KFold(3)
    if system == DASK:
        from distributed import Client, LocalCluster
        from joblib import parallel_backend

        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True
        )
        client = Client(cluster)
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_workers)

        def run(X, y):
            with parallel_backend("dask", scatter=[X, y]):
                search.fit(X, y)

        def stop_cluster():
            client.close()
            cluster.close()

    elif system == "loky":
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_workers)
        run = search.fit
        stop_cluster = None
    else:
        client, stop_cluster = local_cluster(n_workers)

        if system == "sklearn_ipp":
            from sklearn_ipp import IPyParallelGridSearchCV

            search = IPyParallelGridSearchCV(estimator, grid, cv=cv, client=client)
            run = search.fit
        else:
            from joblib import parallel_backend

            if system == "ipyparallel-builtin":
                client.load_balanced_view().register_joblib_backend()
            else:
                import sklearn_ipp  # registers its own "ipyparallel" backend

                sklearn_ipp.register_backend(client=client)
            search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_workers)

            def run(X, y):
                with parallel_backend("ipyparallel"):
                    search.fit(X, y)

    if not cold:
        # Start worker pools and import scikit-learn everywhere first, so that
        # the numbers count what each system does with the data; a cold run
        # adds about 100 MB per worker process of imports.
        small_X, small_y = X[:600], y[:600]
        run(small_X, small_y)
    time.sleep(1.0)  # let start-up settle before the baseline
    baseline = _footprint()
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    run(X, y)
    wall = time.perf_counter() - start
    sampler.stop()
    result = {
        "system": system,
        "workers": n_workers,
        "wall": wall,
        "peak_extra_x": (sampler.peak - baseline) / X.nbytes,
        "x_mb": X.nbytes / 1e6,
        "best_score": float(search.best_score_),
    }
    if stop_cluster is not None:
        stop_cluster()
    print(json.dumps(result))


def _dask_installed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def _plot(rows, path, command):
    bars = ratios(
        rows,
        ("wall", "peak_extra_x"),
        group=lambda row: f"{row['workers']} workers",
    )
    plot_ratios(
        path,
        bars,
        title=f"Grid search on X of {rows[0]['x_mb']:.0f} MB, relative to loky",
        xlabels=("wall time / loky's", "peak extra memory / loky's"),
        subtitle=command,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--n-samples", type=int, default=40000)
    parser.add_argument("--n-features", type=int, default=1250)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="measure the first fit, with worker start-up and imports",
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("SYSTEM", "WORKERS"), help=argparse.SUPPRESS
    )
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return
    if args.child:
        _run_child(
            args.child[0],
            int(args.child[1]),
            args.n_samples,
            args.n_features,
            args.cold,
        )
        return

    import ipyparallel
    import joblib
    import sklearn

    import sklearn_ipp

    print(saved_run.machine())
    print(
        f"scikit-learn {sklearn.__version__}, joblib {joblib.__version__}, "
        f"ipyparallel {ipyparallel.__version__}, sklearn_ipp {sklearn_ipp.__version__}"
    )
    systems = list(args.systems)
    if DASK in systems and not _dask_installed():
        systems.remove(DASK)
        print("dask.distributed is not installed: its rows show the anchors only")
    rows = []
    for n_workers in args.workers:
        for system in systems:
            completed = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    system,
                    str(n_workers),
                    "--n-samples",
                    str(args.n_samples),
                    "--n-features",
                    str(args.n_features),
                    *(["--cold"] if args.cold else []),
                ],
                capture_output=True,
                text=True,
            )
            if completed.returncode != 0:
                print(completed.stderr, file=sys.stderr)
                raise SystemExit(f"{system} on {n_workers} workers failed")
            rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print(f"  done: {system}, {n_workers} workers", file=sys.stderr)

    x_mb = rows[0]["x_mb"]
    state = "cold (first fit)" if args.cold else "warm (after a small fit)"
    print(f"\nX: {x_mb:.0f} MB; {state}; peak extra memory in multiples of X\n")
    header = f"{'system':<31} {'workers':>7} {'wall s':>8} {'peak extra':>11} "
    header += f"{'best score':>10}   {'anchor wall':>11} {'anchor mem':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        anchor = ANCHORS.get((row["system"], row["workers"]))
        anchor_text = f"{anchor[0]:>11.1f} {anchor[1]:>9.1f}x" if anchor else " " * 22
        print(
            f"{row['system']:<31} {row['workers']:>7} {row['wall']:>8.1f} "
            f"{row['peak_extra_x']:>10.2f}x {row['best_score']:>10.4f}   {anchor_text}"
        )
    measured = {(row["system"], row["workers"]) for row in rows}
    for (system, workers), (wall, memory) in ANCHORS.items():
        if system == DASK and (system, workers) not in measured:
            print(
                f"{system + ' (anchor only)':<31} {workers:>7} {'':>8} {'':>11} "
                f"{'':>10}   {wall:>11.1f} {memory:>9.1f}x"
            )
    print(f"\n{TARGET}")
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
