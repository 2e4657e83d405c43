"""A randomized search's ``param_distributions`` as Optuna's search space.

``OptunaSpace`` reads the ``param_distributions`` that scikit-learn's
``RandomizedSearchCV`` takes, unchanged, and turns each into the Optuna
distribution it samples from: a list into a categorical choice, a
``scipy.stats`` distribution with an Optuna counterpart (``uniform``,
``loguniform``, ``reciprocal``, ``randint``) into a float or int range.
Optuna's own distributions are taken as they are. A list of dicts (a
conditional space) becomes one more categorical choice, of the dict, whose
parameters are then suggested.

``suggest(trial)`` asks an Optuna trial for a candidate through Optuna's
public ``suggest_*`` methods and returns the parameters as the estimator
takes them (a list's value, not its position).
"""

import numpy as np

__all__ = ["SUBSPACE", "OptunaSpace", "import_optuna"]

# The name of the choice of a dict, in a list of dicts, among a trial's params.
SUBSPACE = "param_distributions"

# What a value of Optuna's CategoricalDistribution may be, for storages.
_STORABLE = (type(None), bool, int, float, str)

_INSTALL = (
    'it needs Optuna: install it with `pip install "sklearn_ipp[optuna]"` '
    "(or `pip install optuna`)."
)


def import_optuna(what="IPyParallelOptunaSearchCV"):
    """Return the ``optuna`` module; say how to install it if missing."""
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(
            f"{what} proposes candidates with Optuna: {_INSTALL}"
        ) from exc
    return optuna


class _Choice:
    """A list of values, sampled by their position when Optuna cannot store them."""

    def __init__(self, values, by_position):
        self.values = values
        self.by_position = by_position

    def value(self, suggested):
        return self.values[suggested] if self.by_position else suggested


class OptunaSpace:
    """``param_distributions`` as Optuna distributions, and candidates from trials.

    Parameters
    ----------
    param_distributions : dict or list of dicts
        As ``RandomizedSearchCV`` takes them.

    Raises
    ------
    TypeError, ValueError
        For a distribution with no Optuna counterpart, naming the parameter
        and what to use instead.
    """

    def __init__(self, param_distributions):
        optuna = import_optuna()
        self._optuna = optuna
        if isinstance(param_distributions, dict):
            spaces, self.conditional = [param_distributions], False
        elif isinstance(param_distributions, (list, tuple)) and all(
            isinstance(space, dict) for space in param_distributions
        ):
            spaces, self.conditional = list(param_distributions), True
            if not spaces:
                raise ValueError(
                    "param_distributions is an empty list: give a dict of "
                    "distributions, or a non-empty list of dicts."
                )
        else:
            raise TypeError(
                "param_distributions must be a dict or a list of dicts, as in "
                f"RandomizedSearchCV; got {type(param_distributions).__name__}."
            )
        # [(optuna name, parameter name, distribution, _Choice or None)] per dict
        self._spaces = []
        converted = []
        for index, space in enumerate(spaces):
            label = (
                f"param_distributions[{index}]"
                if self.conditional
                else "param_distributions"
            )
            converted.append(
                {
                    name: self._convert(f"{label}[{name!r}]", value)
                    for name, value in space.items()
                }
            )
        # A parameter of several dicts keeps its name where its distribution
        # is the same in all (their trials then inform each other), and is
        # named after its dict otherwise: an Optuna study gives one name one
        # distribution.
        distributions_of = {}
        for space in converted:
            for name, (distribution, _) in space.items():
                distributions_of.setdefault(name, []).append(distribution)
        for index, space in enumerate(converted):
            entries = []
            for name, (distribution, choice) in space.items():
                shared = all(d == distribution for d in distributions_of[name])
                optuna_name = name if shared else f"{name}[{index}]"
                if optuna_name == SUBSPACE and self.conditional:
                    optuna_name = f"{name}[{index}]"
                entries.append((optuna_name, name, distribution, choice))
            self._spaces.append(entries)

    def _convert(self, label, value):
        """Return ``(optuna distribution, _Choice or None)`` for one parameter."""
        distributions = self._optuna.distributions
        if isinstance(value, distributions.BaseDistribution):
            return value, None
        if isinstance(value, (list, tuple, np.ndarray)):
            values = list(value)
            if not values:
                raise ValueError(f"{label} is an empty list: give at least one value.")
            by_position = not _storable_and_distinct(values)
            choices = tuple(range(len(values))) if by_position else tuple(values)
            return (
                distributions.CategoricalDistribution(choices),
                _Choice(values, by_position),
            )
        if hasattr(value, "rvs"):
            return _from_scipy(label, value, distributions), None
        raise TypeError(
            f"{label} is {value!r}: give a list of values, a "
            "scipy.stats distribution (uniform, loguniform, randint) or an "
            "optuna.distributions object."
        )

    @property
    def n_candidates(self):
        """The number of distinct candidates, or None when a range is continuous."""
        total = 0
        for entries in self._spaces:
            size = 1
            for _, _, distribution, _ in entries:
                n = _size(distribution, self._optuna.distributions)
                if n is None:
                    return None
                size *= n
            total += size
        return total

    def suggest(self, trial):
        """Ask ``trial`` for a candidate; return the estimator's parameters."""
        index = 0
        if self.conditional:
            index = trial.suggest_categorical(SUBSPACE, list(range(len(self._spaces))))
        params = {}
        for optuna_name, name, distribution, choice in self._spaces[index]:
            suggested = _suggest(trial, optuna_name, distribution, self._optuna)
            params[name] = suggested if choice is None else choice.value(suggested)
        return params


def _storable_and_distinct(values):
    """Whether Optuna can store ``values`` as its choices, and tell them apart."""
    if not all(type(v) in _STORABLE for v in values):
        return False
    # Optuna finds a choice by ==: 1, 1.0 and True are one choice to it.
    seen = []
    for value in values:
        if any(value == other for other in seen):
            return False
        seen.append(value)
    return True


def _from_scipy(label, frozen, distributions):
    """Return the Optuna distribution of a frozen ``scipy.stats`` distribution."""
    dist = getattr(frozen, "dist", None)
    name = getattr(dist, "name", type(frozen).__name__)
    instead = (
        f"{label} is scipy.stats.{name}, which has no Optuna counterpart: use "
        "scipy.stats.uniform, loguniform or randint, a list of values, or an "
        "optuna.distributions object (FloatDistribution(low, high, log=True), "
        "IntDistribution(low, high))."
    )
    try:
        args, kwds = frozen.args, frozen.kwds
        shapes = dist.shapes.split(", ") if dist.shapes else []
        values = dict(zip([*shapes, "loc", "scale"], args, strict=False))
        values.update(kwds)
        loc = values.get("loc", 0)
        scale = values.get("scale", 1)
    except AttributeError:
        raise TypeError(instead) from None
    if name == "uniform":
        return distributions.FloatDistribution(float(loc), float(loc + scale))
    if name in ("loguniform", "reciprocal"):
        if loc != 0:
            raise ValueError(
                f"{label} is scipy.stats.{name} with loc={loc}, which is not "
                "log-uniform: give loc=0 (the default), or an "
                "optuna.distributions.FloatDistribution."
            )
        low, high = values["a"] * scale, values["b"] * scale
        return distributions.FloatDistribution(float(low), float(high), log=True)
    if name == "randint":
        if scale != 1 or not float(loc).is_integer():
            raise TypeError(instead)
        low, high = int(values["low"] + loc), int(values["high"] + loc) - 1
        return distributions.IntDistribution(low, high)
    raise TypeError(instead)


def _size(distribution, distributions):
    if isinstance(distribution, distributions.CategoricalDistribution):
        return len(distribution.choices)
    if isinstance(distribution, distributions.IntDistribution):
        if distribution.log:
            return distribution.high - distribution.low + 1
        return (distribution.high - distribution.low) // distribution.step + 1
    if isinstance(distribution, distributions.FloatDistribution):
        if distribution.step is not None:
            width = distribution.high - distribution.low
            return round(width / distribution.step) + 1
        return None if distribution.high > distribution.low else 1
    return None


def _suggest(trial, name, distribution, optuna):
    """Suggest ``distribution`` under ``name`` through Optuna's public methods."""
    distributions = optuna.distributions
    if isinstance(distribution, distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, list(distribution.choices))
    if isinstance(distribution, distributions.IntDistribution):
        return trial.suggest_int(
            name,
            distribution.low,
            distribution.high,
            step=distribution.step,
            log=distribution.log,
        )
    if isinstance(distribution, distributions.FloatDistribution):
        return trial.suggest_float(
            name,
            distribution.low,
            distribution.high,
            step=distribution.step,
            log=distribution.log,
        )
    raise TypeError(
        f"Optuna distribution {distribution!r} of {name!r} cannot be suggested: "
        "use CategoricalDistribution, IntDistribution or FloatDistribution."
    )
