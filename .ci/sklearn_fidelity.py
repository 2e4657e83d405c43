"""scikit-learn's own tests, run against sklearn_ipp.

Copies test files from the installed scikit-learn (they ship in its wheel)
next to ``.ci/fidelity/conftest.py`` and runs them on a real cluster, with
sklearn_ipp in each of its two faces:

- ``classes``: ``test_search.py`` and ``test_successive_halving.py`` with
  scikit-learn's searches rebound to sklearn_ipp's classes;
- ``backend``: ``test_validation.py``, ``test_search.py``,
  ``test_stacking.py``, ``test_calibration.py``, ``test_sequential.py`` and
  ``test_classification_threshold.py`` with scikit-learn's own classes,
  every test under ``parallel_config(backend="ipyparallel")``.

Every test has a time limit (``--timeout``, pytest-timeout): a test that
hangs fails with a dump of every thread's stack, and the run goes on. Then
compares with ``.ci/sklearn-fidelity.json``:

- every failing test must be a known one (listed there, and explained in
  ``docs/fidelity.rst``);
- with the scikit-learn version recorded there, each file must pass at least
  as many tests as recorded.

Usage::

    python .ci/sklearn_fidelity.py            # check, exit 1 on a regression
    python .ci/sklearn_fidelity.py --record   # write the counts and failures
    python .ci/sklearn_fidelity.py --mode in-process   # the references:
    python .ci/sklearn_fidelity.py --mode loky         # counts only
    python .ci/sklearn_fidelity.py --face backend      # one face only

Other arguments go to pytest.
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import sklearn

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "sklearn-fidelity.json")
DOCS = os.path.join(HERE, "..", "docs", "fidelity.rst")
# The test files of each face, as paths in the scikit-learn package.
FACES = {
    "classes": (
        "model_selection/tests/test_search.py",
        "model_selection/tests/test_successive_halving.py",
    ),
    "backend": (
        "model_selection/tests/test_validation.py",
        "model_selection/tests/test_search.py",
        "ensemble/tests/test_stacking.py",
        "tests/test_calibration.py",
        "feature_selection/tests/test_sequential.py",
        "model_selection/tests/test_classification_threshold.py",
    ),
}
# Seconds a test may take before it fails as hung.
TIMEOUT = 300


def run_face(face, pytest_args, timeout):
    """Run the tests of ``face`` in a directory of their own; return outcomes."""
    directory = tempfile.mkdtemp(prefix=f"sklearn_ipp-sklearn-tests-{face}-")
    try:
        package = os.path.dirname(sklearn.__file__)
        for path in FACES[face]:
            shutil.copy(os.path.join(package, path), directory)
        shutil.copy(os.path.join(HERE, "fidelity", "conftest.py"), directory)
        report = os.path.join(directory, "report.xml")
        command = [
            sys.executable,
            "-m",
            "pytest",
            directory,
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-q",
            "-rfE",
            "--disable-warnings",  # their summary: thousands of lines
            # A thread's uncaught exception then goes to stderr, shown with
            # the test that failed because of it, not to a warning hidden
            # above.
            "-p",
            "no:threadexception",
            f"--timeout={timeout}",
            f"--junitxml={report}",
            *pytest_args,
        ]
        environ = {**os.environ, "SKLEARN_IPP_FIDELITY_FACE": face}
        subprocess.run(command, cwd=directory, env=environ, check=False)
        return _outcomes(report, face)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _outcomes(report, face):
    """Return ``{"face/file": {"passed": n, "failed": [test, ...], "skipped": n}}``.

    ``"messages"`` maps each failed test to the first lines of its error.
    """
    names = [os.path.basename(path) for path in FACES[face]]
    outcomes = {
        f"{face}/{name}": {"passed": 0, "failed": [], "skipped": 0, "messages": {}}
        for name in names
    }
    for case in ET.parse(report).getroot().iter("testcase"):
        key = f"{face}/{case.get('classname', '').split('.')[0]}.py"
        if key not in outcomes:
            continue
        test = f"{key}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            outcomes[key]["failed"].append(test)
            message = problem.get("message") or problem.text or ""
            outcomes[key]["messages"][test] = "\n".join(message.splitlines()[:12])
        elif case.find("skipped") is not None:
            outcomes[key]["skipped"] += 1
        else:
            outcomes[key]["passed"] += 1
    return outcomes


def main():
    """Run, print the counts, check them (or record them); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument(
        "--mode", choices=["cluster", "in-process", "loky"], default="cluster"
    )
    parser.add_argument("--face", choices=sorted(FACES), action="append")
    parser.add_argument(
        "--timeout", type=int, default=TIMEOUT, help="seconds per test (%(default)s)"
    )
    args, pytest_args = parser.parse_known_args()
    if importlib.util.find_spec("pytest_timeout") is None:
        print(
            "pytest-timeout is not installed: every test needs a time limit. "
            'Install the test extra: pip install -e ".[test]"'
        )
        return 1
    os.environ["SKLEARN_IPP_FIDELITY_MODE"] = args.mode
    faces = args.face or list(FACES)
    outcomes, seconds = {}, {}
    for face in faces:
        start = time.monotonic()
        outcomes.update(run_face(face, pytest_args, args.timeout))
        seconds[face] = time.monotonic() - start
    with open(RECORD) as f:
        record = json.load(f)
    print(f"\nscikit-learn {sklearn.__version__}'s tests, {args.mode}:")
    header = ("passed", "failed", "skipped", "recorded")
    print(f"{'face/file':42s} {' '.join(f'{h:>8s}' for h in header)}")
    for name, outcome in outcomes.items():
        recorded = record["passed"].get(name, "-")
        print(
            f"{name:42s} {outcome['passed']:8d} {len(outcome['failed']):8d} "
            f"{outcome['skipped']:8d} {recorded!s:>8s}"
        )
    print(", ".join(f"{face}: {s:.0f} s" for face, s in seconds.items()))
    failed = sorted(test for o in outcomes.values() for test in o["failed"])
    if args.mode != "cluster":
        print("\n".join(["Failed:", *failed]))
        return 0
    if args.record:
        if args.face is not None or pytest_args:
            print("--record takes a run of every face, without pytest arguments.")
            return 1
        record = {
            "scikit-learn": sklearn.__version__,
            "passed": {name: o["passed"] for name, o in outcomes.items()},
            "known_failures": failed,
        }
        with open(RECORD, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"Recorded in {RECORD}.")
        return 0
    return _check(outcomes, failed, record)


def _check(outcomes, failed, record):
    problems = []
    if sum(o["passed"] for o in outcomes.values()) == 0:
        problems.append("no test passed: the run is broken")
    unknown = [test for test in failed if test not in record["known_failures"]]
    if unknown:
        # What each says, so that a failure seen once can be understood.
        messages = {}
        for outcome in outcomes.values():
            messages.update(outcome["messages"])
        problems.append(
            "failures not known before:\n"
            + "\n".join(
                f"  {test}\n    " + messages.get(test, "").replace("\n", "\n    ")
                for test in unknown
            )
        )
    if record["scikit-learn"] == sklearn.__version__:
        for name, outcome in outcomes.items():
            if outcome["passed"] < record["passed"].get(name, 0):
                problems.append(
                    f"{name}: {outcome['passed']} passed, fewer than the "
                    f"{record['passed'][name]} recorded"
                )
    with open(DOCS) as f:
        docs = f.read()
    unexplained = [
        test
        for test in record["known_failures"]
        if test.split("::")[1].split("[")[0] not in docs
    ]
    if unexplained:
        problems.append(
            "known failures not explained in docs/fidelity.rst:\n  "
            + "\n  ".join(unexplained)
        )
    if problems:
        print("\n".join(["", "FIDELITY CHECK FAILED:", *problems]))
        return 1
    print("Fidelity check passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
