"""Where the captioning stages read and write inside a caption run directory (the files are the
stages' interface: prepare -> encode -> train -> evaluate -> report)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUMMARY_COLUMNS = ("method", "seed", "split", "cider", "clipscore", "refclipscore", "bleu4", "trainable_params",
                   "train_seconds", "n_eval")
PREDICTION_COLUMNS = ("image", "caption", "references", "clipscore")  # references joined with " | "


@dataclass(frozen=True)
class CaptionLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        """prepare: the images (or links to them) and the split caption files."""
        return self.root / "data"

    def split_file(self, split: str) -> Path:
        """COCO-format captions of one split (train / val / test), with each image's sha1."""
        return self.data / f"{split}.json"

    @property
    def skipped(self) -> Path:
        """Unreadable images, skipped: image, reason."""
        return self.data / "skipped.csv"

    def model_dir(self, method: str, seed: int) -> Path:
        """A trained captioner: trainable weights (safetensors) + manifest; the resume checkpoint beside."""
        return self.root / "models" / method / f"seed_{seed}"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def summary(self) -> Path:
        """One row per (method, seed, split): SUMMARY_COLUMNS; the `untrained` baseline included."""
        return self.results / "caption_summary.csv"

    def history(self, method: str, seed: int) -> Path:
        """Per-epoch training history: epoch, train_loss, lr, val_cider, seconds."""
        return self.results / "history" / method / f"seed_{seed}.csv"

    def predictions(self, method: str, seed: int, split: str = "test") -> Path:
        """Per image: PREDICTION_COLUMNS."""
        return self.results / "predictions" / method / f"seed_{seed}-{split}.csv"

    def attention_dir(self, method: str, seed: int) -> Path:
        """Word-by-word cross-attention panels (<image stem>.png) and attention.json: which images (highest
        and lowest CLIPScore, fixed ones), their captions, CLIPScores and panel files."""
        return self.results / "attention" / method / f"seed_{seed}"

    @property
    def report(self) -> Path:
        return self.root / "report.html"
