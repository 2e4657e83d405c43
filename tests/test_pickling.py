"""Pickling of messages: by reference when engines can import, by value else."""

import pickle
import sys
import textwrap

import cloudpickle

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
