"""The runner on top of the library: config, run directory, stages, evaluation, CLI, tracking."""
