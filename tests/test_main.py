"""``python -m sklearn_ipp`` on the session's real cluster."""

import json
import re
import socket

import sklearn

import sklearn_ipp
from sklearn_ipp.__main__ import cluster_info, main

from .conftest import N_ENGINES, run_python


def _run(*args):
    return run_python("-m", "sklearn_ipp", *args, timeout=120)


def test_info_prints_json_summary_of_the_running_cluster(client, cluster):
    completed = _run("info")
    assert completed.returncode == 0, completed.stderr
    info = json.loads(completed.stdout)
    assert cluster.cluster_id in info["cluster"]
    assert info["n_engines"] == N_ENGINES
    assert info["version_mismatches"] == []
    assert info["client"]["versions"]["scikit-learn"] == sklearn.__version__
    assert info["client"]["versions"]["sklearn_ipp"] == sklearn_ipp.__version__
    host = info["hosts"][socket.gethostname()]
    assert sorted(host["engines"]) == sorted(client.ids)
    assert 0 < host["available_mb"] <= host["total_mb"]
    engine_pids = {int(k): v["pid"] for k, v in info["engines"].items()}
    assert engine_pids == {
        engine_id: fact["pid"]
        for engine_id, fact in sklearn_ipp.engine_facts(client).items()
    }


def test_info_for_a_profile_without_cluster_fails_clearly():
    completed = _run("info", "--profile", "nowhere")
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "ipcluster start --profile=nowhere" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_cluster_info_on_a_view(client):
    target = client.ids[0]
    info = cluster_info(client.load_balanced_view(targets=[target]))
    assert info["n_engines"] == 1
    assert list(info["engines"]) == [str(target)]


def test_main_returns_status_1_on_version_mismatch(client, capsys):
    from .test_engines import _set_engine_version

    engine_id = client.ids[0]
    previous = client[engine_id].apply_sync(_set_engine_version, "joblib", "0.1")
    try:
        status = main(["info", "--profile", "default"])
    finally:
        client[engine_id].apply_sync(_set_engine_version, "joblib", previous)
    captured = capsys.readouterr()
    assert status == 1
    mismatches = json.loads(captured.out)["version_mismatches"]
    assert mismatches == [
        {
            "engine": engine_id,
            "hostname": socket.gethostname(),
            "package": "joblib",
            "engine_version": "0.1",
            "client_version": __import__("joblib").__version__,
        }
    ]
    assert "version_mismatches" in captured.err


def test_demo_prints_the_tutorials_table(cluster):
    completed = _run("demo")
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "Fitting 5 folds for each of 20 candidates, totalling 100 fits" in out
    assert re.search(r"fits: 100%\|.*\| 100/100", completed.stderr)
    ranks = re.findall(
        r"^Rank (\d): validation: (\S+) \(\+/-(\S+)\) "
        r"train: (\S+) \(\+/-(\S+)\):\n(\{.*\})$",
        out,
        re.MULTILINE,
    )
    assert [int(rank) for rank, *_ in ranks] == [1, 2, 3, 4, 5]
    # The tutorial's printed table (its ranks 2 and 3 are a tie, in either order).
    assert ranks[0][1:] == (
        "0.99022",
        "0.00151",
        "0.99896",
        "0.00038",
        "{'C': 1.0, 'gamma': 0.001}",
    )
    assert {ranks[1][5], ranks[2][5]} == {
        "{'C': 10.0, 'gamma': 0.001}",
        "{'C': 100.0, 'gamma': 0.001}",
    }
    assert (
        ranks[1][1:5] == ranks[2][1:5] == ("0.98889", "0.00157", "1.00000", "0.00000")
    )
    assert ranks[3][1:] == (
        "0.98756",
        "0.00194",
        "0.99733",
        "0.00018",
        "{'C': 10.0, 'gamma': 0.0001}",
    )
    assert ranks[4][1:] == (
        "0.98711",
        "0.00178",
        "1.00000",
        "0.00000",
        "{'C': 100.0, 'gamma': 0.0001}",
    )
