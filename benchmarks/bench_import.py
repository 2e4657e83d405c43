"""What importing sklearn_ipp costs a process that may never use a cluster.

Each row is the median, over fresh interpreters, of the time an import adds
on top of ``import sklearn.model_selection`` (which every user of a search
pays anyway), and whether ipyparallel and zmq were loaded by it. Side by side:
sklearn_ipp, and ipyparallel, which its own joblib backend needs imported.

    python benchmarks/bench_import.py --repeats 5
"""

import argparse
import json
import statistics
import subprocess
import sys

_MEASURE = """
import json, sys, time
import sklearn.model_selection
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
print(json.dumps([seconds, "ipyparallel" in sys.modules, "zmq" in sys.modules]))
"""

SYSTEMS = {"sklearn_ipp": "sklearn_ipp", "ipyparallel's backend": "ipyparallel"}


def measure(module, repeats):
    """Return the seconds of each import and what the first one loaded."""
    runs = []
    for _ in range(repeats):
        completed = subprocess.run(
            [sys.executable, "-c", _MEASURE.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(completed.stdout))
    return [seconds for seconds, *_ in runs], runs[0][1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'import':<24}{'median s':>10}{'range s':>16}  loads ipyparallel, zmq")
    for name, module in SYSTEMS.items():
        seconds, (ipyparallel, zmq) = measure(module, args.repeats)
        spread = f"{min(seconds):.3f}-{max(seconds):.3f}"
        print(
            f"{name:<24}{statistics.median(seconds):>10.3f}{spread:>16}  "
            f"{'yes' if ipyparallel else 'no'}, {'yes' if zmq else 'no'}"
        )


if __name__ == "__main__":
    main()
