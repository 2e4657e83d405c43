"""
====================================================
Unchanged scikit-learn code under the joblib backend
====================================================

Importing sklearn_ipp registers a joblib backend named ``"ipyparallel"``.
Inside ``with parallel_backend("ipyparallel"):`` the ``Parallel`` calls that
scikit-learn makes (the splits of ``cross_validate``, the trees of a random
forest, the repeats of ``permutation_importance``) run on the engines. The
code does not change, and neither do its results.
"""

# %%
# One workflow, two backends
# --------------------------
# A random forest on the breast cancer data: cross-validated, fitted, then
# explained by permutation importance. The function knows nothing of the
# cluster.
import os

import numpy as np
from joblib import Parallel, delayed, parallel_backend
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance
from sklearn.model_selection import cross_validate, train_test_split

import sklearn_ipp  # registers the "ipyparallel" backend

data = load_breast_cancer()
X_train, X_test, y_train, y_test = train_test_split(
    data.data, data.target, random_state=0
)


def workflow():
    """Cross-validate, fit and explain a forest."""
    forest = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=-1)
    scores = cross_validate(forest, X_train, y_train, cv=5, n_jobs=-1)
    forest.fit(X_train, y_train)
    importances = permutation_importance(
        forest, X_test, y_test, n_repeats=5, random_state=0, n_jobs=-1
    )
    return scores, forest, importances


with parallel_backend("loky"):
    loky = workflow()
with parallel_backend("ipyparallel"):
    cluster = workflow()

# %%
# What stayed
# -----------
# The results: the same cross-validation scores, the same trees (hence the
# same predictions) and the same importances as with joblib's default
# backend. The fitted forest is in this process, as it would be with loky.
loky_scores, loky_forest, loky_importances = loky
scores, forest, importances = cluster
print(
    "same cross-validation scores:",
    np.array_equal(scores["test_score"], loky_scores["test_score"]),
)
print(
    "same predictions:",
    np.array_equal(forest.predict_proba(X_test), loky_forest.predict_proba(X_test)),
)
print(
    "same importances:",
    np.array_equal(importances.importances, loky_importances.importances),
)

# %%
# What moved
# ----------
# The tasks: inside the block, ``Parallel`` runs them in the engine processes,
# not in loky's workers, and the engines may be on many hosts. Each
# cross-validation split is stored once, memory-mapped by every engine of a
# host. A plain ``Parallel`` call of your own shows where the tasks ran.
engine_pids = {fact["pid"] for fact in sklearn_ipp.engine_facts().values()}
with parallel_backend("ipyparallel"):
    task_pids = set(Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(20)))
print("tasks ran in the engine processes:", task_pids <= engine_pids)
print("client process:", os.getpid(), "- engine processes:", sorted(engine_pids))

# %%
# The importances: how much the accuracy drops when one feature's values are
# shuffled (mean and standard deviation over 5 shuffles), for the 10 features
# that matter most.
import matplotlib.pyplot as plt

order = importances.importances_mean.argsort()[-10:]
fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
ax.barh(
    data.feature_names[order],
    importances.importances_mean[order],
    xerr=importances.importances_std[order],
    color="C0",
    alpha=0.7,
    error_kw={"capsize": 3},
)
ax.set_xlabel("decrease in accuracy when the feature is shuffled")
ax.set_title("Permutation importances on the test set, computed on the engines")
ax.grid(axis="x", alpha=0.3)
