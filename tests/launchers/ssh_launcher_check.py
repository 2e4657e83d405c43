"""Run a grid search on engines started by ipcluster's SSH launcher.

The remote host is faked on this machine, as root: a network namespace
joined by a veth pair, with its own hostname and an empty private ``/tmp``
and ``/dev/shm``, running its own sshd with key-based login. The launcher
copies the connection file there with scp and starts the engines with ssh,
as it would on another machine; the engines do not see the client's store,
so sklearn_ipp sends them the data. Not collected by pytest: it needs root,
sshd and a few seconds more than the test suite should take::

    sudo python tests/launchers/ssh_launcher_check.py

It prints where the engines run and whether the search equals
scikit-learn's, and exits non-zero if it does not.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import ipyparallel as ipp
from _digits_search import search_equals_sklearn
from traitlets.config import Config

import sklearn_ipp

NETNS = "sklearn-ipp-ssh"
HOST_ADDRESS, REMOTE_ADDRESS = "10.77.0.1", "10.77.0.2"
REMOTE_HOSTNAME = "sshhost"
N_ENGINES = 2


def _run(*command):
    subprocess.run(command, check=True)


def start_fake_ssh_host(keys):
    """Start sshd on a fake host; return its process."""
    for name in ("client", "host"):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{keys}/{name}")
    shutil.copy(f"{keys}/client.pub", f"{keys}/authorized_keys")
    with open(f"{keys}/sshd_config", "w") as f:
        f.write(
            textwrap.dedent(f"""\
                ListenAddress {REMOTE_ADDRESS}
                HostKey {keys}/host
                PermitRootLogin yes
                AuthorizedKeysFile {keys}/authorized_keys
                StrictModes no
                UsePAM no
                PasswordAuthentication no
                PidFile {keys}/sshd.pid
                Subsystem sftp /usr/lib/openssh/sftp-server
                """)
        )
    _run("ip", "netns", "add", NETNS)
    _run("ip", "link", "add", "vsship0", "type", "veth", "peer", "name", "vsship1")
    _run("ip", "link", "set", "vsship1", "netns", NETNS)
    _run("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", "vsship0")
    _run("ip", "link", "set", "vsship0", "up")
    in_netns = ["ip", "netns", "exec", NETNS]
    _run(*in_netns, "ip", "addr", "add", f"{REMOTE_ADDRESS}/24", "dev", "vsship1")
    _run(*in_netns, "ip", "link", "set", "vsship1", "up")
    _run(*in_netns, "ip", "link", "set", "lo", "up")
    os.makedirs("/run/sshd", exist_ok=True)
    # The keys live outside /tmp, which the fake host replaces by its own.
    script = (
        f"hostname {REMOTE_HOSTNAME} && mount -t tmpfs tmpfs /tmp && "
        f"mount -t tmpfs tmpfs /dev/shm && exec /usr/sbin/sshd -D -e "
        f"-f {keys}/sshd_config"
    )
    unshare = ["unshare", "--uts", "--mount", "--propagation", "private"]
    sshd = subprocess.Popen(
        [*in_netns, *unshare, "bash", "-c", script], stderr=subprocess.DEVNULL
    )
    time.sleep(1.0)
    return sshd


def stop_fake_ssh_host(sshd):
    """Stop sshd, if it started, and remove the fake host's network."""
    if sshd is not None:
        sshd.terminate()
        sshd.wait(10)
    subprocess.run(["ip", "netns", "delete", NETNS], check=False)
    subprocess.run(["ip", "link", "delete", "vsship0"], check=False)


def main():
    keys = tempfile.mkdtemp(prefix="sklearn-ipp-ssh-", dir="/var/tmp")
    ipython_dir = tempfile.mkdtemp(prefix="sklearn-ipp-ssh-ipython-")
    os.environ["IPYTHONDIR"] = ipython_dir
    ssh_options = ["-i", f"{keys}/client", "-o", "StrictHostKeyChecking=no"]
    ssh_options += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    config = Config()
    config.SSHEngineSetLauncher.engines = {f"root@{REMOTE_ADDRESS}": N_ENGINES}
    config.SSHEngineSetLauncher.remote_python = sys.executable
    config.SSHLauncher.ssh_args = ssh_options
    config.SSHLauncher.scp_args = ssh_options
    cluster = ipp.Cluster(
        config=config,
        engine_launcher_class="ssh",
        controller_ip="*",
        controller_location=HOST_ADDRESS,
        profile_dir=os.path.join(ipython_dir, "profile_ssh"),
        log_level=40,
    )
    sshd = None
    try:
        sshd = start_fake_ssh_host(keys)
        start = time.perf_counter()
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(N_ENGINES, timeout=120)
        seconds = time.perf_counter() - start
        print(f"{N_ENGINES} engines started over SSH in {seconds:.1f} s")
        hosts = {
            engine_id: facts["hostname"]
            for engine_id, facts in sklearn_ipp.engine_facts(client).items()
        }
        print(f"engines' hosts: {hosts}; the client's: {socket.gethostname()}")
        equal = search_equals_sklearn(client)
        ok = equal and set(hosts.values()) == {REMOTE_HOSTNAME}
    finally:
        cluster.stop_cluster_sync()
        stop_fake_ssh_host(sshd)
        shutil.rmtree(keys, ignore_errors=True)
        shutil.rmtree(ipython_dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
