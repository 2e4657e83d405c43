"""Engine facts on the session's real cluster."""

import os
import re
import socket
import time

import numpy as np
import psutil
import pytest
import sklearn

import sklearn_ipp
from sklearn_ipp import (
    EngineVersionError,
    check_engines,
    engine_facts,
    engines_memory,
    hosts_free_memory,
    one_engine_per_host,
)

from .conftest import N_ENGINES, on_engine

_BALLAST_MB = 400


@on_engine
def _allocate(megabytes):
    # Touch every page so that the memory is resident, not just reserved.
    import numpy as np

    globals()["_ballast"] = np.ones(int(megabytes * 1e6) // 8)


@on_engine
def _release():
    globals().pop("_ballast", None)


def test_engine_facts_describe_live_local_engines(client):
    facts = engine_facts(client)
    assert sorted(facts) == sorted(client.ids)
    pids = {fact["pid"] for fact in facts.values()}
    assert len(pids) == N_ENGINES
    assert pids == set(client[:].apply_sync(os.getpid))
    for fact in facts.values():
        assert fact["hostname"] == socket.gethostname()
        # Linux engines take the stop signal (the probe installs its handler).
        assert fact["stop_signal"] is True
        assert fact["versions"]["scikit-learn"] == sklearn.__version__
        assert fact["versions"]["numpy"] == np.__version__
        assert fact["versions"]["sklearn_ipp"] == sklearn_ipp.__version__


def test_engines_memory_follows_an_allocation(client):
    target = client.ids[0]
    before = engines_memory(client)
    assert sorted(before) == sorted(client.ids)
    for engine_id, rss in before.items():
        pid = engine_facts(client[[engine_id]])[engine_id]["pid"]
        assert rss == pytest.approx(
            psutil.Process(pid).memory_info().rss / 1e6, rel=0.2
        )
    client[target].apply_sync(_allocate, _BALLAST_MB)
    try:
        after = engines_memory(client)
        assert after[target] - before[target] > 0.9 * _BALLAST_MB
        for other in set(client.ids) - {target}:
            assert abs(after[other] - before[other]) < 0.25 * _BALLAST_MB
    finally:
        client[target].apply_sync(_release)


def _settled_free_memory(client, host):
    """Host free memory once it stops moving (processes of earlier tests exit)."""
    previous = hosts_free_memory(client)[host]
    for _ in range(20):
        time.sleep(0.5)
        current = hosts_free_memory(client)[host]
        if abs(current - previous) < 0.1 * _BALLAST_MB:
            return current
        previous = current
    return current


def test_hosts_free_memory_drops_with_an_allocation(client):
    host = socket.gethostname()
    assert list(hosts_free_memory(client)) == [host]
    before = _settled_free_memory(client, host)
    assert before == pytest.approx(psutil.virtual_memory().available / 1e6, rel=0.1)
    client[client.ids[0]].apply_sync(_allocate, 2 * _BALLAST_MB)
    try:
        after = hosts_free_memory(client)[host]
        assert before - after > _BALLAST_MB
    finally:
        client[client.ids[0]].apply_sync(_release)


def test_one_engine_per_host(client):
    view = one_engine_per_host(client)
    assert view.targets == [min(client.ids)]
    assert view.apply(socket.gethostname) == [socket.gethostname()]
    restricted = one_engine_per_host(
        client.load_balanced_view(targets=[max(client.ids)])
    )
    assert restricted.targets == [max(client.ids)]


def test_check_engines_passes_when_versions_match(client):
    facts = check_engines(client)
    assert sorted(facts) == sorted(client.ids)


@on_engine
def _set_engine_version(module_name, version):
    import importlib

    module = importlib.import_module(module_name)
    previous = module.__version__
    module.__version__ = version
    return previous


def test_check_engines_names_engine_package_and_both_versions(client):
    engine_id = client.ids[-1]
    previous = client[engine_id].apply_sync(_set_engine_version, "sklearn", "0.0.1")
    try:
        expected = (
            f"engine {engine_id} on host {socket.gethostname()!r} has scikit-learn "
            f"0.0.1, this client has scikit-learn {sklearn.__version__}"
        )
        with pytest.raises(EngineVersionError, match=re.escape(expected)) as info:
            check_engines(client)
        assert f"pip install scikit-learn=={sklearn.__version__}" in str(info.value)
        assert info.value.mismatches == [
            (
                engine_id,
                socket.gethostname(),
                "scikit-learn",
                "0.0.1",
                sklearn.__version__,
            )
        ]
    finally:
        client[engine_id].apply_sync(_set_engine_version, "sklearn", previous)
    check_engines(client)


@on_engine
def _hide_module(name):
    import sys

    sys.modules["_hidden_" + name] = sys.modules[name]
    sys.modules[name] = None  # makes `import name` raise ImportError


@on_engine
def _restore_module(name):
    import sys

    sys.modules[name] = sys.modules.pop("_hidden_" + name)


def test_check_engines_reports_a_missing_package(client):
    # The probe must run where sklearn_ipp itself cannot be imported.
    engine_id = client.ids[0]
    client[engine_id].apply_sync(_hide_module, "sklearn_ipp")
    try:
        expected = (
            f"engine {engine_id} on host {socket.gethostname()!r} has no sklearn_ipp, "
            f"this client has sklearn_ipp {sklearn_ipp.__version__}"
        )
        with pytest.raises(EngineVersionError, match=re.escape(expected)):
            check_engines(client)
    finally:
        client[engine_id].apply_sync(_restore_module, "sklearn_ipp")


@on_engine
def _set_python_version(version):
    import platform

    previous = platform.python_version
    platform.python_version = lambda: version
    globals()["_saved_python_version"] = previous


@on_engine
def _restore_python_version():
    import platform

    platform.python_version = globals().pop("_saved_python_version")


def test_check_engines_reports_another_python(client):
    engine_id = client.ids[0]
    client[engine_id].apply_sync(_set_python_version, "2.7.18")
    try:
        with pytest.raises(EngineVersionError, match=re.escape("has Python 2.7, this")):
            check_engines(client)
    finally:
        client[engine_id].apply_sync(_restore_python_version)
