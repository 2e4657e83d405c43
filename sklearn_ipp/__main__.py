"""Command line: ``python -m sklearn_ipp info``.

``info`` connects to the cluster sklearn_ipp would use (a running cluster of
the default profile, else a local one started for the command and stopped at
its end) and prints a JSON summary of its engines, hosts, memory and versions.
"""

import argparse
import json
import socket
import sys

from ._cluster import DEFAULT_TIMEOUT, resolve_cluster
from ._engines import _client_versions, check_engines
from ._exceptions import ClusterNotFoundError, EngineTimeoutError, EngineVersionError

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
        it came from), ``n_engines``, ``hosts`` (engine ids, available and
        total MB per hostname), ``engines`` (per engine id) and
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
                "available_mb": round(fact["host_available_mb"], 1),
                "total_mb": round(fact["host_total_mb"], 1),
            },
        )
        host["engines"].append(engine_id)
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


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m sklearn_ipp",
        description="scikit-learn model selection on an ipyparallel cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info",
        help="print a JSON summary of the cluster: engines, hosts, memory, versions",
        description=(
            "Print a JSON summary of the cluster. Exits with status 1 when an "
            "engine's versions differ from this client's."
        ),
    )
    info.add_argument(
        "--profile",
        default=None,
        help=(
            "profile name, profile directory, cluster file or connection file of a "
            "running cluster (default: a running cluster of the default profile, "
            "else a local cluster started for this command)"
        ),
    )
    info.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for engines (default: %(default)s)",
    )
    return parser


def main(argv=None):
    """Run the command line; return the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        info = cluster_info(args.profile, timeout=args.timeout)
    except (ClusterNotFoundError, EngineTimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
