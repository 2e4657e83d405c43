"""Run a grid search on engines started by ipcluster's Slurm launcher.

A one-node Slurm cluster is made on this machine, as root: munged,
slurmctld and slurmd with their configuration, state and sockets in a
temporary directory, so that nothing of the machine's own configuration is
used or changed. The launcher submits the engines as a batch job with
``sbatch`` and stops them with ``scancel``, as it would on a real cluster.
Not collected by pytest: it needs root and Slurm (Debian and Ubuntu:
``apt-get install slurm-wlm munge``)::

    sudo python tests/launchers/slurm_launcher_check.py

It prints the engines' Slurm job, whether the search equals scikit-learn's
and whether the job is gone after the cluster stopped, and exits non-zero
if any of these fails.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import ipyparallel as ipp
from _digits_search import search_equals_sklearn

N_ENGINES = 2
# Not Slurm's default ports, so that a Slurm already on the machine is left
# alone.
CONTROLLER_PORT, NODE_PORT = 16817, 16818


def _slurm_conf(directory, hostname):
    return textwrap.dedent(f"""\
        ClusterName=sklearnipp
        SlurmctldHost={hostname}
        SlurmUser=root
        SlurmdUser=root
        AuthType=auth/munge
        AuthInfo=socket={directory}/munge.socket
        CredType=cred/munge
        SlurmctldPort={CONTROLLER_PORT}
        SlurmdPort={NODE_PORT}
        StateSaveLocation={directory}/state
        SlurmdSpoolDir={directory}/spool
        SlurmctldPidFile={directory}/slurmctld.pid
        SlurmdPidFile={directory}/slurmd.pid
        SlurmctldLogFile={directory}/slurmctld.log
        SlurmdLogFile={directory}/slurmd.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        ReturnToService=2
        MpiDefault=none
        JobAcctGatherType=jobacct_gather/none
        AccountingStorageType=accounting_storage/none
        NodeName={hostname} CPUs={os.cpu_count()} State=UNKNOWN
        PartitionName=debug Nodes={hostname} Default=YES MaxTime=INFINITE State=UP
    """)


def start_slurm(directory, daemons):
    """Start munged, slurmctld and slurmd, adding each process to ``daemons``.

    Those that started are in ``daemons`` even if a later one fails, for
    ``stop_slurm`` to stop.
    """
    hostname = socket.gethostname()
    for name in ("state", "spool"):
        os.mkdir(os.path.join(directory, name))
    with open(os.path.join(directory, "munge.key"), "wb") as f:
        f.write(secrets.token_bytes(1024))
    os.chmod(os.path.join(directory, "munge.key"), 0o600)
    with open(os.path.join(directory, "slurm.conf"), "w") as f:
        f.write(_slurm_conf(directory, hostname))
    # Every Slurm command of this process and its children (the launcher's
    # sbatch and scancel) reads this configuration.
    os.environ["SLURM_CONF"] = os.path.join(directory, "slurm.conf")
    # The daemons' own output goes to a log in the directory, shown on failure.
    with open(os.path.join(directory, "daemons.log"), "wb") as log:
        munged = [
            "munged",
            "--foreground",
            "--force",
            f"--socket={directory}/munge.socket",
            f"--key-file={directory}/munge.key",
            f"--pid-file={directory}/munged.pid",
            f"--log-file={directory}/munged.log",
            f"--seed-file={directory}/munged.seed",
        ]
        daemons.append(subprocess.Popen(munged, stdout=log, stderr=log))
        _wait_for(lambda: os.path.exists(f"{directory}/munge.socket"), "munged")
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([daemon, "-D"], stdout=log, stderr=log))
    _wait_for(lambda: _node_state() == "idle", "the Slurm node to be idle")


def _node_state():
    completed = subprocess.run(
        ["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True
    )
    return completed.stdout.strip() if completed.returncode == 0 else None


def _jobs():
    completed = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j %T"],
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.strip()


def _wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out after {timeout} s waiting for {what}.")
        time.sleep(0.5)


def _slurm_job_id():
    import os

    return os.environ.get("SLURM_JOB_ID")


def stop_slurm(daemons):
    """Stop the daemons that started, the last started first."""
    for daemon in reversed(daemons):
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def main():
    directory = tempfile.mkdtemp(prefix="sklearn-ipp-slurm-", dir="/var/tmp")
    ipython_dir = tempfile.mkdtemp(prefix="sklearn-ipp-slurm-ipython-")
    os.environ["IPYTHONDIR"] = ipython_dir
    initial_directory = os.getcwd()
    daemons = []
    ok = False
    try:
        start_slurm(directory, daemons)
        # The launcher writes its batch script into the working directory.
        os.chdir(directory)
        cluster = ipp.Cluster(
            engines="slurm",
            n=N_ENGINES,
            profile_dir=os.path.join(ipython_dir, "profile_slurm"),
            log_level=40,
        )
        start = time.perf_counter()
        client = cluster.start_and_connect_sync()
        try:
            client.wait_for_engines(N_ENGINES, timeout=120)
            seconds = time.perf_counter() - start
            print(f"{N_ENGINES} engines started by Slurm in {seconds:.1f} s")
            print(f"Slurm's queue: {_jobs()}")
            jobs = client[:].apply_sync(_slurm_job_id)
            print(f"engines' Slurm job: {jobs}")
            equal = search_equals_sklearn(client)
        finally:
            cluster.stop_cluster_sync()
        # scancel ends the job; the daemons take a moment to record it.
        _wait_for(lambda: _jobs() == "", "the engines' job to end")
        print("the engines' job is gone from Slurm's queue")
        ok = equal and len(set(jobs)) == 1 and None not in jobs
    except BaseException:
        log = os.path.join(directory, "daemons.log")
        if os.path.exists(log):
            with open(log) as f:
                print(f"The Slurm daemons said:\n{f.read()}", file=sys.stderr)
        raise
    finally:
        os.chdir(initial_directory)
        stop_slurm(daemons)
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(ipython_dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
