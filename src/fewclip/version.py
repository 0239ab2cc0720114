"""fewclip's version, ``fewclip.__version__``: a module of its own, so that the package's modules read it without
importing the package's ``__init__`` (which imports them)."""

__version__ = "0.1.0"
