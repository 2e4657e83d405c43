"""Sphinx configuration for the sklearn_ipp documentation."""

import os
import sys

import sklearn_ipp

# gallery.py, next to this file: the gallery's order and cluster.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gallery

project = "sklearn_ipp"
copyright = "2026, the sklearn_ipp developers"
release = sklearn_ipp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
# Classes show their own methods: the inherited scikit-learn ones refer to
# scikit-learn's glossary, which these pages do not have.
templates_path = ["_templates"]
numpydoc_show_class_members = False
# Types in parameter lists stay plain text: they are for readers, not links.
numpydoc_xref_param_type = False

intersphinx_mapping = {}  # no network at build time; links are written out

exclude_patterns = ["_build", "generated/*.examples", "auto_examples/*.ipynb"]
html_theme = "alabaster"
html_static_path = []

# The gallery: every example in ../examples runs when the documentation is
# built, on a local cluster of 2 engines (gallery.start_cluster), and its
# page shows what it printed and drew, with the script and a notebook to
# download. ``-D plot_gallery=0`` builds the pages without running them.
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "gallery.ExampleOrder",
    # A failing example fails the build.
    "only_warn_on_example_error": False,
    "abort_on_example_error": True,
    "capture_repr": ("_repr_html_", "__repr__"),
    "matplotlib_animations": False,
    "remove_config_comments": True,
    "download_all_examples": True,
    "min_reported_time": 0,
    "show_memory": False,
}


def setup(app):
    """Start the examples' cluster before the gallery runs, stop it at the end."""
    # Before sphinx-gallery's own builder-inited handler (priority 500).
    app.connect("builder-inited", _start_cluster_if_running_examples, priority=100)
    app.connect("build-finished", gallery.stop_cluster)


def _start_cluster_if_running_examples(app):
    if str(app.config.plot_gallery).lower() not in ("0", "false"):
        gallery.start_cluster()
