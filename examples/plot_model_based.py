"""
=====================================================
Model-based search: TPE against the randomized search
=====================================================

A randomized search draws its candidates blind; Optuna's TPE proposes each
from the scores of those before it. Both run here on the same engines with
the same budget of candidates, over five hyperparameters of a gradient
boosting model, and the figure shows the best score each had found after
each number of fits.
"""

# %%
# The same space for both
# -----------------------
# ``IPyParallelOptunaSearchCV`` takes a randomized search's
# ``param_distributions`` unchanged: ``scipy.stats`` distributions become
# Optuna's float, log-float and int ranges.
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import loguniform, randint, uniform
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import KFold

import sklearn_ipp

X, y = make_classification(
    n_samples=3000, n_features=20, n_informative=8, flip_y=0.03, random_state=0
)
estimator = HistGradientBoostingClassifier(
    max_iter=50, early_stopping=False, random_state=0
)
distributions = {
    "learning_rate": loguniform(0.005, 0.5),
    "max_leaf_nodes": randint(2, 64),
    "min_samples_leaf": randint(2, 200),
    "l2_regularization": loguniform(1e-3, 10),
    "max_features": uniform(0.1, 0.9),
}
cv = KFold(3, shuffle=True, random_state=0)
n_iter = 30

# %%
# Two searches, one budget
# ------------------------
# The TPE search asks its study for a candidate whenever an engine would
# otherwise idle, and tells it each candidate's mean score as its last split
# ends.
searches = {
    "randomized": sklearn_ipp.IPyParallelRandomizedSearchCV(
        estimator, distributions, n_iter=n_iter, cv=cv, random_state=0
    ),
    "TPE (Optuna)": sklearn_ipp.IPyParallelOptunaSearchCV(
        estimator, distributions, n_iter=n_iter, cv=cv, random_state=0
    ),
}
for name, search in searches.items():
    search.fit(X, y)
    print(f"{name}: best {search.best_score_:.4f} with {search.best_params_}")

# %%
# The best score after each number of fits
# ----------------------------------------
# Candidates in the order they were drawn (randomized) or proposed (TPE);
# each is three fits, one per split. TPE draws its first 10 candidates at
# random too, and learns from then on. One search of each is one draw: either
# may be ahead on a given seed and budget. The model-based search page gives
# medians over seeds, on a larger problem.
fig, ax = plt.subplots(figsize=(7, 4))
for name, search in searches.items():
    scores = search.cv_results_["mean_test_score"]
    best = np.fmax.accumulate(scores)
    fits = np.arange(1, len(scores) + 1) * cv.get_n_splits()
    ax.step(fits, best, where="post", label=name)
ax.set_xlabel("fits")
ax.set_ylabel("best mean test score so far")
ax.set_title("Same engines, same budget of candidates")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The study behind the search
# ---------------------------
# ``study_`` is the Optuna study: a trial per candidate, in the order they
# were proposed, with the scores told.
trials = searches["TPE (Optuna)"].study_.trials
print(len(trials), "trials; the first proposed after the 10 random ones:")
print(trials[10].params)
