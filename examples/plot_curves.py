"""
=============================================
Learning and validation curves on the cluster
=============================================

Would more data help this model, and where does its parameter stop helping?
scikit-learn answers with a learning curve and a validation curve: many fits
of one estimator, on growing training sets or along one parameter.
sklearn_ipp's :class:`~sklearn_ipp.LearningCurveDisplay` and
:class:`~sklearn_ipp.ValidationCurveDisplay` are scikit-learn's Displays,
with the same parameters and plots, whose fits run on the engines.

Each cross-validation split is stored once, and every training size of the
learning curve is a view of the first rows of that same split: the data is
neither stored nor sent once per size or per fit.
"""

# %%
# The two curves of a support vector classifier on the digits
# ------------------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import ShuffleSplit
from sklearn.svm import SVC

import sklearn_ipp

X, y = load_digits(return_X_y=True)
cv = ShuffleSplit(n_splits=5, test_size=0.2, random_state=0)
common = {
    "X": X,
    "y": y,
    "cv": cv,
    "score_type": "both",
    "score_name": "Accuracy",
    "std_display_style": "fill_between",
}

fig, (ax_learning, ax_validation) = plt.subplots(
    1, 2, figsize=(10, 4), layout="constrained"
)
learning = sklearn_ipp.LearningCurveDisplay.from_estimator(
    SVC(gamma=0.001), train_sizes=np.linspace(0.1, 1.0, 5), ax=ax_learning, **common
)
ax_learning.set_title("Learning curve, SVC(gamma=0.001)")
validation = sklearn_ipp.ValidationCurveDisplay.from_estimator(
    SVC(),
    param_name="gamma",
    param_range=np.logspace(-6, -2, 5),
    ax=ax_validation,
    **common,
)
ax_validation.set_title("Validation curve, SVC(C=1)")
for ax in (ax_learning, ax_validation):
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")

# %%
# The validation accuracy still rises slowly at the full training set: more
# digits would help a little. The validation curve peaks at ``gamma=0.001``;
# with larger values the model learns the training set by heart and fails on
# new digits.
for size, test in zip(learning.train_sizes, learning.test_scores, strict=True):
    print(f"{size:5d} training digits: validation accuracy {test.mean():.3f}")

# %%
# The same numbers as scikit-learn's
# ----------------------------------
# The Display holds what :func:`sklearn.model_selection.learning_curve`
# returns; run in this process, scikit-learn gives the same scores.
from sklearn.model_selection import learning_curve

_, _, test_scores = learning_curve(
    SVC(gamma=0.001), X, y, train_sizes=np.linspace(0.1, 1.0, 5), cv=cv
)
print(
    "same validation scores as scikit-learn:",
    np.array_equal(test_scores, learning.test_scores),
)
