"""``fewclip export``: a head a run trained, taken out of the run directory as a self-contained classifier folder
(``export_folder`` says what it holds) that ``load_classifier(DIR)`` and ``fewclip predict DIR`` load; with
``--format onnx`` the folder also holds ``classifier.onnx``, the frozen image tower and the head as one graph from
preprocessed pixels to class probabilities, for onnxruntime without fewclip or torch; with ``--merged`` (clip_lora, clip_svd)
``merged/``, the tuned CLIP with its adapters merged as the library's plain model folder, and the class text
features it scores against.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from PIL import Image
from torch import nn

from fewclip.fileio import atomic_write_bytes, read_json, write_json
from fewclip.heads.artifacts import write_tensors
from fewclip.heads.base import head_files, read_head_meta
from fewclip.heads.encoders.tuned_towers import TunedTowersHead
from fewclip.runner.export_folder import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    HEAD_STEM,
    MERGED_DIR,
    ONNX_FILE,
    TEXT_FEATURES_FILE,
)
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


ExportFormat = Literal["folder", "onnx"]
ONNX_OPSET = 18  # the opset torch 2.13's exporter writes by default; onnxruntime >= 1.16 runs it
BATCH = torch.export.Dim("batch")  # the exported graph's free batch axis


class PixelsToProbabilities(nn.Module):
    """The frozen image tower and a head that scores features, as one module: (n, 3, H, W) preprocessed pixels ->
    (n, C) softmax probabilities, computed as ``Classifier`` computes them (``encode_images`` then
    ``probabilities``)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.image_encoder = classifier.backbone.image_encoder()  # registered: its weights are the graph's
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.probabilities(self.image_encoder(pixels))


def check_onnx_exportable(classifier: Classifier) -> None:
    """Refuse heads whose scoring is not a torch function of frozen image features, and a missing ``onnx``."""
    head = classifier.head
    if head.tunes_encoders or head.needs_text_at_predict:
        why = "tunes the encoders" if head.tunes_encoders else "builds its class prompts from each image"
        merged = " (clip_lora, clip_svd: use --merged for a plain model folder)" if head.tunes_encoders else ""
        raise ValueError(
            f"--format onnx: {classifier.method} {why}, so it does not score cached features of the frozen image "
            f"tower; export it without --format onnx{merged}"
        )
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"--format onnx needs {' and '.join(missing)}: pip install 'fewclip[onnx]'")


@torch.no_grad()
def write_onnx(classifier: Classifier, path: Path) -> None:
    """``classifier`` as an ONNX graph from preprocessed pixels (n, 3, H, W), n free, to probabilities (n, C)."""
    check_onnx_exportable(classifier)
    net = PixelsToProbabilities(classifier).eval()
    blank = torch.from_numpy(classifier.backbone.transform(Image.new("RGB", (64, 64))))  # (3, H, W)
    example = blank.unsqueeze(0).repeat(2, 1, 1, 1)
    # onnxscript's graph optimiser logs each rewrite at INFO; torch.onnx warns that torchvision's ops are absent
    with quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["probabilities"],
            dynamic_shapes=({0: BATCH},),  # torch.export (dynamo): a graph that fixed the batch size fails to export
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from the loggers ``names`` while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_mergeable(classifier: Classifier) -> None:
    """Refuse ``--merged`` for a head whose training cannot be folded into the library's plain model."""
    head = classifier.head
    if isinstance(head, TunedTowersHead) and head.merges_into_model:
        return
    why = (
        "trains prompts that the library's plain model has no place for"
        if head.tunes_encoders
        else "has no adapters to merge into the model"
    )
    raise ValueError(
        f"--merged: {classifier.method} {why} (clip_lora and clip_svd merge); "
        f"export it without --merged{'' if head.tunes_encoders else ' (or with --format onnx)'}"
    )


def write_merged(classifier: Classifier, out: Path) -> None:
    """``out/merged``: the tuned CLIP with its adapters merged, as the library's own model folder; and
    ``out/class_text_features.safetensors``: the class text features it scores against, (C, d) normalised, and
    the logit scale (logits = logit_scale * normalize(image_features) @ class_text_features.T)."""
    head = classifier.head
    assert isinstance(head, TunedTowersHead)  # check_mergeable
    head.merged_towers().save_pretrained(out / MERGED_DIR)
    tensors = {"class_text_features": head.scoring_text().float().cpu(), "logit_scale": head.logit_scale_.reshape(1)}
    metadata = {"class_names": json.dumps(classifier.class_names), "prompts": json.dumps(head.prompts_)}
    write_tensors(out / TEXT_FEATURES_FILE, tensors, metadata, self_check=True)


def export_classifier(
    run_dir: Path | str,
    out: Path | str,
    method: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
    export_format: ExportFormat = "folder",
    merged: bool = False,
) -> Classifier:
    """Write the head ``load_classifier(run_dir, method, shots, seed)`` chooses to the folder ``out``: its files
    copied byte for byte, ``classifier.onnx`` for ``export_format="onnx"``, ``merged/`` and the class text features
    for ``merged`` (``write_merged``), then ``classifier.json`` (the model
    reference and fingerprint, class names, templates, preprocessing, why this head). Returns the classifier,
    loaded on the CPU (and checked against its model) from the run."""
    layout, out = RunLayout(Path(run_dir).expanduser()), Path(out).expanduser()
    check_out(out)
    classifier = load_classifier(layout.root, method, shots, seed, device="cpu")  # refuses another model's head
    if export_format == "onnx":
        check_onnx_exportable(classifier)
    if merged:
        check_mergeable(classifier)
    stem = layout.heads / classifier.unit
    meta = read_head_meta(stem)
    assert meta is not None, f"{stem}.json vanished while exporting it"  # load_classifier has just read it
    out.mkdir(parents=True, exist_ok=True)
    for source, target in zip(head_files(stem), head_files(out / HEAD_STEM)):
        atomic_write_bytes(target, source.read_bytes())
    if export_format == "onnx":
        write_onnx(classifier, out / ONNX_FILE)
    if merged:
        write_merged(classifier, out)
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
            # the run's model block, on whatever device the loading machine has (load_classifier's device overrides)
            "model": {**classifier.backbone.config.model_dump(mode="json"), "device": "auto"},
            "fingerprint": fingerprint,
            "preprocessing": fingerprint.get("preprocess"),
            "onnx": ONNX_FILE if export_format == "onnx" else None,
            "merged": {"model": MERGED_DIR, "class_text_features": TEXT_FEATURES_FILE} if merged else None,
            "why": classifier.why,
            "recommendation": run_recommendation(layout, classifier),
            "source_run": str(layout.root.resolve()),
        },
    )
    return classifier
