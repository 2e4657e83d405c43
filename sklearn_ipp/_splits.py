"""The splits some fits ran on, given again as a cross-validator gives them.

A search that evaluates its candidates again from the checkpoint (a time
budget's end, asynchronous halving's levels, proposals) must hand
scikit-learn the very splits the fits ran on: a splitter that shuffles
without a ``random_state`` would give others.
"""

__all__ = ["Splits"]


class Splits:
    """A cross-validator that gives the ``(train, test)`` pairs it was made with.

    Parameters
    ----------
    splits : list of (array, array)
        The train and test indices of each split.
    """

    def __init__(self, splits):
        self._splits = splits

    def split(self, X=None, y=None, groups=None, **params):
        """Yield the splits."""
        return iter(self._splits)

    def get_n_splits(self, X=None, y=None, groups=None, **params):
        """Return the number of splits."""
        return len(self._splits)
