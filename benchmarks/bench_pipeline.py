"""Pipeline searches whose leading steps do not change, side by side.

Grid searches over the last step of a pipeline, run by

- ``loky``: scikit-learn's GridSearchCV with ``n_jobs`` = workers;
- ``loky memory=``: the same, with ``Pipeline(memory=joblib.Memory(dir))``,
  scikit-learn's own way to fit a prefix once (a fresh cache per run);
- ``dask-ml``: dask-ml's GridSearchCV on a ``distributed.LocalCluster`` of
  one single-threaded worker process per worker (only when dask-ml is
  installed: ``pip install dask-ml distributed``);
- ``sklearn_ipp``: IPyParallelGridSearchCV on as many engines, which fits
  each prefix once per split;
- ``sklearn_ipp whole``: the same with ``reuse_prefixes=False``, every
  pipeline fitted whole (the memory to compare with);

each in a fresh process, after a search on a few rows has started the
workers. The cases:

- ``pca``: ``StandardScaler``, ``PCA(60, svd_solver="full")``,
  ``LogisticRegression``; X 6000 x 1500; 10 values of C x ``KFold(5)``;
- ``text``: ``TfidfVectorizer(ngram_range=(1, 2))``, ``LinearSVC``; a
  generated corpus of 20000 documents of 60 words; 10 values of C x
  ``KFold(5)``;
- ``columns``: a ``ColumnTransformer`` (imputed and scaled numbers,
  one-hot encoded categories), ``LogisticRegression``; 30000 rows, 20
  numeric and 4 categorical columns; 10 values of C x ``KFold(5)``.

Peak extra memory is the peak during ``fit`` of the summed PSS of every
process of the run plus its files in /dev/shm, minus the same just before
(see ``bench_search_memory.py``). Every system must find the same mean test
scores (rtol 1e-9).

    python benchmarks/bench_pipeline.py --workers 2 4
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import saved_run
from bench_search_memory import _footprint, _PeakSampler, local_cluster
from ratio_plot import plot_ratios, ratios

CASES = ("pca", "text", "columns")
SYSTEMS = ("loky", "loky memory=", "dask-ml", "sklearn_ipp", "sklearn_ipp whole")
TARGET = "target: sklearn_ipp at most 1/3 of loky's wall time on pca, ahead of all"


def _case(name, scale):
    """Return ``(estimator, grid, cv, X, y)`` of a case."""
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import make_classification
    from sklearn.decomposition import PCA
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import LinearSVC

    cv = KFold(5)
    if name == "pca":
        X, y = make_classification(
            int(6000 * scale), 1500, n_informative=60, random_state=0
        )
        steps = [
            ("scale", StandardScaler()),
            ("pca", PCA(60, svd_solver="full")),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
        grid = {"clf__C": np.logspace(-3, 2, 10)}
    elif name == "text":
        rng = np.random.RandomState(0)
        vocabulary = np.array([f"w{i}" for i in range(5000)])
        weights = 1.0 / np.arange(1, len(vocabulary) + 1)  # Zipf-like
        weights /= weights.sum()
        n_docs = int(20000 * scale)
        y = rng.randint(0, 2, n_docs)
        topic = rng.choice(vocabulary[:500], (2, 50), replace=False)
        X = []
        for label in y:
            words = list(rng.choice(vocabulary, 55, p=weights))
            words += list(rng.choice(topic[label], 5))
            X.append(" ".join(words))
        steps = [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2)),
            ("svc", LinearSVC()),
        ]
        grid = {"svc__C": np.logspace(-3, 1, 10)}
    else:
        rng = np.random.RandomState(0)
        n_rows = int(30000 * scale)
        numbers, y = make_classification(n_rows, 20, random_state=0)
        numbers[rng.rand(*numbers.shape) < 0.05] = np.nan
        categories = rng.randint(0, 30, (n_rows, 4)).astype(float)
        y = y ^ (categories[:, 0] % 3 == 0)
        X = np.hstack([numbers, categories])
        prep = ColumnTransformer(
            [
                (
                    "num",
                    Pipeline(
                        [("impute", SimpleImputer()), ("scale", StandardScaler())]
                    ),
                    list(range(20)),
                ),
                ("cat", OneHotEncoder(handle_unknown="ignore"), list(range(20, 24))),
            ]
        )
        steps = [("prep", prep), ("clf", LogisticRegression(max_iter=1000))]
        grid = {"clf__C": np.logspace(-3, 2, 10)}
    return Pipeline(steps), grid, cv, X, y


def _run_child(system, case, n_workers, scale):
    from sklearn.model_selection import GridSearchCV

    estimator, grid, cv, X, y = _case(case, scale)
    stop_cluster = cache = None
    if system.startswith("sklearn_ipp"):
        from sklearn_ipp import IPyParallelGridSearchCV

        client, stop_cluster = local_cluster(n_workers)
        search = IPyParallelGridSearchCV(
            estimator,
            grid,
            cv=cv,
            client=client,
            reuse_prefixes=system == "sklearn_ipp",
        )
    elif system == "dask-ml":
        from dask_ml.model_selection import GridSearchCV as DaskGridSearchCV
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True
        )
        client = Client(cluster)

        def stop_cluster():
            client.close()
            cluster.close()

        search = DaskGridSearchCV(estimator, grid, cv=cv, scheduler=client)
    else:
        if system == "loky memory=":
            from joblib import Memory

            cache = tempfile.mkdtemp(prefix="bench-pipeline-cache-")
            estimator.set_params(memory=Memory(cache, verbose=0))
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=n_workers)
    few = 600
    search.fit(X[:few], y[:few])  # workers started, modules imported
    if cache is not None:  # a cold cache for the measured fit
        shutil.rmtree(cache)
        os.makedirs(cache)
    time.sleep(1.0)
    baseline = _footprint()
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    search.fit(X, y)
    wall = time.perf_counter() - start
    sampler.stop()
    nbytes = X.nbytes if hasattr(X, "nbytes") else sum(len(d) for d in X)
    print(
        json.dumps(
            {
                "wall": wall,
                "peak_mb": (sampler.peak - baseline) / 1e6,
                "data_mb": nbytes / 1e6,
                "scores": search.cv_results_["mean_test_score"].tolist(),
            }
        )
    )
    if stop_cluster is not None:
        stop_cluster()
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)


def _run(system, case, n_workers, scale):
    command = [sys.executable, __file__, "--child", system, case]
    command += ["--workers", str(n_workers), "--scale", str(scale)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        return {"error": completed.stderr.strip().splitlines()[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _dask_ml_installed():
    try:
        import dask_ml  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def _plot(rows, path, command):
    bars = ratios(
        rows,
        ("wall", "peak_mb"),
        group=lambda row: f"{row['case']}, {row['workers']} workers",
        stated={"wall": "x_loky"},
    )
    plot_ratios(
        path,
        bars,
        title="Pipeline searches: wall time and peak extra memory relative to loky",
        xlabels=("wall time / loky's", "peak extra memory / loky's"),
        subtitle=command,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the rows to use"
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

    import sklearn

    systems = list(args.systems)
    print(
        f"{saved_run.machine()}, scikit-learn {sklearn.__version__}; "
        f"rows x {args.scale:g}"
    )
    if "dask-ml" in systems and not _dask_ml_installed():
        print("dask-ml is not installed: its rows are left out")
        systems.remove("dask-ml")
    rows = []
    for case in args.cases:
        reference = None
        for n_workers in args.workers:
            results = {
                system: _run(system, case, n_workers, args.scale) for system in systems
            }
            loky = results.get("loky", {})
            for system, result in results.items():
                row = {"case": case, "system": system, "workers": n_workers}
                if "error" not in result:
                    if reference is None:
                        reference = result["scores"]
                    scores = result.pop("scores")
                    same = np.allclose(scores, reference, rtol=1e-9)
                    row["same_scores"] = bool(same)
                    if "wall" in loky:
                        row["x_loky"] = result["wall"] / loky["wall"]
                rows.append({**row, **result})
            print(f"{case} on {n_workers} workers done", file=sys.stderr)
    print()
    print(
        f"{'case':<8} {'system':<18} {'workers':>7} {'wall s':>8} {'x loky':>7} "
        f"{'peak MB':>8} {'same scores':>12}"
    )
    print("-" * 74)
    for row in rows:
        start = f"{row['case']:<8} {row['system']:<18} {row['workers']:>7}"
        if "error" in row:
            print(f"{start} failed: {row['error']}")
            continue
        ratio = f"{row['x_loky']:.2f}" if "x_loky" in row else "-"
        print(
            f"{start} {row['wall']:>8.1f} {ratio:>7} {row['peak_mb']:>8.0f} "
            f"{'yes' if row['same_scores'] else 'NO':>12}"
        )
    print(f"\n{TARGET}")
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))


if __name__ == "__main__":
    main()
