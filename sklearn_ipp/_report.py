"""A search's report as an HTML table in Jupyter, refreshed in place on demand.

``LiveReport`` is what a search's ``live_report()`` returns. Each time it is
displayed it computes the search's state at that moment, so re-running a
cell shows fresh results; ``refresh()`` recomputes it and replaces every
output where it was displayed, through IPython's ``display_id``, rather than
adding an output. Its text is the search's ``report()``.
"""

import html
import uuid

from ._results import format_report, in_kernel

__all__ = ["LiveReport", "report_html"]


class LiveReport:
    """The best candidates of a search so far, displayed as a table in Jupyter.

    Made by a search's ``live_report()``.

    Parameters
    ----------
    search : IPyParallelGridSearchCV or IPyParallelRandomizedSearchCV
        The search (fitting or fitted) whose report this is.
    n_top : int
        How many candidates to show.
    """

    def __init__(self, search, n_top):
        self._search = search
        self._n_top = n_top
        # One id for every output showing this report: refresh() updates
        # them all, and those of earlier cells too.
        self._display_id = f"sklearn_ipp-report-{uuid.uuid4().hex}"
        self._displayed = False

    def refresh(self):
        """Recompute the report and update every output that displays it.

        No output is added. Does nothing before the report was displayed,
        or outside a Jupyter kernel (a terminal IPython would print it
        again).
        """
        if not (self._displayed and in_kernel()):
            return
        from IPython.display import update_display

        update_display(self._bundle(), raw=True, display_id=self._display_id)

    def __repr__(self):
        return self._search.report(self._n_top)

    def _repr_html_(self):
        return report_html(*self._search._report_content(self._n_top))

    def _ipython_display_(self):
        # Rather than _repr_html_ alone: only display() gives the output the
        # display_id that refresh() updates, including for the last
        # expression of a cell.
        from IPython.display import display

        display(self._bundle(), raw=True, display_id=self._display_id)
        self._displayed = True

    def _bundle(self):
        # One look at the search for both: a running search's text and table
        # show the same fits.
        progress, candidates, metric = self._search._report_content(self._n_top)
        return {
            "text/plain": format_report(progress, candidates),
            "text/html": report_html(progress, candidates, metric),
        }


def report_html(progress, candidates, metric="score"):
    """Write the report as HTML: the progress line, then a table.

    Parameters
    ----------
    progress : str
        The progress line (``format_progress``).
    candidates : list of TopCandidate or None
        The best candidates (``top_candidates``), None while no fit has
        finished: the progress line alone.
    metric : str, default="score"
        The metric of the scores, named in the headers unless ``"score"``.

    Returns
    -------
    html : str
        A ``<div>`` holding a paragraph and a table styled as a pandas
        DataFrame's; every value is escaped.
    """
    parts = [f"<div>\n<p>{html.escape(progress)}</p>"]
    if candidates is not None:
        parts.append(_table(candidates, metric))
    parts.append("</div>")
    return "\n".join(parts)


def _table(candidates, metric):
    named = "" if metric == "score" else f" ({metric})"
    has_train = any(c.train_mean is not None for c in candidates)
    # Parameters in the order they come; a list of grids may leave some out.
    names = list(dict.fromkeys(name for c in candidates for name in c.params))
    headers = ["rank", f"validation{named}"]
    if has_train:
        headers.append(f"train{named}")
    headers += ["splits", *names]
    rows = []
    for c in candidates:
        cells = [_score(c.test_mean, c.test_sem)]
        if has_train:
            cells.append(_score(c.train_mean, c.train_sem))
        cells.append(f"{c.n_finished}/{c.n_splits}")
        cells += [_value(c.params[name]) if name in c.params else "" for name in names]
        rows.append(
            f"    <tr>\n      <th>{c.rank}</th>\n"
            + "".join(f"      <td>{html.escape(cell)}</td>\n" for cell in cells)
            + "    </tr>\n"
        )
    head = "".join(f"      <th>{html.escape(h)}</th>\n" for h in headers)
    return (
        '<table border="1" class="dataframe">\n'
        '  <thead>\n    <tr style="text-align: right;">\n'
        f"{head}    </tr>\n  </thead>\n  <tbody>\n{''.join(rows)}  </tbody>\n"
        "</table>"
    )


def _score(mean, sem):
    return f"{mean:.5f} ± {sem:.5f}"


def _value(value):
    # Strings as they are, as in a DataFrame; anything else as in the text
    # report's dict of parameters.
    return value if isinstance(value, str) else repr(value)
