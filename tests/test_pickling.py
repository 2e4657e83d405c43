"""Pickling of messages: by reference when engines can import, by value else."""

import importlib
import linecache
import pickle
import sys
import textwrap
import traceback

import cloudpickle
import pytest

from sklearn_ipp._pickling import dumps


def test_module_under_a_registered_subpackage_goes_by_value(tmp_path, monkeypatch):
    package = tmp_path / "bvpkg" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "bvpkg" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        textwrap.dedent(
            """
            class Model:
                def __init__(self, value):
                    self.value = value
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import bvpkg.sub
    from bvpkg.sub.models import Model

    cloudpickle.register_pickle_by_value(bvpkg.sub)
    try:
        payload = dumps([Model(42)])
    finally:
        cloudpickle.unregister_pickle_by_value(bvpkg.sub)
    # Where the package cannot be imported (as on an engine), it still loads.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    for name in [n for n in sys.modules if n.split(".")[0] == "bvpkg"]:
        monkeypatch.delitem(sys.modules, name)
    (model,) = pickle.loads(payload)
    assert model.value == 42


def test_importable_objects_go_by_reference():
    payload = dumps([pickle.dumps])
    assert pickle.loads(payload) == [pickle.dumps]
    assert b"_pickle" in payload and len(payload) < 100


def _sent_by_value(tmp_path, monkeypatch, name, source):
    """Write module ``name``; return its file and ``dumps`` of its ``fails``.

    The module is then forgotten, as on an engine that cannot import it.
    """
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    cloudpickle.register_pickle_by_value(module)
    try:
        payload = dumps([module.fails])
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    monkeypatch.delitem(sys.modules, name)
    return path, payload, module.fails


def test_code_sent_by_value_keeps_its_file_and_lines(tmp_path, monkeypatch):
    source, payload, original = _sent_by_value(
        tmp_path,
        monkeypatch,
        "usermodels",
        """
        def fails(n):
            values = [i for i in range(n)]
            raise ValueError(values)
        """,
    )
    (fails,) = pickle.loads(payload)
    assert fails is not original  # sent by value
    code = fails.__code__
    nested = [c for c in code.co_consts if isinstance(c, type(code))]
    # The comprehension's own code object on Pythons that have one.
    assert {c.co_filename for c in [code, *nested]} == {str(source)}
    try:
        fails(2)
    except ValueError:
        text = traceback.format_exc()
    assert f'File "{source}", line 4, in fails' in text
    assert "raise ValueError(values)" in text


def test_source_lines_travel_with_code_sent_by_value(tmp_path, monkeypatch):
    """A host without the user's file still quotes its lines in tracebacks."""
    source, payload, _ = _sent_by_value(
        tmp_path,
        monkeypatch,
        "gone_models",
        """
        def fails(n):
            # a comment the traceback does not need
            raise ValueError(n)
        """,
    )
    source.unlink()  # as on a host that does not have it
    linecache.checkcache()
    try:
        (fails,) = pickle.loads(payload)
        with pytest.raises(ValueError) as info:
            fails(3)
        text = "".join(traceback.format_exception(info.value))
        assert f'File "{source}", line 4, in fails' in text
        assert "raise ValueError(n)" in text
    finally:
        linecache.cache.pop(str(source), None)
