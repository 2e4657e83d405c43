"""
==================================================
Successive halving: many candidates, few survivors
==================================================

Successive halving evaluates many candidates on a little data, keeps the best
third, gives them three times as much data, and so on until one is left or the
data runs out. :class:`~sklearn_ipp.IPyParallelHalvingRandomSearchCV` is
scikit-learn's ``HalvingRandomSearchCV`` with the fits of every iteration on
the engines; the data is stored once for the whole search, and each
iteration's subsets are views of it. Importing sklearn_ipp enables
scikit-learn's halving searches: no ``enable_halving_search_cv`` import is
needed.
"""

# %%
# A halving search of an SVC on the digits
# ----------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.svm import SVC

import sklearn_ipp

X, y = load_digits(return_X_y=True)
search = sklearn_ipp.IPyParallelHalvingRandomSearchCV(
    SVC(),
    {"C": loguniform(1e-2, 1e3), "gamma": loguniform(1e-5, 1e-1)},
    n_candidates=27,
    factor=3,
    min_resources=60,
    cv=3,
    random_state=0,
)
search.fit(X, y)
for i in range(search.n_iterations_):
    print(
        f"iteration {i}: {search.n_candidates_[i]:2d} candidates "
        f"on {search.n_resources_[i]:4d} samples"
    )
best = {name: round(float(value), 5) for name, value in search.best_params_.items()}
print(f"best: {best}, validation accuracy {search.best_score_:.3f}")

# %%
# Scores of the candidates over the iterations
# --------------------------------------------
# One line per candidate, from its first iteration to the last it took part
# in, coloured by how far it got: most stop after the first, on 60 samples.
results = search.cv_results_
iterations = np.asarray(results["iter"])
scores = np.asarray(results["mean_test_score"])
names = [repr(sorted(p.items())) for p in results["params"]]
colors = ["0.7", "C0", "C2", "C1", "C3", "C4"]

fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
for name in dict.fromkeys(names):
    rows = [k for k, other in enumerate(names) if other == name]
    reached = iterations[rows].max()
    ax.plot(
        iterations[rows],
        scores[rows],
        marker="o",
        markersize=4,
        color=colors[reached % len(colors)],
        linewidth=1 + reached / 2,
        label=f"stopped after iteration {reached}"
        if reached < search.n_iterations_ - 1
        else "the best candidate",
        zorder=reached,
    )
handles, labels = ax.get_legend_handles_labels()
unique = dict(sorted(zip(labels, handles, strict=True), key=lambda pair: pair[0]))
ax.legend(unique.values(), unique.keys(), loc="lower right")
ax.set_xticks(
    range(search.n_iterations_),
    [
        f"iteration {i}\n{search.n_candidates_[i]} candidate"
        f"{'s' if search.n_candidates_[i] > 1 else ''}\n"
        f"{search.n_resources_[i]} samples"
        for i in range(search.n_iterations_)
    ],
)
ax.set_ylabel("mean validation accuracy")
ax.set_title("Successive halving of 27 candidates, a third kept at each iteration")
ax.grid(axis="y", alpha=0.3)
