"""
=====================================================
Engines that die and join, and a search that resumes
=====================================================

A long search on a cluster sees machines come and go. Here, on a cluster of
its own, a grid search loses an engine in the middle of a fit, gets a new
engine while it runs, and is then stopped, as a Ctrl-C or a lost connection
would stop it. A new search with the same ``checkpoint_dir`` runs only the
fits that had not finished.
"""

# %%
# A cluster of our own
# --------------------
# This example kills one of its engines, so it starts a local cluster of 2
# engines for itself rather than using the default one.
import os
import shutil
import signal
import tempfile
import time

import ipyparallel as ipp
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import ShuffleSplit
from sklearn.svm import SVC

import sklearn_ipp

cluster = ipp.Cluster(n=2)
client = cluster.start_and_connect_sync()
client.wait_for_engines(2, timeout=120)
print("engines:", client.ids)

# %%
# A search that loses an engine, gains one, and is stopped
# --------------------------------------------------------
# Each finished fit is saved in ``checkpoint_dir`` as it arrives. While the
# search runs, the script starts a new engine, kills engine 0 (SIGKILL:
# nothing is said to anyone), and aborts the search after 75 fits.
X, y = load_digits(return_X_y=True)
grid = {"C": np.logspace(-1, 3, 5), "gamma": np.logspace(-4, -2.5, 4)}
cv = ShuffleSplit(n_splits=5, test_size=0.25, random_state=0)
checkpoint_dir = tempfile.mkdtemp(prefix="svc-search-")


def watch(search, events, stop_after=None):
    """Note (seconds, fits finished) until the search ends.

    Also note when engines register or unregister, call each of ``events``
    (a number of finished fits: a function returning a label) once that many
    fits have finished, and abort the search after ``stop_after`` fits.
    """
    start = time.perf_counter()
    history, marks = [], []
    engines = set(client.ids)

    def mark(label):
        marks.append((time.perf_counter() - start, label))

    while not search.wait(timeout=0.05):
        finished, _ = search.progress()
        history.append((time.perf_counter() - start, finished))
        for threshold in [t for t in events if finished >= t]:
            mark(events.pop(threshold)())
        now = set(client.ids)
        for engine in sorted(engines - now):
            mark(f"engine {engine} unregistered")
        for engine in sorted(now - engines):
            mark(f"engine {engine} registered")
        engines = now
        if stop_after is not None and finished >= stop_after:
            search.abort()
            mark("abort()")
    history.append((time.perf_counter() - start, search.progress()[0]))
    return np.array(history), marks


def start_engine():
    cluster.start_engines_sync(n=1)  # returns once started, before it registers
    return "a new engine started"


def kill_engine_0():
    os.kill(sklearn_ipp.engine_facts(client)[0]["pid"], signal.SIGKILL)
    return "engine 0 killed"


search = sklearn_ipp.IPyParallelGridSearchCV(
    SVC(), grid, cv=cv, client=client, checkpoint_dir=checkpoint_dir
)
search.fit_async(X, y)
first_run, first_marks = watch(
    search, {5: start_engine, 40: kill_engine_0}, stop_after=75
)
for seconds, label in first_marks:
    print(f"{seconds:5.1f} s: {label}")
print(search.report(n_top=2))
print("engines now:", client.ids)
print("results saved:", len(os.listdir(checkpoint_dir)))

# %%
# The fits the killed engine was running were sent again to the other
# engines: the report counts every fit once, and none is missing. Stopping
# the search dropped the queued fits; the finished ones are saved.
#
# Resuming from the checkpoint
# ----------------------------
# A new search object, as a new Python process would make, with the same
# ``checkpoint_dir``: it loads the saved results (checked with a key of this
# user's before anything is unpickled) and runs only the others.
resumed = sklearn_ipp.IPyParallelGridSearchCV(
    SVC(), grid, cv=cv, client=client, checkpoint_dir=checkpoint_dir
)
resumed.fit_async(X, y)
second_run, second_marks = watch(resumed, {})
print(resumed.report(n_top=2))
best = {name: float(value) for name, value in resumed.best_params_.items()}
print("best:", best)

# %%
# Both runs over time. The first fits wait for the engines of this new
# cluster to import scikit-learn. The new engine takes its share of the fits once it
# has registered; the fits the killed engine was running are sent again when
# the controller notices that it is gone. The resumed run starts where the
# first stopped.
fig, (ax_first, ax_second) = plt.subplots(
    1, 2, figsize=(10, 4), sharey=True, layout="constrained", width_ratios=[3, 2]
)
total = len(resumed.cv_results_["params"]) * resumed.n_splits_
for ax, history, marks, title in (
    (ax_first, first_run, first_marks, "The first search"),
    (ax_second, second_run, second_marks, "A new search, same checkpoint_dir"),
):
    ax.plot(history[:, 0], history[:, 1], drawstyle="steps-post")
    ax.axhline(total, color="grey", linestyle="--", linewidth=1)
    for seconds, label in marks:
        # Red for engine 0, green for the new one; dotted for what this
        # script did, solid for what the controller reported.
        color = "C7" if label == "abort()" else "C3" if "0" in label else "C2"
        style = "-" if label.endswith("registered") else ":"
        ax.axvline(seconds, color=color, linestyle=style, linewidth=2, label=label)
    ax.set_xlabel("time since fit_async (s)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
ax_first.set_ylabel(f"fits finished (of {total})")
ax_first.legend(loc="lower right")

# %%
# The cluster is stopped, and the saved results removed: both were this
# example's own.
client.close()
cluster.stop_cluster_sync()
shutil.rmtree(checkpoint_dir)
