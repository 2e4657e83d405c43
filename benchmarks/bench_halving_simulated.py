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

Reported per number of engines, the median over ``--seeds`` searches:
the wall time (asynchronous over synchronous), the engines' utilisation
(work over engines x wall time), the fits run, and how often the best
candidate at the top level is the truly best one.

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

    def start(candidate, level):
        for split in range(n_splits):
            duration = rng.lognormal(0.0, sigma) * resources[level] / resources[0]
            engines.submit((candidate, level, split), duration, priority=-level)

    def score():
        return rng.normal(0.0, noise)

    for candidate in range(n_candidates):
        start(candidate, 0)
    promotions = Promotions(n_candidates, len(resources), factor)
    levels = [list(range(n_candidates))]
    means, done = {}, set()
    expected = [n_candidates]
    for _ in resources[1:]:
        expected.append(math.ceil(expected[-1] / factor))
    while True:
        fit = engines.next_end()
        if fit is None:
            break
        candidate, level, _ = fit
        split_scores = scores.setdefault((candidate, level), [])
        split_scores.append(quality[candidate] + score())
        if len(split_scores) < n_splits:
            continue
        mean = float(np.mean(split_scores))
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
    return {
        "wall": engines.now,
        "utilisation": engines.work / (n_engines * engines.now),
        "fits": engines.n_fits,
        "found_best": best == int(np.argmax(quality)),
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--candidates", type=int, default=729)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    resources = _levels(args.candidates, args.factor, 1, args.factor**10)
    print(
        f"{args.candidates} candidates x {args.splits} splits, factor "
        f"{args.factor}, levels' resources {resources}, fits log-normal "
        f"(sigma 0.5) x resource, split noise {args.noise}, {args.seeds} seeds"
    )
    print()
    header = f"{'engines':>7} {'mode':<12} {'wall s':>8} {'x sync':>6}"
    print(f"{header} {'utilisation':>11} {'fits':>6} {'found best':>10}")
    print("-" * 66)
    for n_engines in args.engines:
        rows = {}
        for mode in ("synchronous", "early", "asynchronous"):
            runs = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                quality = rng.normal(0.8, 0.05, args.candidates)
                runs.append(
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
            rows[mode] = {
                "wall": float(np.median([r["wall"] for r in runs])),
                "utilisation": float(np.median([r["utilisation"] for r in runs])),
                "fits": float(np.median([r["fits"] for r in runs])),
                "found_best": sum(r["found_best"] for r in runs),
            }
        for mode, row in rows.items():
            ratio = row["wall"] / rows["synchronous"]["wall"]
            print(
                f"{n_engines:>7} {mode:<12} {row['wall']:>8.1f} {ratio:>6.2f} "
                f"{row['utilisation']:>11.2f} {row['fits']:>6.0f} "
                f"{row['found_best']:>4}/{args.seeds:<5}"
            )


if __name__ == "__main__":
    main()
