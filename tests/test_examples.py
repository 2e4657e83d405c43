"""Every example of the gallery (``examples/``) runs on the session's cluster.

The documentation build runs them too; here each runs as a user would run the
downloaded script, with no ``client=``: it finds the session's cluster.
"""

from pathlib import Path

import pytest

from .conftest import run_python

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Runs the example, then says how many figures it left open.
RUNNER = """
import runpy, sys
import matplotlib.pyplot as plt
runpy.run_path(sys.argv[1], run_name="__main__")
print("figures:", len(plt.get_fignums()))
"""

# What each example must print: its claims hold on the cluster.
EXPECTED = {
    "plot_tutorial.py": [
        "Progress: 100% (48/48)",
        "best parameters: {'C': ",
        "engine 1: ",
    ],
    "plot_curves.py": ["same validation scores as scikit-learn: True"],
    "plot_backend.py": [
        "same cross-validation scores: True",
        "same predictions: True",
        "same importances: True",
        "tasks ran in the engine processes: True",
    ],
    "plot_pipeline_prefix.py": [
        "Fitted 3 pipeline prefixes once per split for 18 fits: 15 prefix fits saved",
        "same results: True",
    ],
    "plot_halving.py": ["iteration 3:  1 candidates on 1620 samples", "best: {'C': "],
    "plot_model_based.py": [
        "randomized: best 0.",
        "TPE (Optuna): best 0.",
        "30 trials; the first proposed after the 10 random ones:",
    ],
    "plot_asynchronous_halving.py": [
        " synchronous: ",
        "candidates per level [27, 9, 3, 1]; best accuracy",
        "asynchronous: ",
    ],
    "plot_budgets.py": [
        "same best candidate: True",
        "same scores for the other candidates: True",
    ],
    "plot_resilience.py": [
        "engine 0 killed",
        "engine 0 unregistered",
        "Progress: 100% (100/100)",
    ],
}


def test_every_example_is_checked():
    assert sorted(path.name for path in EXAMPLES.glob("plot_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(cluster, client, name):
    completed = run_python(
        "-c", RUNNER, str(EXAMPLES / name), timeout=240, MPLBACKEND="Agg"
    )
    assert completed.returncode == 0, completed.stderr
    for expected in EXPECTED[name]:
        assert expected in completed.stdout, completed.stdout
    figures = int(completed.stdout.rsplit("figures:", 1)[1])
    assert figures >= 1
    # No warning reaches the reader of the example: a deprecated call or a
    # warning of ours would be printed on its page.
    assert "Warning" not in completed.stderr, completed.stderr
