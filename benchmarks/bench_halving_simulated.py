"""Synchronous against asynchronous successive halving on 10 to 1,000 engines.

A simulation, in simulated time, of the engines running one halving search's
fits: each fit takes a log-normal time (median 1 s at the first level,
``sigma`` 0.5) times the level's resource over the first level's, every
split of a candidate separately, each engine one fit at a time, the fits
queued in order. Each candidate has a true quality; a split's score is it
plus noise (``--noise``). Synchronous halving waits for every fit of a level
and promotes the best ``ceil(n / factor)`` by mean score, as scikit-learn's;
asynchronous halving promotes with sklearn_ipp's own rule
(``sklearn_ipp._promotions.Promotions``), the fits of promoted candidates
going before the waiting ones of lower levels, the higher levels first.

Every mode runs on the same draws: a fit takes the same time and gets the
same score in each. The modes: ``synchronous``; ``early``, which promotes a
candidate as soon as it is sure to be in its level's top ``ceil(n /
factor)`` whatever the scores still to come (synchronous halving's results,
exactly); and ``asynchronous``.

Reported per number of engines, over ``--seeds`` searches: the wall time and
the time the first candidate finished the last level (medians, and the
median of each seed's ratio to synchronous halving's), the engines'
utilisation (work over engines x wall time), the fits run, how often the
candidate the search ends with is the truly best one, and the mean regret
(the best quality less the quality of the candidate chosen). The ``bound``
row is the chain of synchronous halving's best candidate: its fits at each
level, each level's starting once its splits below have all ended, over
synchronous halving's wall time; no halving that ends with that candidate
can end sooner.

    python benchmarks/bench_halving_simulated.py
"""

import argparse
import heapq
import math

import numpy as np

from sklearn_ipp._promotions import Promotions


def _levels(n_candidates, factor, min_resources, max_resources):
    n_required = 1 + math.floor(math.log(n_candidates, factor))
    n_possible = 1 + math.floor(math.log(max_resources // min_resources, factor))
    n_levels = min(n_required, n_possible)
    return [
        min(min_resources * factor**level, max_resources) for level in range(n_levels)
    ]


class _Engines:
    """Engines taking queued fits in order; the simulated clock."""

    def __init__(self, n_engines):
        self.free = n_engines
        self.now = 0.0
        self.running = []  # heap of (end, sequence, fit)
        self.queue = []  # heap of (priority, sequence, fit)
        self.work = 0.0
        self.n_fits = 0
        self._sequence = 0

    def submit(self, fit, duration, priority=0):
        self._sequence += 1
        heapq.heappush(self.queue, (priority, self._sequence, (fit, duration)))

    def next_end(self):
        """Start what can start; return the next fit to end, or None."""
        while self.free and self.queue:
            _, sequence, (fit, duration) = heapq.heappop(self.queue)
            self.free -= 1
            self.work += duration
            self.n_fits += 1
            heapq.heappush(self.running, (self.now + duration, sequence, fit))
        if not self.running:
            return None
        self.now, _, fit = heapq.heappop(self.running)
        self.free += 1
        return fit


def _simulate(mode, n_engines, quality, resources, factor, rng, noise, n_splits, sigma):
    n_candidates = len(quality)
    engines = _Engines(n_engines)
    scores = {}  # (candidate, level) -> [split scores]

    # The same fit takes the same time and gets the same score in every
    # mode: the modes are compared on the same draws, not on luck.
    shape = (n_candidates, len(resources), n_splits)
    durations = rng.lognormal(0.0, sigma, shape)
    noises = rng.normal(0.0, noise, shape)

    def start(candidate, level):
        for split in range(n_splits):
            scale = resources[level] / resources[0]
            duration = durations[candidate, level, split] * scale
            engines.submit((candidate, level, split), duration, priority=-level)

    for candidate in range(n_candidates):
        start(candidate, 0)
    promotions = Promotions(n_candidates, len(resources), factor)
    levels = [list(range(n_candidates))]
    means, done = {}, set()
    first_top = None  # when a first candidate finished the last level
    expected = [n_candidates]
    for _ in resources[1:]:
        expected.append(math.ceil(expected[-1] / factor))
    while True:
        fit = engines.next_end()
        if fit is None:
            break
        candidate, level, split = fit
        split_scores = scores.setdefault((candidate, level), [])
        split_scores.append(quality[candidate] + noises[candidate, level, split])
        if len(split_scores) < n_splits:
            continue
        mean = float(np.mean(split_scores))
        if level == len(resources) - 1 and first_top is None:
            first_top = engines.now
        if mode == "early":
            means.setdefault(level, {})[candidate] = mean
            for promoted in _certain(means[level], expected[level], factor):
                if (promoted, level) not in done and level + 1 < len(resources):
                    done.add((promoted, level))
                    start(promoted, level + 1)
        elif mode == "asynchronous":
            for promoted, next_level in promotions.finish(candidate, level, mean):
                start(promoted, next_level)
        else:
            finished = [
                c for c in levels[level] if len(scores.get((c, level), ())) == n_splits
            ]
            if len(finished) == len(levels[level]) and level + 1 < len(resources):
                n_kept = math.ceil(len(finished) / factor)
                means = {c: np.mean(scores[c, level]) for c in finished}
                kept = sorted(finished, key=lambda c: -means[c])[:n_kept]
                levels.append(kept)
                for promoted in kept:
                    start(promoted, level + 1)
    top = max(scores, key=lambda key: key[1])[1]
    at_top = [c for (c, level) in scores if level == top]
    best = max(at_top, key=lambda c: np.mean(scores[c, top]))
    # Whatever the promotions, the search ends no sooner than the candidate
    # it ends with has run its fits level after level: each level's fits
    # start once its previous level's splits have all ended.
    chain = sum(
        durations[best, level].max() * resources[level] / resources[0]
        for level in range(top + 1)
    )
    return {
        "chain": chain,
        "wall": engines.now,
        "first_top": first_top,
        "utilisation": engines.work / (n_engines * engines.now),
        "fits": engines.n_fits,
        "found_best": best == int(np.argmax(quality)),
        "regret": float(np.max(quality) - quality[best]),
    }


def _certain(means, n_level, factor):
    """Finished candidates sure to be in the top ceil(n / factor) of their level.

    Sure whatever the scores of those not finished, and whatever the order
    of ties: fewer better or tied candidates than places left.
    """
    n_kept = math.ceil(n_level / factor)
    n_unfinished = n_level - len(means)
    values = np.array(list(means.values()))
    return [
        candidate
        for candidate, mean in means.items()
        if int(np.sum(values >= mean)) - 1 + n_unfinished < n_kept
    ]


def _paired_ratio(runs, reference, key):
    """Return the median over the seeds of each seed's ratio, on the same draws."""
    return float(
        np.median(
            [run[key] / other[key] for run, other in zip(runs, reference, strict=True)]
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--candidates", type=int, default=729)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    resources = _levels(args.candidates, args.factor, 1, args.factor**10)
    print(
        f"{args.candidates} candidates x {args.splits} splits, factor "
        f"{args.factor}, levels' resources {resources}, fits log-normal "
        f"(sigma {args.sigma}) x resource, split noise {args.noise}, {args.seeds} seeds"
    )
    print()
    print(
        f"{'engines':>7} {'mode':<12} {'wall s':>7} {'x sync':>6} "
        f"{'1st top s':>9} {'x sync':>6} {'util.':>5} {'fits':>5} "
        f"{'found best':>10} {'regret':>6}"
    )
    print("-" * 86)
    modes = ("synchronous", "early", "asynchronous")
    for n_engines in args.engines:
        runs = {mode: [] for mode in modes}
        for seed in range(args.seeds):
            for mode in modes:
                # The same seed, so the same candidates, times and noise.
                rng = np.random.default_rng(seed)
                quality = rng.normal(0.8, 0.05, args.candidates)
                runs[mode].append(
                    _simulate(
                        mode,
                        n_engines,
                        quality,
                        resources,
                        args.factor,
                        rng,
                        args.noise,
                        args.splits,
                        args.sigma,
                    )
                )
        for mode in modes:
            ours, sync = runs[mode], runs["synchronous"]
            wall, first_top, utilisation, fits = (
                float(np.median([run[key] for run in ours]))
                for key in ("wall", "first_top", "utilisation", "fits")
            )
            wall_ratio = _paired_ratio(ours, sync, "wall")
            first_top_ratio = _paired_ratio(ours, sync, "first_top")
            found = sum(run["found_best"] for run in ours)
            regret = np.mean([run["regret"] for run in ours])
            if mode == "synchronous":
                bound = np.median([run["chain"] / run["wall"] for run in ours])
            print(
                f"{n_engines:>7} {mode:<12} {wall:>7.0f} {wall_ratio:>6.2f} "
                f"{first_top:>9.0f} {first_top_ratio:>6.2f} {utilisation:>5.2f} "
                f"{fits:>5.0f} {found:>4}/{args.seeds:<5} {regret:>6.4f}"
            )
        print(
            f"{n_engines:>7} {'bound':<12} {'':>7} {bound:>6.2f}   (the chain "
            "of fits of synchronous halving's best candidate)"
        )


if __name__ == "__main__":
    main()
