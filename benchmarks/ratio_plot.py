"""Bar charts of benchmark results relative to a reference system.

Each benchmark compares systems run side by side in one run, so what reads
across machines and days is each system's result over the reference's in
the same run (loky's, most often). :func:`ratios` computes those ratios from
a run's rows and :func:`plot_ratios` draws them: one group of horizontal bars
per case of the run (a number of workers, a workload), one bar per system,
with the reference as a dashed line at 1. Every plot gives a system the same
colour, so that sklearn_ipp is found at a glance on all of them.

matplotlib is imported by :func:`plot_ratios` only: the benchmarks run
without it unless asked to draw.
"""

import math
import shlex
import textwrap

# One colour per system on every plot: sklearn_ipp and its variants in blues,
# the systems it is compared with in the other colours of matplotlib's
# default cycle. dask's joblib backend and dask-ml never share a plot.
COLOURS = {
    "sklearn_ipp": "#1f77b4",
    "sklearn on sklearn_ipp backend": "#17becf",
    "sklearn_ipp whole": "#9ecae1",
    "sklearn_ipp-all-cpus": "#9467bd",
    "loky": "#7f7f7f",
    "loky memory=": "#ff7f0e",
    "serial": "#8c564b",
    "ipyparallel-builtin": "#d62728",
    "dask scatter=[X, y]": "#2ca02c",
    "dask-ml": "#2ca02c",
}
_OTHER_COLOURS = ("#e377c2", "#bcbd22", "#393b79", "#843c39")

# How the docs name the systems whose name in the scripts is an identifier.
LABELS = {"ipyparallel-builtin": "ipyparallel's own backend"}

# A system with several series on one plot (runs of different days) gives
# its later series these hatches, in its own colour.
_HATCHES = ("", "///", "...", "xxx")

# The benchmarks' other plots take these too, to look the same.
FONT_SIZE = 10
VALUE_FONT_SIZE = 9
FIGURE_WIDTH = 8.5  # inches: shrunk to about 700 px on a docs page, 10 pt stays legible
DPI = 130
_BAR_INCHES = 0.2
_GROUP_GAP_INCHES = 0.3
# Above this largest ratio a linear axis would flatten the other bars.
_LOG_ABOVE = 10.0


def colour(system):
    """Return the colour of a system, the same on every plot.

    Parameters
    ----------
    system : str
        The system's name, as the benchmark scripts spell it.

    Returns
    -------
    colour : str
        A matplotlib colour; systems not in :data:`COLOURS` get one of a few
        spare colours, chosen from their name so that it does not change
        between plots.
    """
    if system in COLOURS:
        return COLOURS[system]
    return _OTHER_COLOURS[sum(map(ord, system)) % len(_OTHER_COLOURS)]


def label(system):
    """Return the name the docs give to a system."""
    return LABELS.get(system, system)


def wrap_command(command, width=90):
    """Cut a command line into lines that fit the width of a figure.

    Long commands (a list of systems) would run off the figure. Lines are
    cut between arguments only, so that a quoted one such as
    ``"dask scatter=[X, y]"`` stays whole.

    Parameters
    ----------
    command : str
        The command line.
    width : int, default=90
        The longest line, in characters, unless one argument is longer.

    Returns
    -------
    lines : list of str
    """
    try:
        arguments = shlex.split(command, posix=False)  # keeps the quotes
    except ValueError:  # unbalanced quotes: not a command line after all
        return textwrap.wrap(command, width)
    lines = []
    for argument in arguments:
        if lines and len(lines[-1]) + 1 + len(argument) <= width:
            lines[-1] += " " + argument
        else:
            lines.append(argument)
    return lines


def _row_major(items, ncols):
    """Order items so that a legend of ``ncols`` columns reads them by rows.

    matplotlib fills a legend's columns one after the other, the first ones
    one item longer when the items do not divide evenly, as rows filled
    one after the other do.
    """
    nrows = math.ceil(len(items) / ncols)
    return [
        items[row * ncols + column]
        for column in range(ncols)
        for row in range(nrows)
        if row * ncols + column < len(items)
    ]


def _ratio(row, ref, key, stated_key):
    if stated_key is not None and row.get(stated_key) is not None:
        return row[stated_key]
    if row.get(key) is None or not ref.get(key):
        return None
    return row[key] / ref[key]


def ratios(rows, keys, *, group, reference="loky", series=None, stated=None):
    """Each row's values over the reference system's in the same group.

    Parameters
    ----------
    rows : list of dict
        A run's rows, each with a ``"system"`` and the values of ``keys``.
    keys : sequence of str
        The values to compare, one per panel of the plot (wall time, peak
        memory). A value that is missing, or whose reference is missing or
        zero, gives no bar.
    group : callable
        Gives a row's group: the label of the case it belongs to, such as
        ``"2 workers"``. The reference row is looked for in the same group.
    reference : str, default="loky"
        The system every other one is divided by. Its own rows give no bars:
        the dashed line at 1 stands for them.
    series : callable, default=None
        Gives a row's name in the legend; its system's name by default.
        Systems with several series in one group (runs of different days)
        are divided by the reference of the same series when there is one.
    stated : dict, default=None
        For a key of ``keys``, the key under which a row may hold its ratio
        as the run's table printed it, to be used instead of the division:
        rows transcribed from a table give times rounded to a tenth of a
        second, whose division can differ from the printed ratio (1.10
        instead of 1.08).

    Returns
    -------
    bars : list of dict
        The bars for :func:`plot_ratios`, in the order of ``rows``.
    """
    series = series or (lambda row: label(row["system"]))
    stated = stated or {}
    # The reference of a group, and of each run within it: rows transcribed
    # from a table of several runs say which run they come from.
    of_group, of_run = {}, {}
    for row in rows:
        if row["system"] == reference and "error" not in row:
            of_group.setdefault(group(row), row)
            of_run[group(row), row.get("run")] = row
    bars = []
    for row in rows:
        if row["system"] == reference or "error" in row:
            continue
        ref = of_run.get((group(row), row.get("run"))) or of_group.get(group(row))
        if ref is None:
            continue
        values = tuple(_ratio(row, ref, key, stated.get(key)) for key in keys)
        bars.append(
            {
                "group": group(row),
                "series": series(row),
                "system": row["system"],
                "values": values,
            }
        )
    return bars


def plot_ratios(
    path,
    bars,
    *,
    title,
    xlabels,
    reference="loky",
    target=None,
    percent=False,
    subtitle=None,
):
    """Draw ratios as groups of horizontal bars into a PNG file.

    Parameters
    ----------
    path : str
        The PNG file to write.
    bars : list of dict
        One per bar, as :func:`ratios` gives them: ``group`` (the label of
        its group of bars), ``series`` (its name in the legend), ``system``
        (which gives its colour) and ``values``, one ratio per panel or
        None. An optional ``ranges`` holds one ``(low, high)`` or None per
        panel, drawn as an error bar (the spread of repeated measures).
        Groups and series are drawn in the order they first appear.
    title : str
        The figure's title.
    xlabels : sequence of str
        One axis label per panel, with its unit (``"wall time / loky's"``);
        their number is the number of panels, side by side.
    reference : str, default="loky"
        The name of the dashed line at 1: what the ratios are relative to.
    target : tuple of (float, str), default=None
        A target ratio and its name, drawn as a dotted line on every panel.
    percent : bool, default=False
        Write values and ticks as percentages (efficiencies) rather than as
        multiples such as ``0.14x``.
    subtitle : str, default=None
        The command of the run, written under the title (see
        :func:`wrap_command`).

    Raises
    ------
    ValueError
        If there is no bar to draw (no row had its reference).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, also where no display is set
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if not bars:
        raise ValueError(f"no bars to draw: no row has its {reference} row to compare")
    groups = list(dict.fromkeys(bar["group"] for bar in bars))
    series = list(dict.fromkeys(bar["series"] for bar in bars))
    system_of = {bar["series"]: bar["system"] for bar in bars}
    hatch_of, seen = {}, {}
    for name in series:
        system = system_of[name]
        hatch_of[name] = _HATCHES[seen.get(system, 0) % len(_HATCHES)]
        seen[system] = seen.get(system, 0) + 1
    n_panels = len(xlabels)

    def fmt(value):
        return f"{value:.0%}" if percent else f"{value:.2f}x"

    # Slots of a group stay in place when a series is missing from it, so
    # that a series is at the same height in every group.
    slot = 0.8 / len(series)
    height = len(groups) * (len(series) * _BAR_INCHES + _GROUP_GAP_INCHES) + 1.9
    with plt.rc_context({"font.size": FONT_SIZE, "hatch.linewidth": 1.5}):
        fig, axes = plt.subplots(
            1,
            n_panels,
            sharey=True,
            squeeze=False,
            figsize=(FIGURE_WIDTH, max(height, 3.2)),
            dpi=DPI,
            layout="constrained",
        )
        axes = axes[0]
        for panel, (ax, xlabel) in enumerate(zip(axes, xlabels, strict=True)):
            shown = [bar for bar in bars if bar["values"][panel] is not None]
            values = [bar["values"][panel] for bar in shown]
            # Each bar's span: its value, or the range of its measures.
            spans = [
                (bar.get("ranges") or [None] * n_panels)[panel] or (value, value)
                for bar, value in zip(shown, values, strict=True)
            ]
            lines = [1.0] + ([target[0]] if target else [])
            top = max([high for _, high in spans] + lines)
            bottom = min([low for low, _ in spans] + lines)
            log = top > _LOG_ABOVE
            if log:
                # Room on the right for the values written after the bars.
                left, right = bottom / 1.5, top * 2.2
                ax.set_xscale("log")
            else:
                # Percentages are shorter to write than multiples.
                left, right = 0, top * (1.12 if percent else 1.22)
            for bar, value, (low, high) in zip(shown, values, spans, strict=True):
                y = (
                    groups.index(bar["group"])
                    + (series.index(bar["series"]) - (len(series) - 1) / 2) * slot
                )
                error = None if low == high else [[value - low], [high - value]]
                ax.barh(
                    y,
                    value - left,
                    left=left,
                    height=slot * 0.9,
                    color=colour(bar["system"]),
                    hatch=hatch_of[bar["series"]],
                    edgecolor="white" if hatch_of[bar["series"]] else "none",
                    xerr=error,
                    error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "0.15"},
                )
                # The value after the bar (after its error bar), on white so
                # that the reference lines do not cross it.
                offset = math.log(right / left) if log else right - left
                ax.text(
                    high * (1 + offset * 0.01) if log else high + offset * 0.01,
                    y,
                    fmt(value),
                    va="center",
                    ha="left",
                    fontsize=VALUE_FONT_SIZE,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3},
                )
            ax.axvline(1.0, color="0.2", linestyle="--", linewidth=1.2, zorder=0)
            if target:
                ax.axvline(
                    target[0], color="0.2", linestyle=":", linewidth=1.4, zorder=0
                )
            if not log:
                # Fewer ticks on narrow panels, whose labels would touch.
                ax.xaxis.set_major_locator(
                    MaxNLocator(
                        nbins=7 if n_panels == 1 else 5, steps=[1, 2, 2.5, 5, 10]
                    )
                )
            ax.set_xlim(left, right)
            ax.set_xlabel(xlabel)
            ax.xaxis.set_major_formatter(
                FuncFormatter(
                    (lambda x, _: f"{x:.0%}") if percent else (lambda x, _: f"{x:g}x")
                )
            )
            ax.grid(axis="x", alpha=0.3)
            ax.set_axisbelow(True)
            ax.spines[["top", "right"]].set_visible(False)
            ax.tick_params(axis="y", length=0)
        axes[0].set_yticks(range(len(groups)), groups)
        axes[0].set_ylim(len(groups) - 0.5, -0.5)  # first group on top
        handles = [
            Patch(
                facecolor=colour(system_of[name]),
                hatch=hatch_of[name],
                edgecolor="white" if hatch_of[name] else "none",
                label=name,
            )
            for name in series
        ]
        handles.append(
            plt.Line2D(
                [],
                [],
                color="0.2",
                linestyle="--",
                label=f"{reference} = {'100%' if percent else '1x'}",
            )
        )
        if target:
            handles.append(
                plt.Line2D([], [], color="0.2", linestyle=":", label=target[1])
            )
        ncols = min(len(handles), 3)
        fig.legend(
            handles=_row_major(handles, ncols),
            loc="outside lower center",
            ncols=ncols,
            frameon=False,
        )
        if subtitle:
            title = "\n".join([title, *wrap_command(subtitle)])
        fig.suptitle(title, fontsize=FONT_SIZE + 1)
        fig.savefig(path)
        plt.close(fig)
