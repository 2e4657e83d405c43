"""Notice a controller that no longer answers while tasks wait on it.

Every message and reply goes through the ipyparallel controller. When it dies
(or its host becomes unreachable), the client is not told: replies simply stop
coming, and a call would wait forever for tasks that can no longer end. While
tasks run and nothing has come back for a while, the controller is asked for
its queue status (a request it answers at once however busy the engines are);
no answer within ``CONTROLLER_TIMEOUT`` seconds ends the call with
``ControllerLostError``.
"""

import logging
import threading
import time

from ._exceptions import ControllerLostError

__all__ = ["CONTROLLER_TIMEOUT", "QUIET_SECONDS", "ControllerWatch"]

logger = logging.getLogger("sklearn_ipp")

# Seconds without a reply, while tasks run, before the controller is asked.
QUIET_SECONDS = 5.0
# Seconds the controller has to answer.
CONTROLLER_TIMEOUT = 10.0


class ControllerWatch:
    """Ask the controller whether it is there when replies stop coming.

    Parameters
    ----------
    connection : ClusterConnection
        Whose controller is watched; its ``source`` names the cluster.
    kept_results_note : str
        Added to the error, to say what is kept.
    """

    def __init__(self, connection, kept_results_note=""):
        self._connection = connection
        self._note = kept_results_note
        self._last_heard = time.monotonic()
        self._asked = None  # (when, threading.Event set by the answer)

    def heard(self):
        """Note that something came back from the cluster."""
        self._last_heard = time.monotonic()
        self._asked = None

    def check(self, busy, n_done, n_submitted):
        """Raise ControllerLostError if the controller did not answer in time.

        ``busy()`` says whether tasks wait or run: only then is the
        controller asked anything.
        """
        now = time.monotonic()
        if self._asked is None and not busy():
            # Nothing runs: time between calls is not silence.
            self._last_heard = now
            return
        if self._asked is not None:
            when, answered = self._asked
            if answered.is_set():
                self.heard()
            elif now - when > CONTROLLER_TIMEOUT:
                raise self._error(now - self._last_heard, n_done, n_submitted)
            return
        if now - self._last_heard < QUIET_SECONDS:
            return
        answered = threading.Event()
        self._asked = (now, answered)

        def ask():
            # Blocks for as long as the controller does not answer: in a
            # thread of its own, which a lost controller leaves waiting.
            try:
                self._connection.client.queue_status()
            except Exception as exc:  # an answer, if an odd one
                logger.debug("The controller answered with an error: %s", exc)
            answered.set()

        threading.Thread(
            target=ask, name="sklearn_ipp-controller-check", daemon=True
        ).start()

    def _error(self, silent_seconds, n_done, n_submitted):
        client = self._connection.client
        address = getattr(client, "_config", {}).get("registration", "")
        where = f" at {address}" if address else ""
        source = self._connection.source
        named = "" if source.startswith("given") else f" ({source})"
        return ControllerLostError(
            f"Lost the ipyparallel controller of the cluster{named}{where}: "
            f"nothing came back for "
            f"{silent_seconds:.0f} s, and it did not answer a status request "
            f"within {CONTROLLER_TIMEOUT:.0f} s. {n_done} of {n_submitted} tasks "
            "had finished. The controller stopped, or its host cannot be "
            "reached: restart the cluster (`ipcluster start`, or "
            "client=None for a local one), then run the call again." + self._note,
            n_done=n_done,
            n_submitted=n_submitted,
        )
