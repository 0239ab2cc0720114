"""W&B tracking: disabled never touches wandb; a missing wandb is a clear error before any stage runs;
an offline run lands under the run directory with the config, histories, tables, figures and report."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from fewclip.runner import pipeline
from fewclip.runner.cli import main
from fewclip.runner.config import WandbConfig
from fewclip.runner.run_dir import MARKER
from fewclip.runner.tracking import Tracker, TrackingError, typed_rows

WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type) records


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run's ``run-*.wandb`` file (after its 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, else middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def files_of(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture()
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import wandb`` fail, as when the package is not installed."""
    for name in [m for m in sys.modules if m == "wandb" or m.startswith("wandb.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wandb", None)


def test_disabled_tracking_imports_nothing_and_writes_nothing(make_config: Callable[..., Any], no_wandb: None) -> None:
    config = make_config("few_shot.shots=[1]", "output.figures=false")
    pipeline.run(config)
    run_dir = Path(config.output.dir)
    (run_dir / "report.html").write_text("<html></html>")
    before = files_of(run_dir)
    with Tracker.for_config(config) as tracker:
        assert not tracker.enabled
        assert tracker.log_histories() == 0
        tracker.log_results()
        assert tracker.log_report() is False
    assert sys.modules["wandb"] is None  # any `import wandb` would have failed (and raised TrackingError)
    assert files_of(run_dir) == before


def test_missing_wandb_is_a_clear_error_before_any_stage(
    make_config: Callable[..., Any], tmp_path: Path, no_wandb: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TrackingError, match=r"pip install wandb"):
        Tracker(WandbConfig(mode="offline"), tmp_path)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(make_config().to_yaml())
    assert main(["-q", "run", str(config_file), "wandb.mode=offline"]) == 2
    err = capsys.readouterr().err
    assert "wandb.mode is 'offline' but the wandb package is not installed; run `pip install wandb`" in err
    assert not (tmp_path / "run").exists()  # failed before prepare


def test_typed_rows_make_numeric_columns_numbers() -> None:
    rows = [
        {"method": "coop", "shots": "16", "accuracy": "0.5", "best_epoch": ""},
        {"method": "zero_shot", "shots": "0", "accuracy": "1e-3", "best_epoch": "7"},
    ]
    assert typed_rows(rows) == (
        ["method", "shots", "accuracy", "best_epoch"],
        [["coop", 16, 0.5, None], ["zero_shot", 0, 0.001, 7]],
    )


@pytest.mark.slow
def test_offline_run_lands_under_the_run_directory(
    make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("wandb")  # in the `test` extra
    for name in (
        "WANDB_MODE",
        "WANDB_DIR",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_TAGS",
        "WANDB_NAME",
        "WANDB_RUN_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # keep wandb out of the home folder
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    config = make_config(
        "few_shot.shots=[1,2]",
        "linear_probe.epochs=4",
        "name=tiny shapes",
        "wandb.mode=offline",
        "wandb.tags=[ci,tiny]",
        "output.saliency_images=0",
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    run_dir = Path(config.output.dir)
    run_dir.mkdir(parents=True)
    (run_dir / MARKER).write_text("{}")  # a fewclip run dir (fewclip writes into no other non-empty folder)
    (run_dir / "report.html").write_text("<html>report</html>")  # kept if no report stage writes one

    assert main(["-q", "run", str(config_file)]) == 0
    import wandb

    wandb.teardown()  # waits until the wandb service has written everything (the CLI's process exit does this)
    captured = capsys.readouterr()
    assert "%|" not in captured.err  # quiet: no progress bar from any stage or library
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"wandb: offline run in {offline}" in captured.out
    (log_file,) = offline.glob("run-*.wandb")
    records = wandb_records(log_file)
    by_kind: dict[str, list[Any]] = {}
    for record in records:
        by_kind.setdefault(record.WhichOneof("record_type"), []).append(record)

    assert {"run", "history", "summary", "artifact"} <= set(by_kind), (log_file.stat().st_size, sorted(by_kind))
    (run,) = [r.run for r in by_kind["run"]]
    assert (run.display_name, run.project, list(run.tags)) == ("tiny shapes", "fewclip", ["ci", "tiny"])
    logged_config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {k: v for k, v in logged_config.items() if k != "_wandb"} == json.loads(
        json.dumps(config.model_dump(mode="json"))
    )

    history: dict[str, list[float]] = {}
    for record in by_kind["history"]:
        for item in record.history.item:
            history.setdefault("/".join(item.nested_key) or item.key, []).append(item.value_json)
    for unit in ("linear_probe/shot_1-seed_1", "linear_probe/shot_2-seed_1"):
        rows = read_rows(run_dir / "results" / "history" / f"{unit}.csv")
        assert [float(v) for v in history[f"{unit}/train_loss"]] == [float(r["train_loss"]) for r in rows]
        assert [float(v) for v in history[f"{unit}/epoch"]] == [1.0, 2.0, 3.0, 4.0]

    summary = {"/".join(i.nested_key) or i.key: i.value_json for r in by_kind["summary"] for i in r.summary.update}
    for row in read_rows(run_dir / "results" / "summary.csv"):
        key = f"{row['method']}/shot_{row['shots']}-seed_{row['seed']}/{row['split']}/accuracy"
        assert float(summary[key]) == float(row["accuracy"])

    (table_file,) = (offline / "files" / "media" / "table").glob("summary_*.table.json")
    table = json.loads(table_file.read_text())
    expected_columns, expected_data = typed_rows(read_rows(run_dir / "results" / "summary.csv"))
    assert table["columns"] == expected_columns and table["data"] == expected_data

    pngs = sorted(p.relative_to(run_dir / "results").with_suffix("") for p in (run_dir / "results").rglob("*.png"))
    assert pngs  # the confusion and reliability figures of the units the report shows, and the run's figures
    logged_images = offline / "files" / "media" / "images"
    for png in pngs:
        assert list((logged_images / png.parent).glob(f"{png.name}_*.png")), png

    artifacts = [(r.artifact.name, r.artifact.type) for r in by_kind["artifact"]]
    assert ("tiny-shapes-report", "report") in artifacts


@pytest.fixture()
def wandb_offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    for name in (
        "WANDB_MODE",
        "WANDB_DIR",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_TAGS",
        "WANDB_NAME",
        "WANDB_RUN_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def test_online_without_a_reachable_server_fails_fast(
    make_config: Callable[..., Any],
    tmp_path: Path,
    wandb_offline_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(make_config().to_yaml())
    start = time.perf_counter()
    assert main(["-q", "prepare", str(config_file), "wandb.mode=online"]) == 2
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err
    assert f"the wandb server http://127.0.0.1:{port} cannot be reached" in err and "wandb.mode=offline" in err
    assert not (tmp_path / "run").exists()  # failed before prepare


def test_each_unit_is_logged_as_soon_as_it_is_trained(
    make_config: Callable[..., Any], tmp_path: Path, wandb_offline_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewclip.heads import LinearProbeHead

    events: list[str] = []
    real_fit, real_log = LinearProbeHead.fit, Tracker.log_history
    monkeypatch.setattr(
        LinearProbeHead, "fit", lambda self, task, *a: events.append(f"fit {task.shots}") or real_fit(self, task, *a)
    )
    monkeypatch.setattr(
        Tracker,
        "log_history",
        lambda self, unit, rows: events.append(f"log {unit} {len(rows)}") or real_log(self, unit, rows),
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        make_config(
            "methods=[linear_probe]", "few_shot.shots=[1,2]", "linear_probe.epochs=3", "wandb.mode=offline"
        ).to_yaml()
    )
    assert main(["-q", "prepare", str(config_file)]) == 0 and main(["-q", "features", str(config_file)]) == 0
    events.clear()
    assert main(["-q", "train", str(config_file)]) == 0  # a single stage command logs too
    assert events == ["fit 1", "log linear_probe/shot_1-seed_1 3", "fit 2", "log linear_probe/shot_2-seed_1 3"]
    events.clear()
    assert main(["-q", "train", str(config_file)]) == 0  # nothing trained: the histories on disk are logged
    assert events == ["log linear_probe/shot_1-seed_1 3", "log linear_probe/shot_2-seed_1 3"]


def test_epochs_are_logged_live_while_the_unit_trains(
    make_config: Callable[..., Any], tmp_path: Path, wandb_offline_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewclip.heads import LinearProbeHead

    training: list[str] = []  # the unit being fitted, while it is
    live: list[tuple[str, str, float]] = []  # (unit being fitted, unit logged, epoch) for each wandb log of an epoch
    real_fit, real_epoch = LinearProbeHead.fit, Tracker.log_epoch

    def fit(self: Any, task: Any, *args: Any) -> Any:
        training.append(f"linear_probe/shot_{task.shots}-seed_{task.seed}")
        try:
            return real_fit(self, task, *args)
        finally:
            training.pop()

    def log_epoch(self: Any, unit: str, row: dict[str, Any]) -> None:
        before = len(self.logged_epochs.get(unit, ()))
        real_epoch(self, unit, row)
        if len(self.logged_epochs[unit]) > before:  # really logged, not a repeat
            live.append((training[-1] if training else "", unit, float(row["epoch"])))

    monkeypatch.setattr(LinearProbeHead, "fit", fit)
    monkeypatch.setattr(Tracker, "log_epoch", log_epoch)
    config = make_config(
        "methods=[linear_probe]", "few_shot.shots=[1,2]", "linear_probe.epochs=3", "wandb.mode=offline"
    )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    assert main(["-q", "run", str(config_file)]) == 0
    units = ["linear_probe/shot_1-seed_1", "linear_probe/shot_2-seed_1"]
    # every epoch logged once, during its own unit's fit (not after the run, not again from the history)
    assert live == [(unit, unit, float(epoch)) for unit in units for epoch in (1, 2, 3)]
