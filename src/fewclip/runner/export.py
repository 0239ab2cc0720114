"""``fewclip export``: a head a run trained, taken out of the run directory as a self-contained classifier folder
(``export_folder`` says what it holds) that ``load_classifier(DIR)`` and ``fewclip predict DIR`` load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewclip.fileio import atomic_write_bytes, read_json, write_json
from fewclip.heads.base import head_files, read_head_meta
from fewclip.runner.export_folder import EXPORT_FILE, EXPORT_FORMAT, EXPORT_VERSION, HEAD_STEM
from fewclip.runner.layout import RunLayout
from fewclip.runner.predict import Classifier, load_classifier
from fewclip.version import __version__


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file or a folder with something in it (an export is never merged into one)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new folder")


def run_recommendation(layout: RunLayout, classifier: Classifier) -> dict[str, Any] | None:
    """The run's results/recommendation.json when it names the exported head, else None."""
    if not layout.recommendation.is_file():
        return None
    recommendation: dict[str, Any] = read_json(layout.recommendation)
    unit = (recommendation.get("method"), recommendation.get("shots"), recommendation.get("seed"))
    return recommendation if unit == (classifier.method, classifier.shots, classifier.seed) else None


def export_classifier(
    run_dir: Path | str, out: Path | str, method: str | None = None, shots: int | None = None, seed: int | None = None
) -> Classifier:
    """Write the head ``load_classifier(run_dir, method, shots, seed)`` chooses to the folder ``out``: its files
    copied byte for byte, then ``classifier.json`` (the model reference and fingerprint, class names, templates,
    preprocessing, why this head). Returns the classifier, loaded (and checked against its model) from the run."""
    layout, out = RunLayout(Path(run_dir).expanduser()), Path(out).expanduser()
    check_out(out)
    classifier = load_classifier(layout.root, method, shots, seed)  # refuses a head of another model's features
    stem = layout.heads / classifier.unit
    meta = read_head_meta(stem)
    assert meta is not None, f"{stem}.json vanished while exporting it"  # load_classifier has just read it
    out.mkdir(parents=True, exist_ok=True)
    for source, target in zip(head_files(stem), head_files(out / HEAD_STEM)):
        atomic_write_bytes(target, source.read_bytes())
    fingerprint = classifier.backbone.fingerprint()
    write_json(
        out / EXPORT_FILE,
        {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "fewclip_version": __version__,
            "method": classifier.method,
            "shots": classifier.shots,
            "seed": classifier.seed,
            "class_names": classifier.class_names,
            "templates": meta.get("templates"),  # None: a head saved before they were recorded
            "model": classifier.backbone.config.model_dump(mode="json"),  # the run's model block
            "fingerprint": fingerprint,
            "preprocessing": fingerprint.get("preprocess"),
            "why": classifier.why,
            "recommendation": run_recommendation(layout, classifier),
            "source_run": str(layout.root.resolve()),
        },
    )
    return classifier
