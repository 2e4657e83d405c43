"""Every Python block of the README and the documentation works as pasted.

A block runs on its own, in a fresh namespace, on the session's cluster (found
with no ``client=``, as a reader's local cluster would be). Blocks that need
another kind of cluster (SSH, MPI, Slurm) are marked in the page's source by
the comment ``.. not run: WHY`` just before them: those are compiled, every
name they use must be defined or imported, every import must exist, and an
``ipcluster_config.py`` block (``c = get_config()``) may only set options that
ipyparallel has.
"""

import ast
import builtins
import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest

from .conftest import last_json_line, run_python

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

_NOT_RUN = re.compile(r"^\.\. not run: \S")
_PYTHON_DIRECTIVE = re.compile(r"^(\s*)\.\. (code-block|code|sourcecode):: python\s*$")
_OTHER_DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::")


@dataclasses.dataclass
class Block:
    page: Path
    line: int  # of the block's first line of code, 1-based
    code: str
    literal: bool  # a ``::`` literal block rather than a Python code-block
    run: bool

    @property
    def where(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _indent(line):
    return len(line) - len(line.lstrip())


def _indented_block(lines, start, indent):
    """The lines after ``start`` indented deeper than ``indent``, dedented.

    Returns the index of the first of them and their text.
    """
    index = start + 1
    # A directive's options (":caption: ...") and blank lines come first.
    while index < len(lines) and (
        not lines[index].strip()
        or (lines[index].lstrip().startswith(":") and _indent(lines[index]) > indent)
    ):
        index += 1
    first, body = index, []
    while index < len(lines) and (
        not lines[index].strip() or _indent(lines[index]) > indent
    ):
        body.append(lines[index])
        index += 1
    while body and not body[-1].strip():
        body.pop()
    if not body:
        return first, ""
    margin = min(_indent(line) for line in body if line.strip())
    return first, "\n".join(line[margin:] for line in body) + "\n"


def _marked_not_run(lines, index):
    """Whether the directive at ``index`` follows a ``.. not run:`` comment."""
    index -= 1
    while index >= 0 and not lines[index].strip():
        index -= 1
    return index >= 0 and bool(_NOT_RUN.match(lines[index].strip()))


def blocks(page):
    """The Python code-blocks and the ``::`` literal blocks of a page."""
    lines = page.read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        directive = _PYTHON_DIRECTIVE.match(line)
        literal = (
            line.rstrip().endswith("::")
            and not _OTHER_DIRECTIVE.match(line)
            and not line.lstrip().startswith("..")
        )
        if not directive and not literal:
            continue
        first, code = _indented_block(lines, index, _indent(line))
        if code:
            run = bool(directive) and not _marked_not_run(lines, index)
            found.append(Block(page, first + 1, code, not directive, run))
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if not block.literal]


def _is_python(code):
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    # A lone name or literal (an option's value, a file name) is not code.
    return any(not isinstance(node, ast.Expr) for node in tree.body) or any(
        isinstance(node.value, ast.Call | ast.Attribute) for node in tree.body
    )


def test_the_pages_have_python_blocks():
    assert len(PYTHON_BLOCKS) >= 20
    assert sum(block.run for block in PYTHON_BLOCKS) >= 15


def test_python_is_in_python_code_blocks():
    # A ``::`` literal block is neither highlighted nor checked here.
    literal = [block.where for block in ALL_BLOCKS if block.literal]
    python = [
        block.where for block in ALL_BLOCKS if block.literal and _is_python(block.code)
    ]
    assert literal, "the parser found no literal block: it is broken"
    assert python == [], "use '.. code-block:: python' for these"


def _names(tree):
    """Names a block loads and names it binds."""
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded, bound


def _missing_imports(tree):
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module_name, name in modules:
            try:
                module = importlib.import_module(module_name)
                if name is not None and not hasattr(module, name):
                    importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(module_name if name is None else f"{module_name}.{name}")
    return missing


def _configurables():
    """ipyparallel's configurable classes by name."""
    from traitlets.config import Configurable

    for module in (
        "ipyparallel.cluster.app",
        "ipyparallel.cluster.launcher",
        "ipyparallel.controller.app",
        "ipyparallel.engine.app",
    ):
        importlib.import_module(module)
    found, todo = {}, [Configurable]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def _unknown_options(tree):
    """``c.Class.option`` of a config file that ipyparallel does not have."""
    configurables = _configurables()
    unknown = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "c"
        ):
            continue
        cls = configurables.get(node.value.attr)
        if cls is None or node.attr not in cls.class_trait_names(config=True):
            unknown.append(f"c.{node.value.attr}.{node.attr}")
    return unknown


def test_the_checks_find_what_they_look_for():
    tree = ast.parse(
        "import sklearn_ipp.no_such_module\n"
        "c = get_config()\n"
        "c.Cluster.n = 4\n"
        "c.Cluster.no_such_option = 1\n"
        "print(undefined)\n"
    )
    assert _unknown_options(tree) == ["c.Cluster.no_such_option"]
    assert _missing_imports(tree) == ["sklearn_ipp.no_such_module"]
    loaded, bound = _names(tree)
    assert loaded - bound - set(dir(builtins)) == {"get_config", "undefined"}


@pytest.mark.parametrize(
    "block", PYTHON_BLOCKS, ids=[block.where for block in PYTHON_BLOCKS]
)
def test_every_python_block_compiles_with_its_names_defined(block):
    tree = ast.parse(block.code, filename=block.where)
    loaded, bound = _names(tree)
    config_file = "get_config" in loaded
    known = bound | set(dir(builtins)) | ({"get_config"} if config_file else set())
    assert sorted(loaded - known) == [], f"{block.where}: undefined names"
    assert _missing_imports(tree) == [], f"{block.where}: imports that fail"
    if config_file:
        assert _unknown_options(tree) == [], f"{block.where}: no such option"


# Runs the blocks given as JSON on argv[1], each in a fresh module named
# __main__, as a script pasted into a file would run; says which failed.
_RUNNER = """
import json, os, runpy, sys, traceback
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ran, failures = 0, []
for where, code in json.loads(sys.argv[1]):
    path = os.path.join(os.getcwd(), where.replace("/", "_").replace(":", "-") + ".py")
    with open(path, "w") as f:
        f.write(code)
    try:
        runpy.run_path(path, run_name="__main__")
        ran += 1
    except BaseException:
        failures.append([where, traceback.format_exc()])
    plt.close("all")
print(json.dumps({"ran": ran, "failures": failures}))
"""

RUN_PAGES = sorted({block.page for block in PYTHON_BLOCKS if block.run})


@pytest.mark.parametrize(
    "page", RUN_PAGES, ids=[str(page.relative_to(ROOT)) for page in RUN_PAGES]
)
def test_python_blocks_run_as_pasted(cluster, client, tmp_path, page, monkeypatch):
    to_run = [
        [block.where, block.code]
        for block in PYTHON_BLOCKS
        if block.page == page and block.run
    ]
    monkeypatch.chdir(tmp_path)  # files the blocks write land here
    completed = run_python("-c", _RUNNER, json.dumps(to_run), timeout=600)
    outcome = last_json_line(completed)
    failures = outcome["failures"]
    assert failures == [], "\n".join(f"{where}\n{text}" for where, text in failures)
    assert outcome["ran"] == len(to_run) > 0


def test_tests_named_in_the_docs_exist():
    # fidelity.rst names scikit-learn's own tests; the other pages name ours.
    defined = {
        match
        for path in (ROOT / "tests").rglob("*.py")
        for match in re.findall(r"^\s*def (test_\w+)", path.read_text(), re.M)
    }
    named = {
        (page.name, name)
        for page in PAGES
        if page.name != "fidelity.rst"
        for name in re.findall(r"``(test_\w+)``", page.read_text())
    }
    assert named, "no test is named in the docs: the pattern is broken"
    assert sorted((page, name) for page, name in named if name not in defined) == []


def test_each_table_of_numbers_stands_in_one_place():
    # A row of a table: cells two spaces apart, two of them numbers.
    number = re.compile(r"[-+]?[\d.,]+\s?[x%]?")
    pages_of_row = {}
    for page in PAGES:
        for line in page.read_text().splitlines():
            cells = re.split(r"\s{2,}", line.strip())
            if sum(bool(number.fullmatch(cell)) for cell in cells) >= 2:
                pages_of_row.setdefault(line.strip(), set()).add(page.name)
    assert len(pages_of_row) > 50, "the pattern finds no table: it is broken"
    repeated = {row: pages for row, pages in pages_of_row.items() if len(pages) > 1}
    assert repeated == {}, "link to the page that has the table instead"
