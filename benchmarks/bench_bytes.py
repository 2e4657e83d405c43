"""Bytes sent per fit and per host as X grows, side by side.

A grid search of 2 candidates x ``KFold(3)`` (6 fits; ``--splits`` for more) of
``DummyClassifier``
(whose fit and predict cost nothing, so that only the data movement counts)
on X of 10 MB, 100 MB and 1 GB (float64, 125 features), on a cluster of two
hosts: the client's own, with ``--engines`` engines, and a fake host with as
many, which has its own hostname and a private /tmp and /dev/shm, so it does
not see the client's files (made with ``unshare``; needs root, else only the
client's host is used). Systems:

- sklearn_ipp's IPyParallelGridSearchCV,
- the same with every stored fold sent whole to the other host, as sklearn_ipp
  did before hosts cut their folds from one copy of the data ("folds sent
  whole"),
- sklearn's GridSearchCV under sklearn_ipp's joblib backend,
- sklearn's GridSearchCV under ipyparallel's own joblib backend (up to
  ``--builtin-max-mb``: it sends X with every task, and its controller keeps
  every message in memory).

Measured in one run, each system and size in a fresh cluster:

- bytes per fit: the task messages the client sends (``apply_request``
  buffers; not sklearn_ipp's data transfers, probes and clean-ups), over
  the fits;
- bytes per host: every byte that went to the fake host during ``fit``:
  it has its own network namespace, joined to the client's host by a veth
  pair whose counter is read before and after (data, task messages, and the
  cluster's own traffic such as heartbeats).

    python benchmarks/bench_bytes.py --sizes-mb 10 100 1000 --splits 3 5
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import ratio_plot
import saved_run
from bench_search_memory import new_cluster

SYSTEMS = (
    "sklearn_ipp",
    "sklearn_ipp, folds sent whole",
    "sklearn on sklearn_ipp backend",
    "ipyparallel-builtin",
)
N_FEATURES = 125
GRID = {"strategy": ["prior", "stratified"]}

# A fake host: its own hostname, a private /tmp and /dev/shm; the engines
# connect to the controller over loopback. Directories under /tmp that the
# engines need (a virtualenv) are bound back in through /mnt.
_FAKE_HOST_SCRIPT = """
set -e
hostname "$FAKE_HOSTNAME"
mount --rbind /tmp /mnt
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
for kept in $FAKE_HOST_KEEP; do
    mkdir -p "$kept"
    mount --bind "/mnt/${kept#/tmp/}" "$kept"
done
printf '%s' "$FAKE_HOST_ENGINE_FILE" > /tmp/engine.json
export IPYTHONDIR=/tmp/ipython
for i in $(seq "$FAKE_HOST_ENGINES"); do
    "$FAKE_HOST_PYTHON" -m ipyparallel.engine --file=/tmp/engine.json \\
        --log-level=40 &
done
wait
"""


_UNSHARE = ["unshare", "--uts", "--mount", "--propagation", "private"]


# The fake host's network: a namespace joined to the client's by a veth pair,
# whose counters give the bytes that went to that host.
_NETNS = "sklearn-ipp-bench"
_HOST_SIDE, _FAKE_SIDE = "skipp-bench0", "skipp-bench1"
_HOST_ADDRESS, _FAKE_ADDRESS = "10.213.7.1", "10.213.7.2"


def _can_fake_hosts():
    if os.geteuid() != 0:
        return False
    checks = (["unshare", "--uts", "--mount", "true"], ["ip", "netns", "list"])
    return all(
        subprocess.run(check, capture_output=True).returncode == 0 for check in checks
    )


@contextlib.contextmanager
def _fake_network():
    """Make the fake host's network namespace; remove it afterwards."""
    commands = [
        f"ip netns add {_NETNS}",
        f"ip link add {_HOST_SIDE} type veth peer name {_FAKE_SIDE}",
        f"ip link set {_FAKE_SIDE} netns {_NETNS}",
        f"ip addr add {_HOST_ADDRESS}/30 dev {_HOST_SIDE}",
        f"ip link set {_HOST_SIDE} up",
        f"ip netns exec {_NETNS} ip addr add {_FAKE_ADDRESS}/30 dev {_FAKE_SIDE}",
        f"ip netns exec {_NETNS} ip link set {_FAKE_SIDE} up",
        f"ip netns exec {_NETNS} ip link set lo up",
    ]
    try:
        for command in commands:
            subprocess.run(command.split(), check=True)
        yield
    finally:
        subprocess.run(["ip", "netns", "del", _NETNS], capture_output=True)


def _bytes_to_fake_host():
    with open(f"/sys/class/net/{_HOST_SIDE}/statistics/tx_bytes") as f:
        return int(f.read())


@contextlib.contextmanager
def _fake_host(cluster, client, n_engines):
    engine_file = os.path.join(
        cluster.profile_dir,
        "security",
        f"ipcontroller-{cluster.cluster_id}-engine.json",
    )
    with open(engine_file) as f:
        engine_file_content = f.read()
    kept = sorted(
        {
            "/tmp/" + path.split("/")[2]
            for path in map(os.path.realpath, [sys.prefix, os.getcwd()])
            if path.startswith("/tmp/")
        }
    )
    before = len(client.ids)
    process = subprocess.Popen(
        ["ip", "netns", "exec", _NETNS, *_UNSHARE, "sh", "-c", _FAKE_HOST_SCRIPT],
        env=dict(
            os.environ,
            FAKE_HOSTNAME="fakehost",
            FAKE_HOST_KEEP=" ".join(kept),
            FAKE_HOST_ENGINE_FILE=engine_file_content,
            FAKE_HOST_ENGINES=str(n_engines),
            FAKE_HOST_PYTHON=sys.executable,
        ),
        start_new_session=True,
    )
    try:
        client.wait_for_engines(before + n_engines, timeout=120)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


class _TaskBytes:
    """Count the bytes of the client's ``apply_request`` messages."""

    def __init__(self, session):
        self.task_bytes = self.data_bytes = self.messages = 0
        original = session.send

        def send(stream, msg_or_type, *args, **kwargs):
            msg_type = (
                msg_or_type.get("msg_type")
                if isinstance(msg_or_type, dict)
                else msg_or_type
            )
            buffers = kwargs.get("buffers") or []
            if msg_type == "apply_request" and buffers:
                nbytes = sum(memoryview(b).nbytes for b in buffers)
                # The first buffer holds the pickled function: sklearn_ipp's
                # data transfers and its own probes and clean-ups are told
                # apart from the tasks by its name.
                function = bytes(memoryview(buffers[0])[:4096])
                if b"receive_chunk" in function or b"cut_stored" in function:
                    self.data_bytes += nbytes
                elif b"sklearn_ipp" not in function or b"run_batch" in function:
                    self.task_bytes += nbytes
                    self.messages += 1
            return original(stream, msg_or_type, *args, **kwargs)

        session.send = send


def _import_sklearn():
    import sklearn.model_selection  # noqa: F401


def _send_folds_whole():
    """Make hosts without the client's files get every stored fold whole."""
    from sklearn_ipp._hosts import TRANSFER_CHUNK_BYTES, EngineRoster

    def add(roster, ref, data, rows=None, columns=None):
        roster._live[ref.name] = (ref, data, rows, columns)
        for host in roster._remote_hosts():
            with open(ref.path, "rb") as f:
                chunks = iter(lambda: f.read(TRANSFER_CHUNK_BYTES), b"")
                size = os.path.getsize(ref.path)
                roster._send(host, min(host.engines), ref.name, chunks, size)

    EngineRoster.add = add


def _run_child(system, size_mb, n_engines, fake_host, n_splits):
    from joblib import parallel_backend
    from sklearn.dummy import DummyClassifier
    from sklearn.model_selection import GridSearchCV, KFold

    import sklearn_ipp

    n_samples = int(size_mb * 1e6 / (N_FEATURES * 8))
    rng = np.random.RandomState(0)
    X = rng.standard_normal((n_samples, N_FEATURES))
    y = rng.randint(0, 2, size=n_samples)
    with contextlib.ExitStack() as stack:
        network = {}
        if fake_host:
            stack.enter_context(_fake_network())
            # The controller listens on every address; engines reach it on
            # the client's end of the fake host's network.
            network = {"controller_ip": "*", "controller_location": _HOST_ADDRESS}
        cluster = new_cluster(n_engines, **network)
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(n_engines, timeout=120)
        if fake_host:
            stack.enter_context(_fake_host(cluster, client, n_engines))
        # Import scikit-learn on every engine first: not part of the count.
        client[:].apply_sync(_import_sklearn)
        estimator = DummyClassifier(random_state=0)
        if system.startswith("sklearn_ipp"):
            if system == "sklearn_ipp, folds sent whole":
                _send_folds_whole()
            search = sklearn_ipp.IPyParallelGridSearchCV(
                estimator, GRID, cv=KFold(n_splits), refit=False, client=client
            )
            run = search.fit
        else:
            if system == "ipyparallel-builtin":
                client.load_balanced_view().register_joblib_backend()
            else:
                sklearn_ipp.register_backend(client=client)
            search = GridSearchCV(
                estimator, GRID, cv=KFold(n_splits), refit=False, n_jobs=-1
            )

            def run(X, y):
                with parallel_backend("ipyparallel"):
                    search.fit(X, y)

        counter = _TaskBytes(client.session)
        before = _bytes_to_fake_host() if fake_host else None
        start = time.perf_counter()
        run(X, y)
        wall = time.perf_counter() - start
        to_fake_host = _bytes_to_fake_host() - before if fake_host else None
        n_fits = len(search.cv_results_["params"]) * n_splits
        client.close()
        cluster.stop_cluster_sync()
    print(
        json.dumps(
            {
                "system": system,
                "splits": n_splits,
                "x_mb": X.nbytes / 1e6,
                "fits": n_fits,
                "messages": counter.messages,
                "bytes_per_fit": counter.task_bytes / n_fits,
                "data_sent": counter.data_bytes,
                "other_host": to_fake_host,
                "wall": wall,
            }
        )
    )


def _plot(rows, path, command):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # One line per system and number of splits; runs saved before --splits
    # existed had KFold(3).
    lines = list(dict.fromkeys((row["system"], row.get("splits", 3)) for row in rows))
    with plt.rc_context({"font.size": ratio_plot.FONT_SIZE}):
        fig, (per_fit, per_host) = plt.subplots(
            1,
            2,
            # Room for the legend's rows, two entries each.
            figsize=(ratio_plot.FIGURE_WIDTH, 3.6 + 0.3 * ((len(lines) + 1) // 2)),
            dpi=ratio_plot.DPI,
            layout="constrained",
        )
        # One line per system and number of splits; runs saved before
        # --splits existed had KFold(3).
        lines = list(
            dict.fromkeys((row["system"], row.get("splits", 3)) for row in rows)
        )
        several = len({n_splits for _, n_splits in lines}) > 1
        for index, (system, n_splits) in enumerate(lines):
            mine = [
                row
                for row in rows
                if row["system"] == system and row.get("splits", 3) == n_splits
            ]
            sizes = [row["x_mb"] for row in mine]
            name = ratio_plot.label(system)
            # sklearn_ipp and its backend send the same bytes: the later
            # lines are dashed, with smaller markers, so that both show.
            style = {
                "color": ratio_plot.colour(system),
                "marker": "osD^v"[index % 5],
                "markersize": 8 if index == 0 else 4.5,
                "linestyle": "-" if index == 0 or n_splits > 3 else "--",
                "linewidth": 2,
                "label": f"{name}, KFold({n_splits})" if several else name,
            }
            kb_per_fit = [row["bytes_per_fit"] / 1e3 for row in mine]
            per_fit.plot(sizes, kb_per_fit, **style)
            if mine[0]["other_host"] is not None:
                received = [r["other_host"] / 1e6 for r in mine]
                per_host.plot(sizes, received, **style)
        plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
        for ax, title, ylabel in (
            (per_fit, "task messages per fit", "KB per fit"),
            (per_host, "received by a host without the store", "MB received"),
        ):
            ax.set(xscale="log", yscale="log", xlabel="size of X, MB", ylabel=ylabel)
            ax.set_title(title, fontsize=ratio_plot.FONT_SIZE)
            ax.xaxis.set_major_formatter(plain)
            ax.yaxis.set_major_formatter(plain)
            ax.grid(True, which="major", alpha=0.3)
            ax.spines[["top", "right"]].set_visible(False)
        handles, _ = per_fit.get_legend_handles_labels()
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        fig.suptitle(
            "\n".join(
                [
                    "Bytes sent per fit and per host as X grows",
                    *ratio_plot.wrap_command(command),
                ]
            ),
            fontsize=ratio_plot.FONT_SIZE + 1,
        )
        fig.savefig(path)
        plt.close(fig)


def _mb(nbytes):
    return "-" if nbytes is None else f"{nbytes / 1e6:,.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--engines", type=int, default=2, help="engines per host")
    parser.add_argument(
        "--splits", type=int, nargs="+", default=[3], help="KFold's n_splits"
    )
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--builtin-max-mb",
        type=float,
        default=100,
        help="largest X for ipyparallel's own backend",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--fake-host", action="store_true", help=argparse.SUPPRESS)
    saved_run.add_arguments(parser)
    args = parser.parse_args(argv)
    saved_run.check_arguments(parser, args)
    if args.child:
        _run_child(
            args.child, args.sizes_mb[0], args.engines, args.fake_host, args.splits[0]
        )
        return
    if args.replot:
        run = saved_run.load(args.replot)
        _plot(run["rows"], args.plot, run["command"])
        return

    fake_host = _can_fake_hosts()
    hosts = f" and {args.engines} on a fake host" if fake_host else " (one host)"
    print(f"{saved_run.machine()}; {args.engines} engines on the client's host" + hosts)
    rows = []
    for n_splits in args.splits:
        for size_mb in args.sizes_mb:
            for system in args.systems:
                if system == "ipyparallel-builtin" and size_mb > args.builtin_max_mb:
                    continue
                command = [sys.executable, __file__, "--child", system]
                command += ["--sizes-mb", str(size_mb), "--engines", str(args.engines)]
                command += ["--splits", str(n_splits)]
                command += ["--fake-host"] if fake_host else []
                completed = subprocess.run(command, capture_output=True, text=True)
                if completed.returncode != 0:
                    print(completed.stderr, file=sys.stderr)
                    raise SystemExit(f"{system} with X of {size_mb} MB failed")
                rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
                print(
                    f"  done: {system}, {size_mb} MB, KFold({n_splits})",
                    file=sys.stderr,
                )
    print(
        f"\n{'system':<31} {'KFold':>5} {'X MB':>6} {'msgs':>5} {'KB per fit':>10} "
        f"{'data sent MB':>12} {'to other host MB':>16} {'x X':>5} "
        f"{'wall s':>7}"
    )
    print("-" * 105)
    for row in rows:
        ratio = (
            "-"
            if row["other_host"] is None
            else f"{row['other_host'] / (row['x_mb'] * 1e6):.2f}"
        )
        print(
            f"{row['system']:<31} {row.get('splits', 3):>5} {row['x_mb']:>6.0f} "
            f"{row['messages']:>5} "
            f"{row['bytes_per_fit'] / 1e3:>10,.1f} {_mb(row['data_sent']):>12} "
            f"{_mb(row['other_host']):>16} {ratio:>5} "
            f"{row['wall']:>7.1f}"
        )
    if args.save:
        saved_run.save(args.save, rows, argv)
    if args.plot:
        _plot(rows, args.plot, saved_run.command(argv))
    print(
        "\ndata sent: the data the client sends to hosts that do not see its"
        " files (and the row numbers of the folds they cut); to other host: every"
        " byte that went over the other host's network link during fit; x X: that"
        " over the size of X"
    )


if __name__ == "__main__":
    main()
