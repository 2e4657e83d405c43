"""A progress bar of finished fits (tqdm, which ipyparallel already needs)."""

import threading

from tqdm.auto import tqdm

__all__ = ["FitProgress"]

# Without verbose, a bar appears only for a search still running after this
# many seconds, so short searches stay quiet.
QUIET_DELAY_SECONDS = 10.0


class FitProgress:
    """Count finished fits on a tqdm bar, safely from any thread.

    Parameters
    ----------
    verbose : int
        The search's ``verbose``: above 0 the bar shows at once, else only
        once the search has run for ``QUIET_DELAY_SECONDS``.
    description : str, default="fits"
        Text before the bar.
    """

    def __init__(self, verbose, description="fits"):
        self._lock = threading.Lock()
        self._verbose = verbose
        self._description = description
        self._bar = None  # made at the first result, after sklearn's own output

    def update(self, n_done, n_submitted):
        """Show ``n_done`` of ``n_submitted`` fits finished."""
        with self._lock:
            if self._bar is None:
                self._bar = tqdm(
                    total=n_submitted,
                    desc=self._description,
                    unit="fit",
                    delay=0 if self._verbose > 0 else QUIET_DELAY_SECONDS,
                    # On a terminal or in Jupyter; in logs only when asked for.
                    disable=False if self._verbose > 0 else None,
                    leave=self._verbose > 0,
                )
            if self._bar.total != n_submitted:
                self._bar.total = n_submitted
            self._bar.update(n_done - self._bar.n)

    def close(self):
        """Remove or finish the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
