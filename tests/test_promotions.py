"""Asynchronous successive halving's promotion rule, on made-up scores."""

import math
import random

import pytest

from sklearn_ipp._promotions import Promotions


def test_a_candidate_moves_up_once_it_ranks_in_the_top_third_of_those_finished():
    promotions = Promotions(9, 3, 3)
    assert promotions.finish(0, 0, 0.5) == []
    assert promotions.finish(1, 0, 0.7) == []
    # Three finished: the best of them, 1, starts at level 1 at once.
    assert promotions.finish(2, 0, 0.6) == [(1, 1)]
    # Four finished: the best is now 3, which moves up too; 1 stays up.
    assert promotions.finish(3, 0, 0.9) == [(3, 1)]
    assert promotions.finish(4, 0, 0.1) == []
    # Six finished: the top two, 3 and 1, are already up.
    assert promotions.finish(5, 0, 0.2) == []
    # Level 1 promotes as soon as a third of its finished candidates allow.
    assert promotions.finish(1, 1, 0.8) == []
    assert promotions.finish(3, 1, 0.85) == []
    assert promotions.started == [list(range(9)), [1, 3], []]
    assert promotions.n_running() == 3 and not promotions.done()


def test_a_complete_level_keeps_as_many_as_synchronous_halving_does():
    promotions = Promotions(4, 2, 3)
    for candidate, score in enumerate([0.1, 0.4, 0.3]):
        promotions.finish(candidate, 0, score)
    # Level 0 is complete with its fourth: ceil(4 / 3) = 2 go up, 1 already did.
    assert promotions.finish(3, 0, 0.35) == [(3, 1)]
    assert promotions.started[1] == [1, 3]
    promotions.finish(1, 1, 0.5)
    assert not promotions.done()
    assert promotions.finish(3, 1, 0.6) == []  # the last level promotes none
    assert promotions.done()


def test_higher_levels_go_first_and_failed_fits_rank_last():
    promotions = Promotions(6, 3, 2)
    assert promotions.finish(0, 0, float("nan")) == []
    assert promotions.finish(1, 0, 0.2) == [(1, 1)]
    promotions.finish(2, 0, 0.1)
    assert promotions.finish(1, 1, 0.3) == []
    # Candidate 3 ranks second of four at level 0; and, with 1 finished at
    # level 1, level 0 is not complete: no early promotion there yet.
    assert promotions.finish(3, 0, 0.15) == [(3, 1)]
    assert promotions.finish(3, 1, 0.4) == [(3, 2)]
    promotions.finish(4, 0, float("nan"))
    # Level 0 complete: ceil(6 / 2) = 3 of its best, then level 1's.
    assert promotions.finish(5, 0, 0.05) == [(2, 1)]
    assert promotions.finish(2, 1, 0.25) == [(1, 2)]
    assert 0 not in promotions.started[1] and 4 not in promotions.started[1]


def test_a_candidate_finishes_a_level_once_and_only_where_it_started():
    promotions = Promotions(3, 2, 3)
    promotions.finish(0, 0, 0.1)
    with pytest.raises(ValueError, match="already finished"):
        promotions.finish(0, 0, 0.2)
    with pytest.raises(ValueError, match="was not started"):
        promotions.finish(1, 1, 0.2)


@pytest.mark.parametrize("seed", range(5))
def test_any_finishing_order_reaches_the_last_level_with_the_best(seed):
    rng = random.Random(seed)
    n_candidates, n_levels, factor = 81, 5, 3
    quality = [rng.random() for _ in range(n_candidates)]
    promotions = Promotions(n_candidates, n_levels, factor)
    running = [(candidate, 0) for candidate in range(n_candidates)]
    while running:
        candidate, level = running.pop(rng.randrange(len(running)))
        running += promotions.finish(candidate, level, quality[candidate])
    assert promotions.done() and promotions.n_running() == 0
    counts = [len(started) for started in promotions.started]
    # At least what synchronous halving keeps at each level.
    synchronous = [n_candidates]
    for _ in range(n_levels - 1):
        synchronous.append(math.ceil(synchronous[-1] / factor))
    assert all(a >= b for a, b in zip(counts, synchronous, strict=True))
    best = max(range(n_candidates), key=quality.__getitem__)
    assert best in promotions.started[-1]
