"""Where every stage reads and writes inside a run directory (the files are the stages' interface).

``RunFiles`` holds what every kind of run has (the config, fewclip's marker and lock, data, results, the
report); ``RunLayout`` adds classification's files, ``CaptionLayout`` captioning's. ``run_root`` is the one
place a config's ``output.dir`` becomes a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def run_root(config: Any) -> Path:
    """The run directory of a config (classification's or captioning's): ``output.dir``, ``~`` expanded."""
    return Path(config.output.dir).expanduser()


@dataclass(frozen=True)
class RunFiles:
    """The files every run directory has, whatever its kind."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config the run was (last) given."""
        return self.root / "config.yaml"

    @property
    def marker(self) -> Path:
        """Written when fewclip creates the run directory: fewclip writes into no other non-empty folder."""
        return self.root / ".fewclip-run.json"

    @property
    def lock(self) -> Path:
        """flock'ed by the command using the run directory; holds that command's pid."""
        return self.root / ".fewclip-run.lock"

    @property
    def data(self) -> Path:
        """prepare's output: what the later stages read instead of the source."""
        return self.root / "data"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


@dataclass(frozen=True)
class RunLayout(RunFiles):
    """A classification run: prepared data, few-shot splits, heads, results, predictions."""

    @property
    def classes(self) -> Path:
        return self.data / "classes.json"

    @property
    def train_full(self) -> Path:
        return self.data / "train_full.csv"

    @property
    def val_full(self) -> Path:
        """The dataset's own validation split (sources with has_val_split, e.g. CoOp's split files)."""
        return self.data / "val_full.csv"

    @property
    def test(self) -> Path:
        return self.data / "test.csv"

    @property
    def exclusions(self) -> Path:
        return self.root / "exclusions.csv"

    def split_dir(self, seed: int, shots: int) -> Path:
        return self.root / "splits" / f"seed_{seed}" / f"shot_{shots}"

    @property
    def heads(self) -> Path:
        return self.root / "heads"

    @property
    def summary(self) -> Path:
        return self.results / "summary.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def unit_results(self, method: str, shots: int, seed: int, split: str) -> Path:
        """Per-unit evaluation artifacts: confusion.{csv,png}, confused_pairs.csv, mistakes.csv,
        calibration.csv, reliability.png."""
        return self.results / "units" / f"{unit_name(method, shots, seed)}-{split}"

    def unit_evaluation(self, method: str, shots: int, seed: int) -> Path:
        """One unit's evaluation record: the key it was computed under and its summary/per-class/template rows."""
        return self.results / "units" / f"{unit_name(method, shots, seed)}.eval.json"

    def saliency(self, method: str, shots: int, seed: int) -> Path:
        """saliency.png (overlays) and saliency.csv (path, label, pred) for a sample of test images."""
        return self.results / "saliency" / unit_name(method, shots, seed)

    def target(self, label: str) -> "RunLayout":
        """An eval_on target's own prepared data (``data/classes.json``, ``data/test.csv``) under ``targets/``."""
        return RunLayout(self.root / "targets" / label)

    @property
    def targets(self) -> Path:
        """What the evaluate stage found for each eval_on target: its protocol, classes and the methods that
        cannot classify its classes (``fewclip.data.eval_targets``)."""
        return self.results / "targets.json"

    @property
    def aggregate(self) -> Path:
        """Tables and plots over seeds and methods, built from the CSVs above."""
        return self.results / "aggregate"

    @property
    def answer(self) -> Path:
        """The report's answer (headline, per-budget verdicts and tests), computed once by the report stage."""
        return self.results / "answer.json"

    @property
    def recommendation(self) -> Path:
        """The recommended head (method, shots, seed, why) that ``predict`` uses by default."""
        return self.results / "recommendation.json"


def unit_name(method: str, shots: int, seed: int) -> str:
    """The file stem of one trained head: ``linear_probe/shot_16-seed_1``."""
    return f"{method}/shot_{shots}-seed_{seed}"


CAPTION_SUMMARY_COLUMNS = (
    "method",
    "seed",
    "split",
    "cider",
    "clipscore",
    "refclipscore",
    "bleu4",
    "trainable_params",
    "train_seconds",
    "n_eval",
)
CAPTION_PREDICTION_COLUMNS = ("image", "caption", "references", "clipscore")
REFERENCE_SEPARATOR = " | "  # joins an image's reference captions in the references column


@dataclass(frozen=True)
class CaptionLayout(RunFiles):
    """A captioning run (prepare -> encode -> train -> evaluate -> report): split files, captioners, results."""

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
    def summary(self) -> Path:
        """One row per (method, seed, split): CAPTION_SUMMARY_COLUMNS; the `untrained` baseline included."""
        return self.results / "caption_summary.csv"

    def history(self, method: str, seed: int) -> Path:
        """Per-epoch training history: epoch, train_loss, lr, val_cider, seconds."""
        return self.results / "history" / method / f"seed_{seed}.csv"

    def predictions(self, method: str, seed: int, split: str = "test") -> Path:
        """Per image: CAPTION_PREDICTION_COLUMNS."""
        return self.results / "predictions" / method / f"seed_{seed}-{split}.csv"

    def attention_dir(self, method: str, seed: int) -> Path:
        """Word-by-word cross-attention panels (<image stem>.png) and attention.json: which images (highest
        and lowest CLIPScore, fixed ones), their captions, CLIPScores and panel files."""
        return self.results / "attention" / method / f"seed_{seed}"

    @property
    def answer(self) -> Path:
        """Which captioning method wins and the numbers behind it (``fewclip.report.caption_answer``)."""
        return self.results / "caption_answer.json"
