"""The package version, in a module of its own so that any module can import it at its top (``fewclip``'s
``__init__`` imports the runner, which records the version in every run directory it creates)."""

__version__ = "0.1.0"
