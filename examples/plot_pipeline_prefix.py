"""
===================================================
A pipeline search: the shared prefix fitted once
===================================================

A grid over the last step of a pipeline fits the same first steps again and
again: with 6 values of ``C`` and 3 splits, scikit-learn fits the scaler and
the PCA 18 times, on 3 different training sets. sklearn_ipp fits them once
per split, stores what they output like the data, and fits each candidate's
last step on that. The results are scikit-learn's; only the time changes.
See :ref:`repeated-work` for when this applies.
"""

# %%
# A pipeline whose first steps cost more than its last
# ----------------------------------------------------
# A PCA with the ``"full"`` solver (which draws no random numbers, so its
# fit is the same for every candidate) in front of a logistic regression.
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import sklearn_ipp

X, y = make_classification(
    n_samples=3000, n_features=800, n_informative=60, random_state=0
)
pipeline = Pipeline(
    [
        ("scale", StandardScaler()),
        ("pca", PCA(n_components=60, svd_solver="full")),
        ("classify", LogisticRegression(max_iter=500)),
    ]
)
grid = {"classify__C": np.logspace(-3, 2, 6)}

# %%
# The same search, with and without the prefix reused
# ---------------------------------------------------
# ``verbose=1`` says what was saved. ``reuse_prefixes=False`` fits every
# pipeline whole, as scikit-learn does.
runs = {}
for reuse in (False, True):
    search = sklearn_ipp.IPyParallelGridSearchCV(
        pipeline, grid, cv=3, reuse_prefixes=reuse, verbose=1
    )
    start = time.perf_counter()
    search.fit(X, y)
    runs[reuse] = (time.perf_counter() - start, search)

whole_time, whole = runs[False]
reuse_time, reused = runs[True]
print(f"\nwhole pipelines: {whole_time:.1f} s, prefix reused: {reuse_time:.1f} s")
print(
    "same results:",
    np.array_equal(
        whole.cv_results_["mean_test_score"], reused.cv_results_["mean_test_score"]
    ),
)

# %%
# Where the time went: scikit-learn's ``mean_fit_time`` is each candidate's
# average fit time. With the prefix reused, it holds the candidate's share of
# the prefix's fit (the prefix's time divided by its 6 candidates) plus the
# fit of its own logistic regression.
C = grid["classify__C"]
fig, (ax_wall, ax_fit) = plt.subplots(
    1, 2, figsize=(10, 4), layout="constrained", width_ratios=[1, 2]
)
bars = ax_wall.bar(
    ["whole pipelines", "prefix reused"], [whole_time, reuse_time], color=["C7", "C0"]
)
ax_wall.bar_label(bars, fmt="%.1f s")
ax_wall.margins(y=0.15)
ax_wall.set_ylabel("wall time of fit (s)")
ax_wall.set_title("The search, 18 fits on 2 engines")
positions = np.arange(len(C))
for offset, (label, search, color) in zip(
    (-0.2, 0.2),
    [("whole pipelines", whole, "C7"), ("prefix reused", reused, "C0")],
    strict=True,
):
    ax_fit.bar(
        positions + offset,
        search.cv_results_["mean_fit_time"],
        width=0.4,
        label=label,
        color=color,
    )
ax_fit.set_xticks(positions, [f"{c:g}" for c in C])
ax_fit.set_xlabel("classify__C")
ax_fit.set_ylabel("mean fit time per split (s)")
ax_fit.set_title("Each candidate's fit time")
ax_fit.legend()
for ax in (ax_wall, ax_fit):
    ax.grid(axis="y", alpha=0.3)
