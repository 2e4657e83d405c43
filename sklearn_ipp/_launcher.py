"""Start local engines in the session of the process that starts them.

ipyparallel's local launcher starts every engine in a session of its own
(``start_new_session=True``), so that a Ctrl-C in the terminal does not reach
the engines. On Linux, each session is also a scheduling group of its own
(the kernel's *autogroup*, on by default in most distributions): the CPU time
is shared fairly between the groups first, then between the threads of each.
An engine that runs more threads than its share of the CPUs (CatBoost's
default of one thread per CPU of the host, which the engine cannot lower
without changing its results) then waits longer for its own descheduled
threads than the same threads would in processes of one group, as loky's
workers are: two such fits side by side on 2 CPUs took 1.26 to 1.28 times as
long in a session each as in one session (``benchmarks/bench_sessions.py``).

:class:`SameSessionEngineSetLauncher` starts each engine in a process group
of its own, which is enough to keep the terminal's signals from it, but in the
session, and so the scheduling group, of the process that starts it.
sklearn_ipp's own local cluster and its tests start engines with it; a user
can too, with ``ipcluster start --engines=sklearn_ipp.SameSessionEngineSetLauncher``
or ``ipyparallel.Cluster(engine_launcher_class=...)``.
"""

import logging
import os
import subprocess
import sys

import psutil
from ipyparallel.cluster.launcher import (
    LocalEngineLauncher,
    LocalEngineSetLauncher,
    ProcessStateError,
)

# Popen's ``process_group`` (Python 3.11) puts the child in a group of its own
# without running Python code between fork and exec, as ``preexec_fn`` would
# in a client with threads. Elsewhere (Python 3.10, Windows), engines start as
# ipyparallel starts them.
_CAN_GROUP = sys.version_info >= (3, 11) and os.name == "posix"


class SameSessionEngineLauncher(LocalEngineLauncher):
    """Launch one engine in this process's session, in a process group of its own.

    The same as ipyparallel's ``LocalEngineLauncher`` (its output in the
    profile's log directory, its stdin ``/dev/null``, the same stop and
    signal), except for the session.
    """

    def start(self):
        """Start the engine process."""
        if not _CAN_GROUP:
            return super().start()
        # Mirrors ipyparallel's LocalProcessLauncher.start (the same in 8.6
        # and 9.2), except start_new_session.
        self.log.debug("Starting %s: %r", self.__class__.__name__, self.args)
        if self.state != "before":
            raise ProcessStateError(
                f"The process was already started and has state: {self.state}"
            )
        env = os.environ.copy()
        env.update(self.get_env())
        with open(self.output_file, "ab") as output, open(os.devnull, "rb") as stdin:
            process = self._popen_process = subprocess.Popen(
                self.args,
                stdout=output.fileno(),
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=env,
                cwd=self.work_dir,
                process_group=0,
            )
        self.pid = process.pid
        self.process = psutil.Process(process.pid)
        self.notify_start(self.process.pid)
        self._start_waiting()
        if 1 <= self.log.getEffectiveLevel() <= logging.DEBUG:
            self._start_streaming()


class SameSessionEngineSetLauncher(LocalEngineSetLauncher):
    """Launch a set of local engines in this process's session.

    Each engine runs in a process group of its own, so a Ctrl-C in the
    terminal does not reach it, but in the session of the process that starts
    it, so that on Linux the kernel schedules the engines' threads together,
    as it schedules loky's workers, rather than as one group per engine.
    Where Popen cannot start a process group (Python 3.10, Windows), engines
    start as with ipyparallel's ``LocalEngineSetLauncher``.

    Examples
    --------
    From a shell::

        ipcluster start -n 4 --engines=sklearn_ipp.SameSessionEngineSetLauncher

    From Python::

        import ipyparallel as ipp
        from sklearn_ipp import SameSessionEngineSetLauncher

        cluster = ipp.Cluster(n=4, engine_launcher_class=SameSessionEngineSetLauncher)
    """

    launcher_class = SameSessionEngineLauncher
    # What ipyparallel writes in the cluster file for this class, read back
    # by ``Cluster.from_file``: an import path that works whether or not the
    # package is installed with its metadata.
    entrypoint_name = "sklearn_ipp.SameSessionEngineSetLauncher"
