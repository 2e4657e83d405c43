"""Facts about the engines of a cluster: hosts, memory and package versions.

All of them come from one probe run once on every engine, so a call costs one
round trip whatever is asked.
"""

import platform
from importlib import import_module

from ._cluster import DEFAULT_TIMEOUT, resolve_cluster
from ._exceptions import EngineVersionError

__all__ = [
    "CHECKED_PACKAGES",
    "check_engines",
    "engine_facts",
    "engines_memory",
    "hosts_free_memory",
    "one_engine_per_host",
    "start_probe",
]

# Distribution name -> module name of the packages that must match on every
# engine: a task pickled by the client is unpickled and run by these on the
# engine, and sklearn itself refuses estimators pickled by another version.
CHECKED_PACKAGES = {
    "scikit-learn": "sklearn",
    "numpy": "numpy",
    "joblib": "joblib",
    "sklearn_ipp": "sklearn_ipp",
}


def _probe(packages, marker_path=None, marker_token=None):
    """Describe the engine process this runs in.

    Shipped by value (see ``_shippable``), so it must import what it needs in
    its body and work even where sklearn_ipp itself is not installed. With a
    marker, it also tells whether this engine reads ``marker_token`` in the
    file ``marker_path``: whether it sees the client's store.
    """
    import os
    import platform
    import socket
    from importlib import import_module

    import psutil

    versions = {}
    for distribution, module_name in packages.items():
        try:
            versions[distribution] = getattr(
                import_module(module_name), "__version__", "unknown"
            )
        except ImportError:
            versions[distribution] = None
    sees_store = False
    if marker_path is not None:
        try:
            with open(marker_path) as f:
                sees_store = f.read() == marker_token
        except OSError:
            pass
    try:
        # What loky counts: CPUs this process may use (affinity, cgroups).
        from joblib import cpu_count
    except ImportError:
        cpu_count = os.cpu_count
    stop_signal = False
    try:
        # The probe is the first work of ours an engine gets: from now on a
        # stop signal cannot end it (see install_stop_handler).
        from sklearn_ipp._worker import install_stop_handler

        stop_signal = install_stop_handler()
    except ImportError:
        pass  # sklearn_ipp is missing here: the check of versions says so
    process = psutil.Process(os.getpid())
    return {
        "sees_store": sees_store,
        "hostname": socket.gethostname(),
        "n_cpus": cpu_count() or 1,
        "pid": process.pid,
        "stop_signal": stop_signal,
        "rss_mb": process.memory_info().rss / 1e6,
        "host_available_mb": psutil.virtual_memory().available / 1e6,
        "host_total_mb": psutil.virtual_memory().total / 1e6,
        "python": platform.python_version(),
        "versions": versions,
    }


def _shippable(function):
    """Return a copy of ``function`` that ipyparallel sends by value.

    ipyparallel re-imports the module of a function on the engine unless the
    module name starts with ``__``; the probe must also run on an engine where
    sklearn_ipp is missing, to be able to say so.
    """
    function.__module__ = "__main__"
    return function


_probe = _shippable(_probe)


def engine_facts(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Describe every engine: host, process, memory and package versions.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    timeout : float, default=60
        Seconds to wait for engines to register and to answer.

    Returns
    -------
    facts : dict
        ``{engine_id: {"hostname", "n_cpus", "pid", "stop_signal", "rss_mb",
        "host_available_mb", "host_total_mb", "python", "versions"}}`` where
        ``n_cpus`` is the number of CPUs the engine may use, ``stop_signal``
        whether a stop signal can stop its tasks (not on Windows), and
        ``versions`` maps each package of :data:`CHECKED_PACKAGES` to its
        version on that engine (None when missing).

    Notes
    -----
    Like every first contact of sklearn_ipp with an engine, this installs
    sklearn_ipp's SIGUSR1 handler there, so that a stop signal never ends the
    engine (see :doc:`/resilience`).
    """
    with resolve_cluster(client, timeout=timeout) as connection:
        return start_probe(connection).get_dict(timeout=timeout)


def start_probe(connection, targets=None, store=None):
    """Send the probe to engines of a connection; return the AsyncResult.

    Sent ahead, it runs while the client prepares work: on fresh engines it
    imports scikit-learn, which the first task would wait for anyway.

    Parameters
    ----------
    connection : ClusterConnection
    targets : list of int or None, default=None
        The engines to probe; None: every engine of the connection.
    store : Store or None, default=None
        With a store, each engine also reports whether it sees it
        (``"sees_store"``).
    """
    view = connection.direct_view(targets)
    view.block = False
    marker = () if store is None else (store.marker_path, store.marker_token)
    return view.apply_async(_probe, CHECKED_PACKAGES, *marker)


def engines_memory(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Return the resident memory of each engine process, in megabytes.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    timeout : float, default=60
        Seconds to wait for engines to register and to answer.

    Returns
    -------
    memory : dict of int to float
        Resident set size (RSS) in MB (10**6 bytes) per engine id. Pages of a
        memory-mapped file count in the RSS of every engine that touched them,
        although the host holds them once: see :func:`hosts_free_memory` for
        what the host has left.

    Examples
    --------
    >>> from sklearn_ipp import engines_memory
    >>> engines_memory()  # doctest: +SKIP
    {0: 95.1, 1: 94.8}
    """
    facts = engine_facts(client, timeout=timeout)
    return {engine_id: fact["rss_mb"] for engine_id, fact in facts.items()}


def hosts_free_memory(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Return the memory available on each host of the cluster, in megabytes.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    timeout : float, default=60
        Seconds to wait for engines to register and to answer.

    Returns
    -------
    free_memory : dict of str to float
        Memory available for new allocations without swapping
        (``psutil.virtual_memory().available``) in MB (10**6 bytes), per
        hostname. It counts reclaimable page cache as available, so reading a
        memory-mapped file does not lower it while writing anonymous memory
        does.

    Examples
    --------
    >>> from sklearn_ipp import hosts_free_memory
    >>> hosts_free_memory()  # doctest: +SKIP
    {'node001': 23011.5}
    """
    facts = engine_facts(client, timeout=timeout)
    return {fact["hostname"]: fact["host_available_mb"] for fact in facts.values()}


def one_engine_per_host(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Return a DirectView with one engine on each host of the cluster.

    Use it for work to be done once per host, such as installing a package
    or writing a file to a host's local disk.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    timeout : float, default=60
        Seconds to wait for engines to register and to answer.

    Returns
    -------
    view : ipyparallel.DirectView
        A blocking view on the lowest engine id of each host, hosts told apart
        by hostname.

    Examples
    --------
    >>> from sklearn_ipp import one_engine_per_host
    >>> view = one_engine_per_host()  # doctest: +SKIP
    >>> view.apply(lambda: __import__("socket").gethostname())  # doctest: +SKIP
    ['node001', 'node002']
    """
    connection = resolve_cluster(client, timeout=timeout)
    facts = engine_facts(connection, timeout=timeout)
    first_engine_of_host = {}
    for engine_id in sorted(facts):
        first_engine_of_host.setdefault(facts[engine_id]["hostname"], engine_id)
    return connection.direct_view(sorted(first_engine_of_host.values()))


def check_engines(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Check that every engine runs the same versions as this client.

    Compares the Python version (major.minor, which decides whether pickled
    functions can be read) and the versions of scikit-learn, numpy, joblib and
    sklearn_ipp.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    timeout : float, default=60
        Seconds to wait for engines to register and to answer.

    Returns
    -------
    facts : dict
        What :func:`engine_facts` returns, when every engine matches.

    Raises
    ------
    EngineVersionError
        Naming each engine, package and both versions that differ.

    Examples
    --------
    >>> from sklearn_ipp import check_engines
    >>> facts = check_engines()  # doctest: +SKIP
    """
    return check_versions(engine_facts(client, timeout=timeout))


def check_versions(facts):
    """Raise EngineVersionError unless every engine in ``facts`` matches."""
    expected = _client_versions()
    mismatches = []
    for engine_id in sorted(facts):
        fact = facts[engine_id]
        found = {"Python": _major_minor(fact["python"]), **fact["versions"]}
        for package, client_version in expected.items():
            if found.get(package) != client_version:
                mismatches.append(
                    (
                        engine_id,
                        fact["hostname"],
                        package,
                        found.get(package),
                        client_version,
                    )
                )
    if mismatches:
        raise EngineVersionError(_version_message(mismatches), mismatches, facts)
    return facts


def _client_versions():
    versions = {"Python": _major_minor(platform.python_version())}
    for distribution, module_name in CHECKED_PACKAGES.items():
        versions[distribution] = import_module(module_name).__version__
    return versions


def _major_minor(version):
    return ".".join(version.split(".")[:2])


def _version_message(mismatches):
    lines = [
        f"engine {engine_id} on host {hostname!r} has "
        + (f"{package} {engine_version}" if engine_version else f"no {package}")
        + f", this client has {package} {client_version}"
        for engine_id, hostname, package, engine_version, client_version in mismatches
    ]
    fixes = sorted(
        {
            f"{package}=={client_version}"
            for _, _, package, _, client_version in mismatches
            if package != "Python"
        }
    )
    fix = (
        f"Install the client's versions on those engines' hosts "
        f"(`pip install {' '.join(fixes)}`) and restart the engines."
        if fixes
        else "Start the engines with the client's Python version."
    )
    return (
        "Engines differ from this client, so tasks could fail or give different "
        "results:\n  " + "\n  ".join(lines) + "\n" + fix
    )
