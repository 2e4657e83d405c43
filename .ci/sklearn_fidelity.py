"""scikit-learn's own model-selection tests, run against sklearn_ipp.

Copies ``test_search.py``, ``test_successive_halving.py`` and
``test_validation.py`` from the installed scikit-learn (they ship in its
wheel) next to ``.ci/fidelity/conftest.py``, which rebinds the searches to
sklearn_ipp's and runs the validation tests under sklearn_ipp's joblib
backend, on a real cluster. Then compares with ``.ci/sklearn-fidelity.json``:

- every failing test must be a known one (listed there, and explained in
  ``docs/fidelity.rst``);
- with the scikit-learn version recorded there, each file must pass at least
  as many tests as recorded.

Usage::

    python .ci/sklearn_fidelity.py            # check, exit 1 on a regression
    python .ci/sklearn_fidelity.py --record   # write the counts and failures
    python .ci/sklearn_fidelity.py --mode in-process   # the references:
    python .ci/sklearn_fidelity.py --mode loky         # counts only

Other arguments go to pytest.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import sklearn

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "sklearn-fidelity.json")
DOCS = os.path.join(HERE, "..", "docs", "fidelity.rst")
FILES = ("test_search.py", "test_successive_halving.py", "test_validation.py")


def run_tests(directory, pytest_args):
    """Copy the tests into ``directory``, run them; return their outcomes."""
    tests = os.path.join(os.path.dirname(sklearn.__file__), "model_selection", "tests")
    for name in FILES:
        shutil.copy(os.path.join(tests, name), directory)
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
        f"--junitxml={report}",
        *pytest_args,
    ]
    subprocess.run(command, cwd=directory, check=False)
    return _outcomes(report)


def _outcomes(report):
    """Return ``{file: {"passed": n, "failed": [test, ...], "skipped": n}}``."""
    outcomes = {name: {"passed": 0, "failed": [], "skipped": 0} for name in FILES}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[0] + ".py"
        if module not in outcomes:
            continue
        test = f"{module}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[module]["failed"].append(test)
        elif case.find("skipped") is not None:
            outcomes[module]["skipped"] += 1
        else:
            outcomes[module]["passed"] += 1
    return outcomes


def main():
    """Run, print the counts, check them (or record them); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument(
        "--mode", choices=["cluster", "in-process", "loky"], default="cluster"
    )
    args, pytest_args = parser.parse_known_args()
    os.environ["SKLEARN_IPP_FIDELITY_MODE"] = args.mode
    directory = tempfile.mkdtemp(prefix="sklearn_ipp-sklearn-tests-")
    try:
        outcomes = run_tests(directory, pytest_args)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    with open(RECORD) as f:
        record = json.load(f)
    print(f"\nscikit-learn {sklearn.__version__}'s tests, {args.mode}:")
    header = ("passed", "failed", "skipped", "recorded")
    print(f"{'file':30s} {' '.join(f'{h:>8s}' for h in header)}")
    for name, outcome in outcomes.items():
        recorded = record["passed"].get(name, "-")
        print(
            f"{name:30s} {outcome['passed']:8d} {len(outcome['failed']):8d} "
            f"{outcome['skipped']:8d} {recorded!s:>8s}"
        )
    failed = sorted(test for o in outcomes.values() for test in o["failed"])
    if args.mode != "cluster":
        print("\n".join(["Failed:", *failed]))
        return 0
    if args.record:
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
    problems = []
    if sum(o["passed"] for o in outcomes.values()) == 0:
        problems.append("no test passed: the run is broken")
    unknown = [test for test in failed if test not in record["known_failures"]]
    if unknown:
        problems.append("failures not known before:\n  " + "\n  ".join(unknown))
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
