"""Command line: ``python -m sklearn_ipp demo|info``.

Both connect to the cluster sklearn_ipp would use (a running cluster of the
default profile, else a local one started for the command and stopped at its
end). ``demo`` runs the tutorial's digits grid search on it and prints the
best candidates; ``info`` prints a JSON summary of its engines, hosts, memory
and versions.
"""

import argparse
import json
import socket
import sys

from ._cluster import DEFAULT_TIMEOUT, resolve_cluster
from ._engines import _client_versions, check_engines
from ._exceptions import ClusterNotFoundError, EngineTimeoutError, EngineVersionError
from ._threads import threads_per_engine

_MISMATCH_FIELDS = ("engine", "hostname", "package", "engine_version", "client_version")


def cluster_info(client=None, *, timeout=DEFAULT_TIMEOUT):
    """Summarise a cluster as a JSON-serialisable dict.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    timeout : float, default=60
        Seconds to wait for engines to register and to answer.

    Returns
    -------
    info : dict
        Keys ``client`` (this process's host and versions), ``cluster`` (where
        it came from), ``n_engines``, ``hosts`` (per hostname: engine ids,
        CPUs, the BLAS and OpenMP threads each engine's fits get, available
        and total MB), ``engines`` (per engine id) and
        ``version_mismatches`` (empty when every engine matches the client).
    """
    with resolve_cluster(client, timeout=timeout) as connection:
        source = connection.source
        try:
            facts = check_engines(connection, timeout=timeout)
            mismatches = []
        except EngineVersionError as exc:
            facts = exc.facts
            mismatches = [
                dict(zip(_MISMATCH_FIELDS, m, strict=True)) for m in exc.mismatches
            ]
    hosts = {}
    for engine_id, fact in sorted(facts.items()):
        host = hosts.setdefault(
            fact["hostname"],
            {
                "engines": [],
                "n_cpus": fact["n_cpus"],
                "available_mb": round(fact["host_available_mb"], 1),
                "total_mb": round(fact["host_total_mb"], 1),
            },
        )
        host["engines"].append(engine_id)
    for host in hosts.values():
        # The BLAS and OpenMP threads each engine's fits get there.
        host["threads_per_engine"] = threads_per_engine(
            host["n_cpus"], len(host["engines"])
        )
    return {
        "client": {"hostname": socket.gethostname(), "versions": _client_versions()},
        "cluster": source,
        "n_engines": len(facts),
        "hosts": hosts,
        "engines": {
            str(engine_id): {
                "hostname": fact["hostname"],
                "pid": fact["pid"],
                "rss_mb": round(fact["rss_mb"], 1),
                "python": fact["python"],
                "versions": fact["versions"],
            }
            for engine_id, fact in sorted(facts.items())
        },
        "version_mismatches": mismatches,
    }


def run_demo(client=None, *, n_top=5):
    """Run the tutorial's digits search on the cluster and return its report.

    An SVC over ``C`` in ``logspace(-1, 2, 4)`` and ``gamma`` in
    ``logspace(-4, 0, 5)``, evaluated on five shuffled 75/25 splits of the
    digits data with train scores, as in the tutorial.

    Parameters
    ----------
    client : None, str, ipyparallel.Client, View or Cluster, default=None
        The cluster, as described in :func:`sklearn_ipp.get_client`.
    n_top : int, default=5
        How many candidates the report shows.

    Returns
    -------
    search : IPyParallelGridSearchCV
        The fitted search.
    report : str
        The best candidates with mean validation and train scores and their
        standard errors.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import ShuffleSplit
    from sklearn.svm import SVC

    from ._search import IPyParallelGridSearchCV

    digits = load_digits()
    search = IPyParallelGridSearchCV(
        SVC(),
        {"C": np.logspace(-1, 2, 4), "gamma": np.logspace(-4, 0, 5)},
        cv=ShuffleSplit(n_splits=5, test_size=0.25, random_state=42),
        return_train_score=True,
        verbose=1,
        client=client,
    )
    search.fit(digits.data, digits.target)
    return search, search.report(n_top=n_top)


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m sklearn_ipp",
        description="scikit-learn model selection on an ipyparallel cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the tutorial's digits grid search on the cluster",
        description=(
            "Grid-search an SVC on the digits data on the cluster, with a "
            "progress bar, and print the best candidates with their mean "
            "validation and train scores and standard errors."
        ),
    )
    info = commands.add_parser(
        "info",
        help="print a JSON summary of the cluster: engines, hosts, memory, versions",
        description=(
            "Print a JSON summary of the cluster. Exits with status 1 when an "
            "engine's versions differ from this client's."
        ),
    )
    for command in (demo, info):
        _add_cluster_arguments(command)
    return parser


def _add_cluster_arguments(command):
    command.add_argument(
        "--profile",
        default=None,
        help=(
            "profile name, profile directory, cluster file or connection file of a "
            "running cluster (default: a running cluster of the default profile, "
            "else a local cluster started for this command)"
        ),
    )
    command.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for engines (default: %(default)s)",
    )


def main(argv=None):
    """Run the command line; return the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        connection = resolve_cluster(args.profile, timeout=args.timeout)
    except (ClusterNotFoundError, EngineTimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with connection:
        if args.command == "demo":
            print(f"Cluster: {connection.source}, {len(connection.engine_ids)} engines")
            _, report = run_demo(connection)
            print(report)
            return 0
        info = cluster_info(connection, timeout=args.timeout)
    json.dump(info, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if info["version_mismatches"]:
        print(
            "Engines run other versions than this client: see version_mismatches.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
