"""
=============================================
A time limit per fit: runaway candidates stop
=============================================

A grid search waits for its slowest fit. Here the two candidates of a
gradient boosting grid with a tiny learning rate run up to 2,000 iterations
before early stopping ends them, 10 to 30 times as long as a typical fit, and
score no better: ``fit_timeout`` stops them and scores them as failed, as
scikit-learn scores a fit that raised, and the search ends with the same best
candidate in a fraction of the time.
"""

# %%
# A grid with runaway candidates
# ------------------------------
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import KFold

import sklearn_ipp

X, y = make_classification(
    n_samples=1500, n_features=20, n_informative=8, flip_y=0.05, random_state=0
)
estimator = HistGradientBoostingClassifier(
    max_iter=2000, early_stopping=True, random_state=0
)
grid = {"learning_rate": [0.3, 0.1, 0.03, 0.001], "max_leaf_nodes": [7, 31]}
cv = KFold(3, shuffle=True, random_state=0)
# The cluster first (started here if none is running), so that its start is
# not timed with the first search.
print("engines:", len(sklearn_ipp.get_client().ids))


def timed_search(**kwargs):
    """Fit the grid search on the cluster; return it and its wall time."""
    search = sklearn_ipp.IPyParallelGridSearchCV(estimator, grid, cv=cv, **kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The stopped fits' FitFailedWarning, and the warning that their
        # candidates' scores are NaN: counted below instead.
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.filterwarnings("ignore", "One or more of the test scores")
        search.fit(X, y)
    return search, time.perf_counter() - start


# %%
# Without a limit, then with one
# ------------------------------
# The first search runs every fit to its end. Its ``mean_fit_time`` tells
# how long a typical fit takes; the second search has a limit of five times
# that.
unlimited, unlimited_wall = timed_search()
fit_times = unlimited.cv_results_["mean_fit_time"]
median = np.median(fit_times)
print(
    f"no limit: {unlimited_wall:.1f} s; median fit {median:.2f} s, "
    f"slowest {fit_times.max():.1f} s"
)

limit = round(5 * median, 1)
limited, limited_wall = timed_search(fit_timeout=limit)
timed_out = np.isnan(limited.cv_results_["mean_test_score"])
splits = [limited.cv_results_[f"split{k}_test_score"] for k in range(3)]
print(
    f"fit_timeout={limit:g}: {limited_wall:.1f} s; "
    f"{np.isnan(splits).sum()} fits stopped, "
    f"{timed_out.sum()} of {len(timed_out)} candidates failed"
)
print(f"best: {limited.best_params_}, accuracy {limited.best_score_:.3f}")
print("same best candidate:", limited.best_params_ == unlimited.best_params_)
finished = ~timed_out
print(
    "same scores for the other candidates:",
    np.allclose(
        limited.cv_results_["mean_test_score"][finished],
        unlimited.cv_results_["mean_test_score"][finished],
    ),
)

# %%
# Where the time went
# -------------------
# Left, the mean fit time of each candidate without a limit, on a log
# scale: the candidates framed in red were stopped at ``fit_timeout``, and
# failed. Right, the wall time of each search.
n_rates, n_leaves = len(grid["learning_rate"]), len(grid["max_leaf_nodes"])
# The grid's candidates in its order: learning_rate slowest.
seconds = fit_times.reshape(n_rates, n_leaves)
stopped = timed_out.reshape(n_rates, n_leaves)

fig, (heat, bars) = plt.subplots(
    1, 2, figsize=(9, 4), layout="constrained", width_ratios=[3, 2]
)
norm = LogNorm(seconds.min(), seconds.max())
image = heat.imshow(seconds, cmap="viridis", norm=norm, origin="lower")
for i in range(n_rates):
    for j in range(n_leaves):
        label = f"{seconds[i, j]:.2f} s"
        if stopped[i, j]:
            heat.add_patch(
                plt.Rectangle(
                    (j - 0.45, i - 0.45), 0.9, 0.9, fill=False, ec="red", lw=3
                )
            )
            label += "\nstopped"
        color = "black" if norm(seconds[i, j]) > 0.6 else "white"
        heat.text(j, i, label, ha="center", va="center", color=color, size=9)
heat.set_xticks(range(n_leaves), grid["max_leaf_nodes"])
heat.set_yticks(range(n_rates), grid["learning_rate"])
heat.set_xlabel("max_leaf_nodes")
heat.set_ylabel("learning_rate")
heat.set_title("Mean fit time without a limit")
fig.colorbar(image, ax=heat, label="seconds")

bars.bar(
    ["no limit", f"fit_timeout={limit:g}"],
    [unlimited_wall, limited_wall],
    color=["0.6", "C0"],
)
bars.set_title("Wall time of the search (s)")
plt.show()

# %%
# The stopped fits
# ----------------
# Each stopped fit has the time it ran as its ``fit_time``, and its
# ``FitFailedWarning`` (silenced above) says "fit exceeded fit_timeout=... s"
# and names the engine and its host. The engine stopped it between two
# boosting iterations and took the next fit at once.
#
# A fit inside one long call of compiled code, such as an SVC's (libsvm),
# cannot be stopped that way: the client scores it as failed a little after
# its limit all the same, and ends and replaces its engine when this process
# started it (see :doc:`/budgets`).
