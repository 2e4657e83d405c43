"""Searches in Jupyter: the progress bar widget and the live HTML report.

The kernels are real ipykernel processes started by jupyter_client. They
inherit this session's environment, hence its IPYTHONDIR: ``client=None``
in them finds the session cluster. The HTML of the report is also checked
without a kernel.
"""

import contextlib
import json
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from jupyter_client.manager import start_new_kernel
from sklearn.datasets import make_classification
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import GridSearchCV, KFold

import sklearn_ipp
from sklearn_ipp import IPyParallelGridSearchCV
from sklearn_ipp._report import report_html
from sklearn_ipp._results import LiveResults, format_progress, top_candidates

from .test_failures import LoggedClassifier
from .test_interactive import _until
from .test_live_results import N_SPLITS, _feed

# Kernels start slowly on a loaded machine.
KERNEL_TIMEOUT = 60
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

SETUP = """
import json
import time

from sklearn.datasets import load_digits
from sklearn.svm import SVC
from sklearn_ipp import IPyParallelGridSearchCV

X, y = load_digits(return_X_y=True)
X, y = X[:300], y[:300]


def small_search(**kwargs):
    grid = {"C": [1.0, 10.0], "gamma": [0.001, 0.01]}
    return IPyParallelGridSearchCV(SVC(), grid, cv=3, **kwargs)
"""


# Kernels --------------------------------------------------------------------


@contextlib.contextmanager
def _kernel(*paths):
    """Run a kernel with ``paths`` first on its PYTHONPATH; shut it down after."""
    env = dict(os.environ)
    # This checkout's package, even when the tests run without PYTHONPATH.
    checkout = os.path.dirname(os.path.dirname(sklearn_ipp.__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        [*paths, checkout, *filter(None, [env.get("PYTHONPATH")])]
    )
    manager, kernel = start_new_kernel(
        kernel_name="python3", env=env, startup_timeout=KERNEL_TIMEOUT
    )
    try:
        setup = _run(kernel, SETUP)
        _assert_no_error(setup)
        # Importing sklearn_ipp says nothing, with or without ipywidgets.
        assert _stream(setup, "stderr") == ""
        yield kernel
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel()


def _run(kernel, code):
    """Execute ``code``; return its iopub messages up to its idle status.

    Its reply is awaited too, as a frontend does, before the next request
    is sent: ipykernel 7.3 (the newest for Python 3.10) can miss a request
    that arrives while it sends a reply, and then never runs it
    (ipython/ipykernel#1529, fixed in 7.4). Its idle status can come before
    that reply is sent.
    """
    msg_id = kernel.execute(code)
    messages = []
    while True:
        message = kernel.get_iopub_msg(timeout=KERNEL_TIMEOUT)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        content = message["content"]
        if message["msg_type"] == "status" and content["execution_state"] == "idle":
            break
        messages.append(message)
    while (
        kernel.get_shell_msg(timeout=KERNEL_TIMEOUT)["parent_header"].get("msg_id")
        != msg_id
    ):
        pass
    return messages


def _assert_no_error(messages):
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, "\n".join(line for e in errors for line in e["traceback"])


def _stream(messages, name):
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def _of_type(messages, msg_type):
    return [m["content"] for m in messages if m["msg_type"] == msg_type]


@pytest.fixture(scope="module")
def kernel(client):
    """A kernel with ipywidgets, and the session cluster to fit on."""
    with _kernel() as kernel:
        yield kernel


@pytest.fixture
def kernel_without_ipywidgets(client, tmp_path):
    """A kernel in which ``import ipywidgets`` raises ImportError."""
    blocked = tmp_path / "ipywidgets"
    blocked.mkdir()
    (blocked / "__init__.py").write_text(
        'raise ImportError("No module named ipywidgets (hidden by the test)")\n'
    )
    with _kernel(str(tmp_path)) as kernel:
        yield kernel


# The progress bar -------------------------------------------------------------


def test_the_progress_bar_is_a_widget_in_a_kernel_with_ipywidgets(kernel):
    messages = _run(kernel, "search = small_search(verbose=1).fit(X, y)")
    _assert_no_error(messages)
    bars = [d for d in _of_type(messages, "display_data") if WIDGET_MIME in d["data"]]
    assert len(bars) == 1
    assert bars[0]["data"][WIDGET_MIME]["model_id"]
    # The widget alone: no text bar, no warning.
    assert _stream(messages, "stderr") == ""
    assert "totalling 12 fits" in _stream(messages, "stdout")


def test_without_ipywidgets_the_bar_is_text(kernel_without_ipywidgets):
    kernel = kernel_without_ipywidgets
    messages = _run(
        kernel,
        "try:\n"
        "    import ipywidgets\n"
        "except ImportError:\n"
        "    print('no ipywidgets')\n"
        "search = small_search(verbose=1).fit(X, y)\n"
        "print(search.best_params_)\n",
    )
    _assert_no_error(messages)
    stdout, stderr = _stream(messages, "stdout"), _stream(messages, "stderr")
    assert stdout.startswith("no ipywidgets\n")
    assert "'C': " in stdout.splitlines()[-1]
    displayed = _of_type(messages, "display_data")
    assert not [d for d in displayed if WIDGET_MIME in d["data"]]
    assert "fits: 100%" in stderr
    assert "12/12" in stderr
    assert "Warning" not in stderr
    # Without verbose, the text bar of a long search shows in the notebook
    # too, as the widget would (here at once rather than after 10 s): a
    # kernel's stderr is no terminal, but it is not a log either.
    messages = _run(
        kernel,
        "import sklearn_ipp._results\n"
        "sklearn_ipp._results.QUIET_DELAY_SECONDS = 0\n"
        "search = small_search().fit(X, y)\n",
    )
    _assert_no_error(messages)
    assert "fits:" in _stream(messages, "stderr")


# The live report in a kernel ----------------------------------------------------


@pytest.fixture
def bar_at_once(kernel):
    """Progress bars that would show after a delay show at once in ``kernel``."""
    name = "sklearn_ipp._results.QUIET_DELAY_SECONDS"
    delay = _run(kernel, f"import sklearn_ipp._results\nprint({name})")
    _assert_no_error(_run(kernel, f"{name} = 0"))
    yield
    _assert_no_error(_run(kernel, f"{name} = {_stream(delay, 'stdout').strip()}"))


def test_live_report_displays_and_refreshes_in_place(kernel, bar_at_once):
    # A search in the background shows no progress bar without verbose:
    # it would appear in whichever cell runs then. The report shows the
    # progress instead.
    shown = _run(
        kernel,
        "search = small_search()\n"
        "search.fit_async(X, y)\n"
        "while search.progress()[0] == 0 and not search.done():\n"
        "    time.sleep(0.01)\n"
        "report = search.live_report(n_top=3)\n"
        "report\n",
    )
    _assert_no_error(shown)
    (displayed,) = _of_type(shown, "display_data")
    assert not _of_type(shown, "execute_result")
    display_id = displayed["transient"]["display_id"]
    assert "<table" in displayed["data"]["text/html"]
    assert displayed["data"]["text/plain"].startswith("Progress: ")

    refreshed = _run(
        kernel,
        "search.wait()\n"
        "report.refresh()\n"
        "best = {name: repr(value) for name, value in search.best_params_.items()}\n"
        "print(json.dumps({'best': best, 'report': search.report(3)}))\n",
    )
    _assert_no_error(refreshed)
    expected = json.loads(_stream(refreshed, "stdout"))
    # Updated where it was, nothing added.
    assert not _of_type(refreshed, "display_data")
    assert not _of_type(shown + refreshed, "comm_open")
    (update,) = _of_type(refreshed, "update_display_data")
    assert update["transient"]["display_id"] == display_id
    assert update["data"]["text/plain"] == expected["report"]
    html = update["data"]["text/html"]
    assert "Progress: 100% (12/12)</p>" in html
    headers, rows = _table(html)
    assert headers == ["rank", "validation", "splits", "C", "gamma"]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert dict(zip(headers[3:], rows[0][3:], strict=True)) == expected["best"]
    assert all(row[2] == "3/3" for row in rows)


# The report's HTML, without a kernel ----------------------------------------------


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows = []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _table(html):
    """Return the header row and the rows of the report's table, unescaped."""
    parser = _TableParser()
    parser.feed(html)
    headers, *rows = parser.rows
    return headers, rows


def _sem(cv_results, name, index):
    """The standard error of a candidate's mean split score, computed by hand."""
    scores = [
        cv_results[key][index]
        for key in sorted(cv_results)
        if key.startswith("split") and key.endswith(f"_{name}")
    ]
    return np.std(scores, ddof=1) / np.sqrt(len(scores))


def _dummy_search(**kwargs):
    X, y = make_classification(n_samples=60, random_state=0)
    grid = {"strategy": ["prior", "stratified"], "constant": ["<b>", "a&b"]}
    search = GridSearchCV(DummyClassifier(random_state=0), grid, cv=3, **kwargs)
    return search.fit(X, y)


def test_report_html_escapes_every_value():
    search = _dummy_search(scoring={"acc<i>": "accuracy"}, refit="acc<i>")
    metric = "acc<i>"
    progress = "Progress: 50% (6/12), failed: ValueError: C < 0"
    html = report_html(progress, top_candidates(search.cv_results_, 4, metric), metric)
    assert "<b>" not in html and "<i>" not in html and "a&b" not in html
    assert "&lt;b&gt;" in html and "a&amp;b" in html
    assert "<p>Progress: 50% (6/12), failed: ValueError: C &lt; 0</p>" in html
    headers, rows = _table(html)
    assert headers == ["rank", "validation (acc<i>)", "splits", "constant", "strategy"]
    assert {row[3] for row in rows} == {"<b>", "a&b"}


@pytest.mark.parametrize("return_train_score", [False, True])
def test_report_html_of_a_multi_metric_search_shows_its_refit_metric(
    return_train_score,
):
    search = _dummy_search(
        scoring=["accuracy", "balanced_accuracy"],
        refit="balanced_accuracy",
        return_train_score=return_train_score,
    )
    results, metric = search.cv_results_, "balanced_accuracy"
    top = top_candidates(results, 1, metric)
    html = report_html("Progress: 100% (12/12)", top, metric)
    headers, (row,) = _table(html)
    best = search.best_index_
    expected = [
        "1",
        f"{results['mean_test_balanced_accuracy'][best]:.5f} ± "
        f"{_sem(results, 'test_balanced_accuracy', best):.5f}",
    ]
    if return_train_score:
        expected.append(
            f"{results['mean_train_balanced_accuracy'][best]:.5f} ± "
            f"{_sem(results, 'train_balanced_accuracy', best):.5f}"
        )
    expected += ["3/3", search.best_params_["constant"]]
    expected.append(search.best_params_["strategy"])
    assert row == expected
    assert headers[:2] == ["rank", "validation (balanced_accuracy)"]
    assert ("train (balanced_accuracy)" in headers) is return_train_score


def test_report_html_of_partial_results_counts_the_finished_splits():
    live = LiveResults(return_train_score=True, error_score=np.nan)
    # Candidates 0 (2 splits) and 2 (1 split) fit, candidate 3 fails.
    _feed(live, None, [(0, 0), (0, 1), (2, 0), (3, 0)])
    results = live.cv_results()
    html = report_html(format_progress(4, 24, "running"), top_candidates(results))
    assert "<p>Progress: 16% (04/24), running</p>" in html
    headers, rows = _table(html)
    assert headers == ["rank", "validation", "train", "splits", "fail", "feature"]
    splits = {(row[4], row[5]): row[3] for row in rows}
    assert splits == {
        ("False", "0"): f"2/{N_SPLITS}",
        ("False", "2"): f"1/{N_SPLITS}",
        ("True", "0"): f"1/{N_SPLITS}",
    }
    # The failed fit ranks last, with no score.
    assert rows[-1][1:3] == ["nan ± nan", "nan ± nan"]


def test_before_any_fit_finished_the_report_is_its_progress_line(capsys):
    search = IPyParallelGridSearchCV(DummyClassifier(), {"strategy": ["prior"]})
    report = search.live_report()
    assert repr(report) == search.report() == "Progress: 00% (0/0)"
    html = report._repr_html_()
    assert "<table" not in html
    assert "<p>Progress: 00% (0/0)</p>" in html
    # Outside a kernel, refresh() shows nothing.
    assert report.refresh() is None
    assert capsys.readouterr() == ("", "")


def test_live_report_of_an_aborted_search(client):
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    search = IPyParallelGridSearchCV(
        LoggedClassifier(delay=0.3),
        {"C": [float(c) for c in range(1, 7)]},
        cv=KFold(3),
        client=client,
        return_train_score=True,
    )
    search.fit_async(X, y)
    report = search.live_report()
    _until(lambda: search.progress()[0] >= 4, what="4 finished fits")
    search.abort()
    html = report._repr_html_()
    n_done, n_total = search.progress()
    assert f"<p>{format_progress(n_done, n_total, 'aborted')}</p>" in html
    assert repr(report) == search.report()
    headers, rows = _table(html)
    assert headers == ["rank", "validation", "train", "splits", "C"]
    # Every finished split is in the table, the unfinished ones are not.
    counted = [int(row[3].split("/")[0]) for row in rows]
    assert sum(counted) == n_done < 6 * 3
    assert all(row[3].endswith("/3") for row in rows)
