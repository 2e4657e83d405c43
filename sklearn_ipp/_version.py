"""The version of sklearn_ipp, in a module of its own.

Modules of the package that need it (checkpoint keys) import it from here,
never from the package's ``__init__``, which imports them.
"""

__version__ = "0.1.0.dev0"
