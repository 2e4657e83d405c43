"""Asynchronous successive halving's promotions, with k-fold scores.

Synchronous successive halving waits for every candidate of a round before
it promotes the best ``1/factor`` of them: the last fits of each round keep
the other engines idle. Asynchronous successive halving (ASHA: Li et al., "A
System for Massively Parallel Hyperparameter Tuning", MLSys 2020) promotes a
candidate as soon as it ranks in the top ``1/factor`` of the candidates
finished at its level, so that an engine always has a fit to run.

Here a candidate is finished at a level once all its splits are: its score
is its mean test score over them, as scikit-learn's halving ranks it. Once
every candidate that reached a level is finished there, the level promotes
the best ``ceil(n / factor)`` of them, as scikit-learn's rounds do, besides
those it promoted early; so the search reaches the last level as the
synchronous one does, and a candidate promoted early stays promoted.
"""

import math

__all__ = ["Promotions"]


class Promotions:
    """Which candidates start at which level, as their scores come.

    Not thread-safe: its owner serialises the calls.

    Parameters
    ----------
    n_candidates : int
        Candidates of the first level, numbered from 0.
    n_levels : int
        Levels (scikit-learn's iterations); the last promotes none.
    factor : float
        Successive halving's ``factor``.
    """

    def __init__(self, n_candidates, n_levels, factor):
        self.n_levels = n_levels
        self.factor = factor
        # Per level: the candidates started there, in the order they were,
        # and the scores of those finished.
        self.started = [list(range(n_candidates))] + [[] for _ in range(n_levels - 1)]
        self.scores = [{} for _ in range(n_levels)]
        self._promoted = [set() for _ in range(n_levels)]
        self._order = [{} for _ in range(n_levels)]  # candidate -> finish order

    def finish(self, candidate, level, score):
        """Record a candidate's score at a level; return the promotions it makes.

        Returns
        -------
        promotions : list of (int, int)
            ``(candidate, level)`` to start now, the higher levels first.
        """
        if candidate in self.scores[level]:
            raise ValueError(f"candidate {candidate} already finished level {level}")
        if candidate not in self._promoted_to(level):
            raise ValueError(f"candidate {candidate} was not started at level {level}")
        self._order[level][candidate] = len(self._order[level])
        self.scores[level][candidate] = score
        return self._promote()

    def done(self):
        """Whether every level is complete: nothing runs, nothing will start."""
        return self.complete(self.n_levels - 1)

    def n_running(self):
        """Candidates started at a level and not finished there."""
        return sum(
            len(started) - len(scores)
            for started, scores in zip(self.started, self.scores, strict=True)
        )

    def _promoted_to(self, level):
        return set(self.started[level])

    def complete(self, level):
        """Whether no candidate runs at ``level`` or will start there."""
        if len(self.scores[level]) < len(self.started[level]):
            return False
        return level == 0 or self.complete(level - 1)

    def _ranked(self, level):
        """Finished candidates of a level, best first; failed fits (NaN) last."""
        scores, order = self.scores[level], self._order[level]

        def key(candidate):
            score = scores[candidate]
            failed = score is None or math.isnan(score)
            return (failed, 0.0 if failed else -score, order[candidate])

        return sorted(scores, key=key)

    def _promote(self):
        # The lower levels first: a level that has just completed makes its
        # last promotions before the level above is asked whether it is.
        promotions = []
        for level in range(self.n_levels - 1):
            n_finished = len(self.scores[level])
            if self.complete(level):
                n_kept = math.ceil(n_finished / self.factor)
            else:
                n_kept = math.floor(n_finished / self.factor)
            for candidate in self._ranked(level)[:n_kept]:
                if candidate not in self._promoted[level]:
                    self._promoted[level].add(candidate)
                    self.started[level + 1].append(candidate)
                    promotions.append((candidate, level + 1))
        return sorted(promotions, key=lambda promotion: -promotion[1])
