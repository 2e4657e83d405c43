"""
============================================
The tutorial, end to end, on a local cluster
============================================

The parallel model selection tutorial, step by step: look at the engines and
their hosts, run a grid search in the background while watching its report,
plot what it found, then run a randomized search over a larger grid and stop
it when its time budget is spent.

With no ``client=``, sklearn_ipp runs on the cluster of the default IPython
profile (here a local cluster of 2 engines, started for this page); when
none is running, it starts a local cluster of its own, one engine per CPU,
and stops it when Python exits.
"""

# sphinx_gallery_thumbnail_number = 3

# %%
# The engines and their hosts
# ---------------------------
# :func:`~sklearn_ipp.engine_facts` asks every engine about its process and
# its host. Engines on one host share one copy of the data, so the memory
# that counts is the host's: :func:`~sklearn_ipp.hosts_free_memory`.
import sklearn_ipp

for engine_id, fact in sorted(sklearn_ipp.engine_facts().items()):
    print(
        f"engine {engine_id}: host {fact['hostname']}, pid {fact['pid']}, "
        f"{fact['n_cpus']} CPUs, {fact['rss_mb']:.0f} MB resident"
    )
for host, available in sorted(sklearn_ipp.hosts_free_memory().items()):
    print(f"host {host}: {available:,.0f} MB available")

# %%
# A grid search in the background
# -------------------------------
# :meth:`~sklearn_ipp.IPyParallelGridSearchCV.fit_async` takes the arguments
# of ``fit`` and returns at once. The search is scikit-learn's
# ``GridSearchCV`` (same parameters, same ``cv_results_``); the fits run on
# the engines, each split of the data stored once and memory-mapped by them.
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import ShuffleSplit
from sklearn.svm import SVC

X, y = load_digits(return_X_y=True)
search = sklearn_ipp.IPyParallelGridSearchCV(
    SVC(),
    {"C": np.logspace(-1, 2, 4), "gamma": np.logspace(-5, -2, 4)},
    cv=ShuffleSplit(n_splits=3, test_size=0.25, random_state=42),
    return_train_score=True,
)
search.fit_async(X, y)

# %%
# While it runs, :meth:`~sklearn_ipp.IPyParallelGridSearchCV.report` gives
# the tutorial's report: the progress, then the best candidates so far with
# their mean score ± its standard error over the finished splits.
# :meth:`~sklearn_ipp.IPyParallelGridSearchCV.progress` and
# :meth:`~sklearn_ipp.IPyParallelGridSearchCV.find_bests` give the same as
# numbers; here they are noted every tenth of a second to be plotted below.
start = time.perf_counter()
history = []  # (seconds, fits finished, best mean validation score so far)
shown = False
while not search.wait(timeout=0.1):
    finished, total = search.progress()
    bests = search.find_bests(n_top=1)
    history.append(
        (time.perf_counter() - start, finished, bests[0][0] if bests else np.nan)
    )
    if not shown and total and finished >= total // 2:
        print(search.report(n_top=3))
        shown = True

# %%
# Once every fit is done, the best candidate is refitted on all the data and
# the search is an ordinary fitted ``GridSearchCV``.
print(search.report(n_top=3))
print("best parameters:", {name: float(v) for name, v in search.best_params_.items()})

# %%
# In Jupyter, :meth:`~sklearn_ipp.IPyParallelGridSearchCV.live_report` shows
# the same report as a table. Displayed while the search runs, its
# ``refresh()`` updates the table in place; here the search is done.
search.live_report(n_top=5)

# %%
# How the search went: fits finished and the best score over time.
import matplotlib.pyplot as plt

seconds, finished, best = np.array(history).T
fig, (ax_fits, ax_best) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
ax_fits.plot(seconds, finished, drawstyle="steps-post")
ax_fits.axhline(total, color="grey", linestyle="--", label=f"all {total} fits")
ax_fits.set(xlabel="time since fit_async (s)", ylabel="fits finished")
ax_fits.set_title("Progress")
ax_fits.legend(loc="lower right")
ax_best.plot(seconds, best, drawstyle="steps-post", color="C2")
ax_best.set(xlabel="time since fit_async (s)", ylabel="mean validation accuracy")
ax_best.set_title("Best candidate so far")
n_candidates = len(search.cv_results_["params"])
fig.suptitle(
    f"A grid search of {n_candidates} candidates x {search.n_splits_} splits "
    f"on {len(sklearn_ipp.engine_facts())} engines"
)

# %%
# What it found
# -------------
# The tutorial's ``boxplot_parameters``: for each value of each parameter,
# the validation scores of every split of every candidate with that value,
# next to the train scores.
display = sklearn_ipp.ParameterBoxplotDisplay.from_search(
    search, display_train=True, score_name="accuracy"
)
display.figure_.suptitle("Accuracy per parameter value (3 splits x 4 candidates each)")

# %%
# The mean validation score of each pair of values: good for ``gamma`` up to
# 1e-3 once ``C`` is large enough, and a cliff after.
display = sklearn_ipp.ScoreHeatmapDisplay.from_search(
    search, x_param="gamma", y_param="C", score_name="accuracy"
)
display.ax_.set_title("Mean validation accuracy of each candidate")

# %%
# A randomized search, stopped when its budget is spent
# -----------------------------------------------------
# The tutorial's trick: rather than a coarser grid, evaluate the candidates
# of a large grid in a random order and stop when the time is up. What has
# finished is a random sample of the grid.
# :meth:`~sklearn_ipp.IPyParallelRandomizedSearchCV.abort` drops the queued
# fits and interrupts the running ones; the finished fits stay in the report.
random_search = sklearn_ipp.IPyParallelRandomizedSearchCV(
    SVC(),
    {"C": np.logspace(-2, 3, 6), "gamma": np.logspace(-5, 0, 6)},
    n_iter=36,
    cv=ShuffleSplit(n_splits=3, test_size=0.25, random_state=0),
    random_state=0,
)
random_search.fit_async(X, y)
if not random_search.wait(timeout=3.0):  # a budget of 3 seconds
    random_search.abort()
print(random_search.report(n_top=3))

# %%
# The grey cells are the candidates the budget did not reach; calling
# ``fit`` again would run only those.
display = sklearn_ipp.ScoreHeatmapDisplay.from_search(
    random_search, x_param="gamma", y_param="C", score_name="accuracy"
)
display.ax_.set_title("Candidates evaluated within 3 seconds (grey: not reached)")

# %%
# The engines' memory once done: the folds were memory-mapped, so each
# engine holds little beyond its Python process.
for engine_id, megabytes in sorted(sklearn_ipp.engines_memory().items()):
    print(f"engine {engine_id}: {megabytes:.0f} MB resident")
