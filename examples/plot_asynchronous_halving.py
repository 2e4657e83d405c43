"""
===============================================
Asynchronous successive halving: no round waits
===============================================

Synchronous successive halving waits at the end of each round for the
slowest fit of the round before it promotes anyone. With
``asynchronous=True``, a candidate moves up a level as soon as all its splits
there are finished and it ranks in the top third of the candidates finished
at that level: no engine waits for a round. This example runs the same
forest grid both ways on the same engines and draws when each candidate
finished each level.
"""

# %%
# One grid, run both ways
# -----------------------
# A random forest's number of trees is the resource: 5 trees at the first
# level, 135 at the last, each promoted candidate continuing the forest of
# its level before (``warm_start_rounds``, the default). While each search
# runs, :meth:`~sklearn_ipp.IPyParallelHalvingGridSearchCV.partial_results`
# is read every 50 ms: a candidate has finished a level once none of its
# splits there is masked.
import time
from math import log

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import KFold

import sklearn_ipp

X, y = make_classification(
    n_samples=2000, n_features=20, n_informative=8, random_state=0
)
grid = {
    "max_features": [0.2, 0.5, 1.0],
    "min_samples_leaf": [1, 4, 16],
    "max_depth": [4, 8, None],
}
N_SPLITS, MIN_TREES, FACTOR = 3, 5, 3
# The cluster first (started here if none is running), and a small search
# on it, so that neither search below is timed with the engines' start.
print("engines:", len(sklearn_ipp.get_client().ids))
sklearn_ipp.IPyParallelGridSearchCV(
    RandomForestClassifier(n_estimators=5), {"max_depth": [2, 4]}, cv=2
).fit(X[:200], y[:200])


def climb(asynchronous):
    """Run the search; return it, its wall time, and when candidates finished levels.

    The times are a dict of (candidate, level) -> seconds since the start,
    a candidate being its parameters without the number of trees.
    """
    search = sklearn_ipp.IPyParallelHalvingGridSearchCV(
        RandomForestClassifier(random_state=0),
        grid,
        resource="n_estimators",
        min_resources=MIN_TREES,
        max_resources=MIN_TREES * FACTOR**3,
        factor=FACTOR,
        cv=KFold(N_SPLITS, shuffle=True, random_state=0),
        asynchronous=asynchronous,
    )
    finished = {}
    start = time.perf_counter()
    search.fit_async(X, y)
    while True:
        done = search.done()
        seconds = time.perf_counter() - start
        results = search.partial_results()
        if results is not None:
            splits = np.ma.vstack(
                [results[f"split{k}_test_score"] for k in range(N_SPLITS)]
            )
            for row, params in enumerate(results["params"]):
                if np.ma.count_masked(splits[:, row]) == 0:
                    trees = params["n_estimators"]
                    level = round(log(trees / MIN_TREES, FACTOR))
                    candidate = tuple((name, params[name]) for name in sorted(grid))
                    finished.setdefault((candidate, level), seconds)
        if done:
            break
        time.sleep(0.05)
    search.wait()
    return search, time.perf_counter() - start, finished


runs = {"synchronous": climb(False), "asynchronous": climb(True)}
for name, (search, wall, finished) in runs.items():
    top = len(search.n_candidates_) - 1
    first_top = min(t for (_, level), t in finished.items() if level == top)
    print(
        f"{name:>12}: {wall:4.1f} s, first candidate at {MIN_TREES * FACTOR**top} "
        f"trees after {first_top:4.1f} s; candidates per level "
        f"{search.n_candidates_}; best accuracy {search.best_score_:.4f}"
    )

# %%
# Candidates climbing the levels
# ------------------------------
# One line per candidate, from the time it finished one level to the time it
# finished the next; a dot where it stopped. Synchronous halving's levels
# start together, after its rounds' last fits; asynchronous halving's
# overlap. It may promote more candidates (a candidate promoted early stays
# promoted), and as promoted fits go before the first level's waiting ones,
# the last first-level fits end late, and the best of them climb last.
fig, axes = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, layout="constrained")
for ax, (name, (search, wall, finished)) in zip(axes, runs.items(), strict=True):
    candidates = list(dict.fromkeys(candidate for candidate, _ in finished))
    rng = np.random.default_rng(0)
    for candidate in candidates:
        levels = sorted(level for c, level in finished if c == candidate)
        times = [finished[candidate, level] for level in levels]
        # A little vertical spread, so that candidates at a level don't hide
        # each other.
        heights = np.array(levels) + rng.uniform(-0.15, 0.15)
        color = f"C{levels[-1]}"
        ax.plot(times, heights, color=color, linewidth=0.8, alpha=0.8)
        ax.plot(times[-1], heights[-1], "o", color=color, markersize=3.5)
    ax.axvline(wall, color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(
        range(len(search.n_resources_)),
        [f"{trees} trees" for trees in search.n_resources_],
    )
    ax.set_title(f"{name}: done after {wall:.1f} s", loc="left")
    ax.grid(axis="x", alpha=0.3)
axes[-1].set_xlabel("seconds since the search started")
fig.suptitle("27 forest candidates halved by 3 on the same engines")
plt.show()

# %%
# Which to use
# ------------
# On a few engines, as here, the two end about together, or asynchronous
# halving later when its extra promotions cost more fits than its overlap
# saves (compare the candidates per level printed above); what it brings
# forward is the first candidate fitted with all its trees. Its results differ
# from scikit-learn's by design: synchronous halving (the default) gives
# scikit-learn's ``cv_results_`` exactly. See :doc:`/adaptive` for the
# measurements on 2 and 4 engines and a simulation of 10 to 1,000.
