"""Weights & Biases tracking of a run (runner side: the core never imports it).

``wandb.mode``: ``disabled`` (the default: a no-op that never imports wandb), ``offline`` (the run is
written under ``<run dir>/wandb/``; ``wandb sync`` uploads it later) or ``online``. One wandb run per
command: the CLI opens it before the stages, logs each unit's per-epoch history (``<method>/shot_K-seed_S/
<metric>`` against its own ``.../epoch`` axis) live, as each epoch ends, and after the stages the
histories of units trained earlier, summary.csv and results/aggregate/*.csv as tables, the PNG figures under
results/ as images, and report.html as an artifact of type ``report``. ``online`` checks that the wandb
server answers within a few seconds before starting, instead of stalling for minutes without a network.
"""

from __future__ import annotations

import math
import os
import re
import socket
from urllib.parse import urlparse
from pathlib import Path
from typing import Any

from fewclip.runner.config import Config, WandbConfig
from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout, run_root


class TrackingError(RuntimeError):
    """wandb is needed but missing, or could not start a run; the message says what to do."""


def import_wandb(mode: str) -> Any:
    try:
        import wandb
    except ImportError:
        raise TrackingError(
            f"wandb.mode is {mode!r} but the wandb package is not installed; run `pip install wandb` "
            "(or `pip install 'fewclip[wandb]'`), or set wandb.mode=disabled"
        ) from None
    return wandb


DEFAULT_BASE_URL = "https://api.wandb.ai"
CONNECT_TIMEOUT = 5.0  # seconds: a reachable server answers well within this


_REACHED: set[str] = set()  # servers already reached by this process (the CLI checks before the tracker does)


def check_reachable(base_url: str | None = None, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast when the wandb server (``WANDB_BASE_URL`` or api.wandb.ai) cannot be reached."""
    url = base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    if url in _REACHED:
        return
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        _REACHED.add(url)
    except OSError as err:
        raise TrackingError(
            f"wandb.mode is 'online' but the wandb server {url} cannot be reached ({err}); "
            "check the network, or set wandb.mode=offline (upload later with `wandb sync`)"
        ) from None


def preflight(settings: WandbConfig) -> Any:
    """The wandb module, after failing fast on what would stop a run later (package missing, server
    unreachable); writes nothing, so it can run before the run directory is claimed."""
    wandb = import_wandb(settings.mode)
    if settings.mode == "online":
        check_reachable()
    return wandb


def _number(text: str) -> float | int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and re.fullmatch(r"-?\d+", text.strip()) else value


def typed_rows(rows: list[dict[str, str]]) -> tuple[list[str], list[list[Any]]]:
    """CSV rows as table columns and values; a column whose cells all read as numbers becomes numeric
    (empty cells: None), so wandb can plot it."""
    columns = list(rows[0]) if rows else []
    numeric = {c for c in columns if all(r[c] == "" or _number(r[c]) is not None for r in rows)}
    data = [[(_number(r[c]) if r[c] != "" else None) if c in numeric else r[c] for c in columns] for r in rows]
    return columns, data


class Tracker:
    """One wandb run for one fewclip run directory; every method is a no-op when tracking is disabled."""

    def __init__(
        self,
        settings: WandbConfig,
        run_dir: Path | str,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.settings = settings
        self.layout = RunLayout(Path(run_dir).expanduser())
        self.run: Any = None
        if settings.mode == "disabled":
            return
        self._wandb = preflight(settings)
        self.logged_units: set[str] = set()
        self.logged_epochs: dict[str, set[Any]] = {}  # unit -> epochs already logged (live or from its history)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        try:
            # console capture is off: what is logged comes from the stages' results, not their output
            quiet_settings = {"silent": True} if quiet else {}  # else WANDB_SILENT and the like still apply
            self.run = self._wandb.init(
                mode=settings.mode,
                project=settings.project,
                entity=settings.entity,
                tags=list(settings.tags),
                dir=str(self.layout.root),
                config=config or {},
                name=name,
                settings=self._wandb.Settings(console="off", **quiet_settings),
            )
        except self._wandb.errors.Error as err:
            hint = "; run `wandb login`, or set wandb.mode=offline" if settings.mode == "online" else ""
            raise TrackingError(f"wandb.init failed (wandb.mode={settings.mode}): {err}{hint}") from err

    @classmethod
    def for_config(cls, config: Config, quiet: bool = False) -> "Tracker":
        """A tracker for ``config``'s run directory, logging its resolved config under its name."""
        return cls(config.wandb, run_root(config), config.model_dump(mode="json"), config.name, quiet)

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log_epoch(self, unit: str, row: dict[str, Any]) -> None:
        """One epoch's row of a unit (``unit`` like ``coop/shot_1-seed_1``), as it ends: live curves."""
        if not self.enabled:
            return
        epochs = self.logged_epochs.setdefault(unit, set())
        if not epochs and unit not in self.logged_units:
            self.run.define_metric(f"{unit}/epoch")
            self.run.define_metric(f"{unit}/*", step_metric=f"{unit}/epoch")
        epoch = row.get("epoch")
        if epoch in epochs:
            return
        values = {f"{unit}/{k}": _number(v) if isinstance(v, str) else v for k, v in row.items() if v != ""}
        self.run.log({k: v for k, v in values.items() if v is not None and not math.isnan(v)})
        epochs.add(epoch)

    def log_history(self, unit: str, rows: list[dict[str, Any]]) -> None:
        """One unit's per-epoch metrics, e.g. right after it trained: the rows not already logged live
        (all of them for a unit trained by an earlier command; the resumed epochs of a killed one)."""
        if not self.enabled or unit in self.logged_units:
            return
        for row in rows:
            epoch = row.get("epoch")
            self.log_epoch(unit, {**row, "epoch": _number(epoch) if isinstance(epoch, str) else epoch})
        self.logged_units.add(unit)

    def log_histories(self) -> int:
        """Every results/history CSV not logged yet (units trained by an earlier command); returns how many."""
        if not self.enabled:
            return 0
        count = 0
        for file in sorted((self.layout.results / "history").rglob("*.csv")):
            unit = file.relative_to(self.layout.results / "history").with_suffix("").as_posix()
            if unit not in self.logged_units:
                self.log_history(unit, read_csv(file))
                count += 1
        return count

    def log_results(self) -> None:
        """summary.csv and results/aggregate/*.csv as tables, each unit's scores in the run summary,
        and every PNG under results/ as an image."""
        if not self.enabled:
            return
        results = self.layout.results
        logged: dict[str, Any] = {}
        tables = [(self.layout.summary, "summary")] + [
            (f, f"aggregate/{f.stem}") for f in sorted(self.layout.aggregate.glob("*.csv"))
        ]
        for file, key in tables:
            if file.is_file():
                columns, data = typed_rows(read_csv(file))
                logged[key] = self._wandb.Table(columns=columns, data=data)
        for png in sorted(results.rglob("*.png")):
            logged[png.relative_to(results).with_suffix("").as_posix()] = self._wandb.Image(str(png))
        if logged:
            self.run.log(logged)
        if self.layout.summary.is_file():
            for row in read_csv(self.layout.summary):
                unit = f"{row['method']}/shot_{row['shots']}-seed_{row['seed']}/{row['split']}"
                for metric in ("accuracy", "macro_f1"):
                    if _number(row.get(metric, "")) is not None:
                        self.run.summary[f"{unit}/{metric}"] = float(row[metric])

    def log_report(self) -> bool:
        """report.html as an artifact of type ``report``; False when there is no report to log."""
        if not self.enabled or not self.layout.report.is_file():
            return False
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(self.run.name or "fewclip")).strip("-") or "fewclip"
        artifact = self._wandb.Artifact(f"{name}-report", type="report")
        artifact.add_file(str(self.layout.report))
        self.run.log_artifact(artifact)
        return True

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
