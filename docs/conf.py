"""Sphinx configuration for the sklearn_ipp documentation."""

import sklearn_ipp

project = "sklearn_ipp"
copyright = "2026, the sklearn_ipp developers"
release = sklearn_ipp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
]

autosummary_generate = True
# Classes show their own methods: the inherited scikit-learn ones refer to
# scikit-learn's glossary, which these pages do not have.
templates_path = ["_templates"]
numpydoc_show_class_members = False
# Types in parameter lists stay plain text: they are for readers, not links.
numpydoc_xref_param_type = False

intersphinx_mapping = {}  # no network at build time; links are written out

exclude_patterns = ["_build", "generated/*.examples"]
html_theme = "alabaster"
html_static_path = []
