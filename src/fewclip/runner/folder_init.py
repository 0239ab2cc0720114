"""``fewclip init FOLDER``: the config ``fewclip run FOLDER`` would run (``fewclip.runner.folder_config``), as a
commented YAML file to edit and run (``fewclip.runner.config_template``), with what the folder holds in its header.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence

from fewclip.data.sources.folder import FolderSourceConfig
from fewclip.runner.config import default_cache_dir, load_config
from fewclip.runner.config_template import commented_yaml
from fewclip.runner.folder_config import BUDGETS, folder_config, survey


def init_yaml(folder: Path, overrides: Sequence[str], out: Path) -> str:
    """The commented YAML ``fewclip init FOLDER`` writes to ``out``: the config ``fewclip run FOLDER [overrides]``
    would run, every block at its value under its one-line description, after a header that lists the classes
    with their images and the budgets they allow; the folder's path is written relative to ``out``'s folder
    (where a config's relative paths are looked for first)."""
    config = load_config(None, overrides, base=folder_config(folder, overrides, Path(default_cache_dir())))
    run = f"fewclip run {shlex.quote(str(out))}"
    header = [
        f"fewclip config for the images in {folder.resolve()}, written by `fewclip init`.",
        f"Edit it, then: {run}",
    ]
    replace = {}
    if isinstance(config.dataset, FolderSourceConfig):
        found = survey(config.dataset)
        width = max(len(name) for name in found.train)
        header += ["", f"The folder: {found.layout}, {len(found.train)} classes (train and test images):"]
        header += [f"  {name:<{width}}  {found.train[name]:>5}  {found.test[name]:>5}" for name in found.train]
        if sum(found.train.values()):
            budgets = found.budget_text(config.few_shot.shots, config.splits.val_per_class)
            header += [f"Budgets: {budgets} (those of {list(BUDGETS)} that fit beside the validation images)."]
        replace["dataset.path"] = os.path.relpath(config.dataset.path, out.parent.resolve())
    header += [
        "",
        "Each block is at its default but name, methods, dataset, few_shot, splits and output, which the folder",
        "decided, and the keys given to `fewclip init`. The comment above each key says what it does;",
        "docs/configuration.md has the whole reference.",
    ]
    return commented_yaml(config, header, replace)
