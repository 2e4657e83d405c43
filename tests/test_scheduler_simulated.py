"""The real scheduler on the simulated cluster of ``benchmarks/bench_scheduler.py``.

No cluster and no thread: the simulation calls ``Scheduler.step()`` after
each event, in simulated time, and checks that every fit's result comes back
once. Small runs here; the benchmark runs 100,000 fits on up to 1,000 engines.
"""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scheduler.py"
_spec = importlib.util.spec_from_file_location("bench_scheduler", _PATH)
bench_scheduler = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_scheduler)


@pytest.mark.parametrize("n_engines", [3, 40])
def test_a_search_is_scheduled_as_well_as_greedy_list_scheduling(n_engines):
    row = bench_scheduler.simulate(n_engines, 1000, 1.0, 1.0, 0.01, churn=False)
    # Within 2 % of each fit in order to the first free engine, with no
    # message cost and perfect knowledge.
    assert row["efficiency"] >= 0.98 * row["bound"]
    assert row["retried"] == 0


def test_engines_dying_and_joining_lose_no_fit():
    # simulate() checks that every result came back, once and in place.
    row = bench_scheduler.simulate(40, 1000, 1.0, 1.0, 0.01, churn=True)
    assert row["retried"] >= 1
    # The engines that join take their share: the engine time available is
    # used about as well as without the churn.
    steady = bench_scheduler.simulate(40, 1000, 1.0, 1.0, 0.01, churn=False)
    assert row["efficiency"] >= 0.9 * steady["efficiency"]


def test_short_fits_share_messages():
    row = bench_scheduler.simulate(4, 2000, 0.01, 0.5, 0.01, churn=False)
    # 10 ms fits and a 10 ms message cost: packed, they keep the engines busy.
    assert row["messages"] < 2000 / 5
    assert row["efficiency"] >= 0.9 * row["bound"]
