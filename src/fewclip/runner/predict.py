"""Classify new images with a head a run saved: ``load_classifier(run_dir)`` then ``predict(paths)``.

The backbone comes from the run's ``config.yaml`` and images take the training feature path
(``backbone.transform(read_image(path))`` then ``backbone.encode_images``), so a test image gets the
same label here as in the run's ``predictions/`` files.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.data.images import UnreadableImage, read_image
from fewclip.features import fingerprint_key
from fewclip.fileio import read_json, write_csv_or_json
from fewclip.heads import load_head
from fewclip.runner.config import load_config
from fewclip.runner.export_folder import HEAD_STEM, check_model, is_export, read_export
from fewclip.runner.layout import RunLayout, unit_name
from fewclip.runner.run_dir import check_run_kind
from fewclip.runner.skeleton import checked_cache_dir

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_HEAD_FILE = re.compile(r"shot_(\d+)-seed_(\d+)\.json")


class HeadNotTrained(LookupError):
    """The asked-for (method, shots, seed) has no saved head; the message lists the ones that exist."""


class HeadMismatch(ValueError):
    """A saved head whose recorded features come from another backbone than the one predict would use."""


@dataclass(frozen=True)
class Prediction:
    """One image: its top-k (label, probability), most likely first, or why it could not be classified."""

    path: str
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top_k[0][0] if self.top_k else None


def trained_heads(run_dir: Path | str) -> list[tuple[str, int, int]]:
    """(method, shots, seed) of every complete head under ``<run_dir>/heads`` (its JSON is written last)."""
    heads_dir = RunLayout(Path(run_dir)).heads
    found = []
    if heads_dir.is_dir():
        for method_dir in heads_dir.iterdir():
            for file in method_dir.glob("*.json") if method_dir.is_dir() else ():
                match = _HEAD_FILE.fullmatch(file.name)
                if match and file.with_suffix(".safetensors").is_file():
                    found.append((method_dir.name, int(match[1]), int(match[2])))
    return sorted(found)


def describe_heads(heads: Sequence[tuple[str, int, int]]) -> str:
    if not heads:
        return "none (run `fewclip train` first)"
    return ", ".join(f"{method} shots={shots} seed={seed}" for method, shots, seed in heads)


def choose_head(
    heads: Sequence[tuple[str, int, int]],
    methods: Sequence[str],
    method: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
) -> tuple[str, int, int]:
    """Pick a trained head: ``method`` defaults to the first of ``methods`` with a head that matches
    ``shots``/``seed``, ``shots`` to the largest trained for it, ``seed`` to the smallest."""
    matching = [h for h in heads if (shots is None or h[1] == shots) and (seed is None or h[2] == seed)]
    if method is None:
        method = next((m for m in methods if any(h[0] == m for h in matching)), None)
    candidates = [h for h in matching if h[0] == method]
    if not candidates:
        asked = ", ".join(
            f"{k}={v}" for k, v in (("method", method), ("shots", shots), ("seed", seed)) if v is not None
        )
        raise HeadNotTrained(f"no trained head for {asked or 'this run'}; trained heads: {describe_heads(heads)}")
    best_shots = max(h[1] for h in candidates)
    return min((h for h in candidates if h[1] == best_shots), key=lambda h: h[2])


def expand_images(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given (whatever their suffix); folders become their images by suffix, recursive, sorted.

    Entries that are not folders are kept even when they are not regular files (a FIFO named ``x.png``), so
    that ``read_regular_image`` reports them by name instead of them vanishing from the output."""
    images: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
        else:
            images.append(path)  # a missing file is reported by predict, by name
    return images


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_image(path: Path | str) -> Image.Image:
    """``read_image`` of a regular file (symlinks followed); anything else is ``UnreadableImage`` naming it.

    Reading a FIFO blocks until something writes to it, and a device such as /dev/zero never ends, so
    predict would hang on such a path instead of classifying the other images."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return read_image(path)  # missing or not allowed: read_image names the path and the reason
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
        raise UnreadableImage(f"{path}: not a regular file ({kind}); only regular image files are read")
    return read_image(path)


class Classifier:
    """A saved head on its frozen backbone: image files in, top-k labels with probabilities out."""

    def __init__(
        self, backbone: Any, head: Any, class_names: list[str], method: str, shots: int, seed: int, batch_size: int = 64
    ) -> None:
        if head.needs_text_at_predict:  # prompts that depend on the image (CoCoOp) need the text tower
            head.attach(backbone, class_names)
        self.backbone, self.head, self.class_names = backbone, head, list(class_names)
        self.method, self.shots, self.seed, self.batch_size = method, shots, seed, batch_size
        self.why = ""  # why this head: the run's recommendation, the fallback rule, or the caller's choice

    @property
    def unit(self) -> str:
        return unit_name(self.method, self.shots, self.seed)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(n, dim) unnormalised image features -> (n, C) softmax over the head's classes."""
        return torch.softmax(self.head.logits(features).float(), dim=-1)

    def predict(self, paths: Iterable[Path | str], top_k: int = 5, progress: bool = False) -> list[Prediction]:
        """Top-k labels of each image (files, or folders of images); unreadable ones carry an error."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        images = expand_images(paths)
        results: dict[int, Prediction] = {}
        batch: list[tuple[int, np.ndarray]] = []
        bar = tqdm(total=len(images), desc="predict", unit="img", disable=not progress)
        for index, path in enumerate(images):
            try:
                batch.append((index, self.backbone.transform(read_regular_image(path))))
            except UnreadableImage as err:
                results[index] = Prediction(str(path), error=str(err))
            if batch and (len(batch) == self.batch_size or index == len(images) - 1):
                results.update(self._classify(images, batch, top_k))
                batch = []
            bar.update(1)
        bar.close()
        return [results[i] for i in range(len(images))]

    def _classify(self, images: list[Path], batch: list[tuple[int, np.ndarray]], top_k: int) -> dict[int, Prediction]:
        pixels = torch.from_numpy(np.stack([px for _, px in batch]))
        if self.head.tunes_encoders:  # its own tuned towers, not the frozen backbone's features
            probs = torch.softmax(self.head.image_logits(pixels).float(), dim=-1)
        else:
            probs = self.probabilities(self.backbone.encode_images(pixels))
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=-1)  # sorted, most likely first
        return {
            i: Prediction(str(images[i]), [(self.class_names[c], float(p)) for p, c in zip(v.tolist(), k.tolist())])
            for (i, _), v, k in zip(batch, values, indices)
        }


def recommended_head(
    layout: RunLayout, heads: Sequence[tuple[str, int, int]]
) -> tuple[tuple[str, int, int], str] | None:
    """The report's recommended (method, shots, seed) and why, if results/recommendation.json names a trained head."""
    if not layout.recommendation.is_file():
        return None
    rec = read_json(layout.recommendation)
    unit = (rec["method"], int(rec["shots"]), int(rec["seed"]))
    if unit not in heads:
        return None
    return unit, f"the run's recommendation ({layout.recommendation}): {rec['why']}"


def default_head(
    layout: RunLayout, methods: Sequence[str], method: str | None, shots: int | None, seed: int | None
) -> tuple[tuple[str, int, int], str]:
    """The head ``load_classifier`` uses and why: the recommendation when nothing is asked for, else ``choose_head``."""
    heads = trained_heads(layout.root)
    if method is None and shots is None and seed is None:
        recommended = recommended_head(layout, heads)
        if recommended is not None:
            return recommended
        unit = choose_head(heads, methods, method, shots, seed)
        return unit, (
            "no recommendation in the run (run `fewclip report`): the first of the config's methods "
            "with a trained head, its largest shot budget, its smallest seed"
        )
    return choose_head(heads, methods, method, shots, seed), "as asked"


def classes_note(subsample: str, class_names: Sequence[str]) -> str:
    """In a base-to-new (or base / new) run, the head knows only part of the classes: say so and name them."""
    if subsample == "all":
        return ""
    part = "new" if subsample == "new" else "base"
    return (
        f"this run trained on the {part} classes only (splits.subsample={subsample}); the head knows "
        f"{len(class_names)} classes: {', '.join(class_names)}"
    )


def load_classifier(
    run_dir: Path | str,
    method: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> Classifier:
    """The classifier a run trained. With no method/shots/seed: the run's recommended head
    (results/recommendation.json, written by the report), else the first of the run's methods with a trained
    head, its largest shot budget, its smallest seed. ``classifier.why`` says which rule chose it.
    ``device`` overrides the run's ``model.device``. ``run_dir`` may also be a folder ``fewclip export`` wrote
    (``load_exported``)."""
    if is_export(Path(run_dir).expanduser()):
        return load_exported(Path(run_dir).expanduser(), method, shots, seed, device)
    layout = RunLayout(Path(run_dir).expanduser())
    if not layout.config.is_file():
        raise FileNotFoundError(f"{layout.config} does not exist: {layout.root} is not a fewclip run directory")
    check_run_kind(layout.root, "classification", f"predict {layout.root} IMAGE...")
    config = load_config(layout.config)
    (method, shots, seed), why = default_head(layout, config.methods, method, shots, seed)
    head, meta = load_head(layout.heads / unit_name(method, shots, seed))
    model = config.model if device is None else config.model.model_copy(update={"device": device})
    cache_root = checked_cache_dir(config)
    backbone = load_backbone(model, cache_dir=cache_root)
    check_features_key(meta, backbone, layout, unit_name(method, shots, seed), cache_root)
    classifier = Classifier(
        backbone, head, meta["class_names"], method, shots, seed, batch_size=config.model.batch_size
    )
    note = classes_note(config.splits.subsample, meta["class_names"])
    classifier.why = why + (f"; {note}" if note else "")
    return classifier


def load_exported(
    folder: Path,
    method: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> Classifier:
    """The classifier of an exported folder, on the model its ``classifier.json`` names (refused, naming what
    differs, when that model's fingerprint is not the one the head was trained on). ``method``/``shots``/``seed``,
    when given, must be the exported head's."""
    document = read_export(folder)
    unit = (document["method"], int(document["shots"]), int(document["seed"]))
    if any(asked is not None and asked != have for asked, have in zip((method, shots, seed), unit)):
        raise HeadNotTrained(f"{folder} holds one head, {describe_heads([unit])}; drop --method/--shots/--seed")
    head, meta = load_head(folder / HEAD_STEM)
    model = ModelConfig(**document["model"])
    backbone = load_backbone(model if device is None else model.model_copy(update={"device": device}))
    check_model(document, backbone, folder)
    classifier = Classifier(backbone, head, meta["class_names"], *unit, batch_size=model.batch_size)
    classifier.why = f"exported to {folder}: {document['why']}"
    return classifier


def check_features_key(meta: dict[str, Any], backbone: Any, layout: RunLayout, unit: str, cache_root: Path) -> None:
    """Refuse a head trained on another backbone's features than the one the run's config.yaml names now
    (the config was replaced after training); heads saved before features_key was recorded are trusted."""
    trained_on = meta.get("features_key")
    current = fingerprint_key(backbone.fingerprint())
    if trained_on is None or trained_on == current:
        return
    recorded = cache_root / "features" / trained_on / "fingerprint.json"
    trained_model = f" (model {read_json(recorded).get('model')!r})" if recorded.is_file() else ""
    raise HeadMismatch(
        f"{layout.heads / unit}.json was trained on features {trained_on}{trained_model}, but {layout.config} "
        f"names model {backbone.fingerprint().get('model')!r} (features {current}): the run's config was replaced "
        "after training. Run `fewclip train` with the run's current config, or use a run directory whose "
        "config trained this head"
    )


def write_predictions(path: Path | str, results: Sequence[Prediction], classifier: Classifier) -> None:
    """``.csv``: one row per (image, rank) -- path, rank, label, probability, error (one row with the
    error for an image that could not be read); ``.json``: the head and a list of per-image results."""
    document = {
        "method": classifier.method,
        "shots": classifier.shots,
        "seed": classifier.seed,
        "predictions": [
            {"path": r.path, "top_k": [{"label": label, "probability": p} for label, p in r.top_k], "error": r.error}
            for r in results
        ],
    }
    rows: list[tuple[str, int | str, str, str, str]] = []
    for r in results:
        rows += [(r.path, rank, label, f"{p:.6f}", "") for rank, (label, p) in enumerate(r.top_k, 1)]
        rows += [(r.path, "", "", "", r.error)] if r.error is not None else []
    write_csv_or_json(path, "predictions", document, ("path", "rank", "label", "probability", "error"), rows)
