"""``import sklearn_ipp`` is light, and its modules depend one way."""

import ast
import pathlib

import sklearn_ipp

from .conftest import last_json_line, run_python

PACKAGE = pathlib.Path(sklearn_ipp.__file__).parent

# What a process that never uses a cluster should not pay for.
_CLUSTER_MODULES = ["ipyparallel", "zmq", "IPython", "traitlets", "jupyter_client"]

_IMPORT_ONLY = f"""
import json, sys
import joblib.parallel
import sklearn_ipp
print(json.dumps({{
    "loaded": [m for m in {_CLUSTER_MODULES!r} if m in sys.modules],
    "backend": joblib.parallel.BACKENDS["ipyparallel"].__module__,
    "public": [name for name in sklearn_ipp.__all__
               if getattr(sklearn_ipp, name, None) is None],
}}))
"""


def test_import_loads_no_cluster_library():
    found = last_json_line(run_python("-c", _IMPORT_ONLY))
    assert found == {"loaded": [], "backend": "sklearn_ipp._backend", "public": []}


_USE_BACKEND = """
import json, sys
from joblib import Parallel, delayed, parallel_backend
import sklearn_ipp

with parallel_backend("ipyparallel"):
    squares = Parallel(n_jobs=2)(delayed(pow)(i, 2) for i in range(5))
print(json.dumps({"squares": squares, "ipyparallel": "ipyparallel" in sys.modules}))
"""


def test_the_backend_imports_ipyparallel_when_first_used(cluster):
    # The session cluster is the running cluster of the default profile.
    found = last_json_line(run_python("-c", _USE_BACKEND))
    assert found == {"squares": [0, 1, 4, 9, 16], "ipyparallel": True}


def _package_imports(path):
    """Modules of the package that the module at ``path`` imports, anywhere."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                imported.add(node.module.split(".")[0])
            elif node.level == 1:
                imported.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("sklearn_ipp."):
                imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("sklearn_ipp.")
            )
    return imported - {path.stem}


def test_modules_depend_one_way():
    # Imports inside functions count too: they only hide a cycle.
    graph = {
        path.stem: _package_imports(path)
        for path in PACKAGE.glob("*.py")
        if path.stem not in ("__init__", "__main__")
    }
    order, state = [], {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "visiting", "import cycle: " + " -> ".join(
            [*path, module]
        )
        state[module] = "visiting"
        for dependency in sorted(graph.get(module, ())):
            visit(dependency, [*path, module])
        state[module] = "done"
        order.append(module)

    for module in sorted(graph):
        visit(module, [])
    assert len(order) == len(graph)
    # The check sees the imports it must: _folds uses _prefix's PrefixFold.
    assert "_prefix" in graph["_folds"] and "_folds" not in graph["_prefix"]
