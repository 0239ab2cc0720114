"""Caption new images with a captioner a run trained: ``load_captioner(run_dir)`` then ``caption(paths)``.

The captioner is rebuilt from the run's ``config.yaml`` and its saved trainable weights; images take
the run's path (``model.transform(read_image(path))`` then the frozen encoder), so a test image gets
the same caption here as in the run's predictions file when decoded with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from fewclip.caption.artifacts import load_caption_model
from fewclip.caption.decode import DecodeConfig, caption_tokens
from fewclip.caption.model import CaptionModel
from fewclip.data.images import UnreadableImage
from fewclip.fileio import read_csv, write_csv_or_json
from fewclip.runner.caption_config import BASELINE, load_caption_config
from fewclip.runner.layout import CaptionLayout
from fewclip.runner.predict import expand_images, read_regular_image
from fewclip.runner.run_dir import check_run_kind


class CaptionerNotTrained(LookupError):
    """The asked-for (method, seed) has no saved captioner; the message lists the ones that exist."""


@dataclass(frozen=True)
class CaptionResult:
    """One image: its caption, or why it could not be captioned."""

    path: str
    caption: str | None = None
    error: str | None = None


def trained_captioners(layout: CaptionLayout) -> list[tuple[str, int]]:
    """(method, seed) of every saved captioner (its manifest is written last), sorted."""
    root = layout.root / "models"
    found = []
    for manifest in root.glob("*/seed_*/captioner.json") if root.is_dir() else ():
        seed = manifest.parent.name.removeprefix("seed_")
        if seed.lstrip("-").isdigit() and manifest.with_suffix(".safetensors").is_file():
            found.append((manifest.parent.parent.name, int(seed)))
    return sorted(found)


def choose_captioner(
    layout: CaptionLayout, methods: Sequence[str], seeds: Sequence[int], method: str | None, seed: int | None
) -> tuple[tuple[str, int], str]:
    """The (method, seed) to use and why: the highest test CIDEr in caption_summary.csv among those that
    match the request, else the first of the config's methods with a captioner and its smallest seed."""
    available = trained_captioners(layout) + [(BASELINE, s) for s in seeds]
    matching = [u for u in available if (method is None or u[0] == method) and (seed is None or u[1] == seed)]
    if not matching:
        listed = ", ".join(f"{m} seed {s}" for m, s in available) or "none"
        asked = ", ".join(f"{k}={v}" for k, v in (("method", method), ("seed", seed)) if v is not None)
        raise CaptionerNotTrained(
            f"{layout.root}: no captioner for {asked}; available: {listed} "
            "(run `fewclip caption train` to train the config's methods)"
        )
    asked = "as asked" if method is not None and seed is not None else ""
    if layout.summary.is_file():
        scored = {
            (r["method"], int(r["seed"])): float(r["cider"]) for r in read_csv(layout.summary) if r["split"] == "test"
        }
        ranked = [u for u in matching if u in scored]
        if ranked:
            best = max(ranked, key=lambda u: scored[u])
            return best, asked or (
                f"the highest test CIDEr ({scored[best]:.3f}) in {layout.summary}"
                + (f" among {method}'s seeds" if method else "")
                + (f" for seed {seed}" if seed is not None else "")
            )
    order = {m: i for i, m in enumerate([*methods, BASELINE])}
    first = min(matching, key=lambda u: (order.get(u[0], len(order)), u[1]))
    return first, asked or (
        "no scores yet (run `fewclip caption evaluate`): the first of the config's methods with a "
        "trained captioner, its smallest seed"
    )


class Captioner:
    """A trained captioner: image files in, captions out."""

    def __init__(
        self, model: CaptionModel, settings: DecodeConfig, method: str, seed: int, batch_size: int = 32
    ) -> None:
        self.model, self.settings, self.method, self.seed, self.batch_size = model, settings, method, seed, batch_size
        self.why = ""  # which rule chose this captioner

    def caption(self, paths: Iterable[Path | str], beam: int | None = None, max_length: int | None = None) -> list[str]:
        """One caption per image file (folders expand to their images); an unreadable image is an error."""
        results = self.caption_files(paths, beam, max_length)
        failed = [r.error for r in results if r.error is not None]
        if failed:
            raise UnreadableImage("; ".join(str(e) for e in failed))
        return [r.caption or "" for r in results]

    def caption_files(
        self, paths: Iterable[Path | str], beam: int | None = None, max_length: int | None = None
    ) -> list[CaptionResult]:
        """Captions of image files (folders expand to their images); unreadable ones carry an error."""
        settings = self.settings.model_copy(
            update={k: v for k, v in (("beam_size", beam), ("max_length", max_length)) if v is not None}
        )
        results: dict[int, CaptionResult] = {}
        pixels: list[tuple[int, np.ndarray]] = []
        images = expand_images(paths)
        for index, path in enumerate(images):
            try:
                pixels.append((index, self.model.transform(read_regular_image(path))))
            except UnreadableImage as err:
                results[index] = CaptionResult(str(path), error=str(err))
        for start in range(0, len(pixels), self.batch_size):
            batch = pixels[start : start + self.batch_size]
            tokens = self.model.encode_images(torch.from_numpy(np.stack([p for _, p in batch])))
            for (index, _), text in zip(batch, caption_tokens(self.model, tokens, settings)):
                results[index] = CaptionResult(str(images[index]), caption=text)
        return [results[i] for i in range(len(images))]


def load_captioner(
    run_dir: Path | str, method: str | None = None, seed: int | None = None, device: str | None = None
) -> Captioner:
    """The captioner a caption run trained. With no method/seed: the highest test CIDEr in the run's
    caption_summary.csv; ``captioner.why`` says which rule chose it. ``device`` overrides model.device."""
    layout = CaptionLayout(Path(run_dir).expanduser())
    if not layout.config.is_file():
        raise FileNotFoundError(f"{layout.config} does not exist: {layout.root} is not a fewclip caption run directory")
    check_run_kind(layout.root, "caption", f"predict {layout.root} IMAGE...")
    config = load_caption_config(layout.config)
    (method, seed), why = choose_captioner(layout, config.methods, config.seeds, method, seed)
    overrides = {"attention_layer": config.attention.layer, **({"device": device} if device else {})}
    if method == BASELINE:
        model = CaptionModel(config.unit_model(BASELINE).model_copy(update=overrides), seed=seed)
    else:
        model = load_caption_model(layout.model_dir(method, seed), **overrides)
    captioner = Captioner(model, config.decode, method, seed, batch_size=config.batch_size)
    captioner.why = why
    return captioner


def write_caption_predictions(path: Path | str, results: Sequence[CaptionResult], captioner: Captioner) -> None:
    """``.csv``: path, caption, error; ``.json``: the captioner (method, seed) and a list of per-image results."""
    document = {
        "method": captioner.method,
        "seed": captioner.seed,
        "captions": [{"path": r.path, "caption": r.caption, "error": r.error} for r in results],
    }
    rows = [(r.path, r.caption or "", r.error or "") for r in results]
    write_csv_or_json(path, "captions", document, ("path", "caption", "error"), rows)
