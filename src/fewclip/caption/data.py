"""Caption data: COCO caption files, CSVs, Hugging Face datasets and the world, as images with references.

Every loader returns ``CaptionItem``s (one per image, all its captions as references) and the images it
had to skip because they do not decode. Input that cannot be right is an error naming the file and the
entry: a caption pointing to a missing image, an image without a caption, an empty caption, an image file
that does not exist, a JSON file that is not in COCO format. The sources (``world``, ``coco``, ``csv``, ``hf``)
are registered in ``CAPTION_SOURCES`` (``@register_caption_source`` above each one's loader); the config's
``data.source`` is one of their names. ``load_caption_data`` splits the images into train / val / test by image
content, so an image's references never straddle two splits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import Field, field_validator, model_validator

from fewclip.configbase import ConfigBlock
from fewclip.data.images import UnreadableImage, image_format_suffix, read_file, verify_image
from fewclip.data.sources.csv_source import read_csv_text
from fewclip.data.sources.hf import script_dataset_advice
from fewclip.fileio import atomic_write_bytes
from fewclip.registry import Registry, unknown_name_message
from fewclip.world.captions import IMAGE_DIR, WorldCaptionConfig, write_world_captions

FORMAT_HINT = (
    'expected COCO caption format: {"images": [{"id": ..., "file_name": ...}, ...], '
    '"annotations": [{"image_id": ..., "caption": ...}, ...]}'
)


@dataclass(frozen=True)
class CaptionItem:
    """One image and its reference captions (cleaned). ``sha1`` (of the image bytes) is set once read."""

    image_id: str
    path: Path
    captions: tuple[str, ...]
    sha1: str | None = None


@dataclass(frozen=True)
class SkippedImage:
    """An image left out because it does not decode; ``where`` names its entry in the source."""

    image_id: str
    where: str
    reason: str


@dataclass(frozen=True)
class LoadedCaptions:
    """A loader's result; ``where`` names each image's entry in the source (image id -> 'file: entry')."""

    items: list[CaptionItem]
    skipped: list[SkippedImage]
    where: dict[str, str] = field(default_factory=dict)


def clean_caption(text: Any, where: str) -> str:
    """Collapse runs of spaces, tabs and newlines to one space and strip; an empty result is an error
    naming ``where`` (the file and entry)."""
    if not isinstance(text, str):
        raise ValueError(
            f"{where}: the caption is {type(text).__name__} {text!r}, not text; give every caption as a string"
        )
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError(f"{where}: empty caption ({text!r}); write the caption or remove the entry")
    return cleaned


def _listed(lines: Sequence[str], limit: int = 10) -> str:
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n  " + "\n  ".join(lines[:limit]) + more


def _check_files_exist(items: Sequence[CaptionItem], where: dict[str, str], source: Path | str) -> None:
    missing = [f"{where[item.image_id]}: {item.path}" for item in items if not item.path.is_file()]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} image file(s) do not exist:{_listed(missing)}\n"
            "Fix image_dir or the file names (or remove those entries), then load again."
        )


def _check_one(item: CaptionItem, where: str) -> CaptionItem | SkippedImage:
    try:
        data = read_file(item.path)
        verify_image(data, where)
    except UnreadableImage as err:
        return SkippedImage(item.image_id, where, str(err))
    return replace(item, sha1=hashlib.sha1(data).hexdigest())


def check_images(items: Sequence[CaptionItem], where: dict[str, str] | None = None, workers: int = 2) -> LoadedCaptions:
    """Read and decode every image once: readable ones come back with their ``sha1``, the rest as skipped
    (as the classification prepare stage does: listed, not fatal)."""
    where = where or {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        checked = list(pool.map(lambda item: _check_one(item, where.get(item.image_id, str(item.path))), items))
    return LoadedCaptions(
        [c for c in checked if isinstance(c, CaptionItem)], [c for c in checked if isinstance(c, SkippedImage)], where
    )


def _coco_entries(captions_json: Path) -> tuple[list[Any], list[Any]]:
    if not captions_json.is_file():
        raise FileNotFoundError(f"caption file {captions_json} does not exist")
    try:
        data = json.loads(captions_json.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{captions_json}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); {FORMAT_HINT}"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{captions_json}: not UTF-8 text; save it as UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{captions_json}: not a COCO caption file: the top level is a {type(data).__name__}, "
            f"not an object; {FORMAT_HINT}"
        )
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(
                f"{captions_json}: not a COCO caption file: no {key!r} key (top-level keys: "
                f"{sorted(data)}); {FORMAT_HINT}"
            )
        if not isinstance(data[key], list):
            raise ValueError(f"{captions_json}: {key!r} must be a list, got {type(data[key]).__name__}; {FORMAT_HINT}")
    return data["images"], data["annotations"]


def _entry_field(entry: Any, key: str, where: str, file: Path) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{file}: {where} has no {key!r} key (found {found}); {FORMAT_HINT}")
    return entry[key]


def load_coco(captions_json: Path | str, image_dir: Path | str, verify: bool = True) -> LoadedCaptions:
    """A COCO caption file (``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``caption``)
    over ``image_dir``. ``verify``: decode every image (unreadable ones skipped); else only check they exist."""
    file, root = Path(captions_json).expanduser(), Path(image_dir).expanduser()
    images, annotations = _coco_entries(file)
    by_id: dict[str, tuple[int, str]] = {}
    by_file: dict[str, int] = {}
    for index, entry in enumerate(images):
        image_id = str(_entry_field(entry, "id", f"images[{index}]", file))
        file_name = str(_entry_field(entry, "file_name", f"images[{index}]", file))
        if image_id in by_id:
            raise ValueError(
                f"{file}: images[{index}] repeats id {image_id} of images[{by_id[image_id][0]}]; "
                "give each image its own id"
            )
        if file_name in by_file:  # one picture under two ids could land in two splits: a leak
            raise ValueError(
                f"{file}: images[{index}] (id {image_id}) names file {file_name!r} as images"
                f"[{by_file[file_name]}] does; list each image once and give it all its captions"
            )
        by_id[image_id], by_file[file_name] = (index, file_name), index
    captions: dict[str, list[str]] = {image_id: [] for image_id in by_id}
    for index, entry in enumerate(annotations):
        image_id = str(_entry_field(entry, "image_id", f"annotations[{index}]", file))
        text = _entry_field(entry, "caption", f"annotations[{index}]", file)
        if image_id not in by_id:
            raise ValueError(
                f"{file}: annotations[{index}] (caption {str(text)[:60]!r}) points to image_id "
                f"{image_id}, which is not in 'images'; add the image or remove the caption"
            )
        captions[image_id].append(clean_caption(text, f"{file}: annotations[{index}] (image_id {image_id})"))
    uncaptioned = [
        f"images[{i}] (id {image_id}, file_name {name!r})"
        for image_id, (i, name) in by_id.items()
        if not captions[image_id]
    ]
    if uncaptioned:
        raise ValueError(
            f"{file}: {len(uncaptioned)} image(s) have no caption in 'annotations':"
            f"{_listed(uncaptioned)}\nAdd captions for them or remove them from 'images'."
        )
    items = [CaptionItem(image_id, root / name, tuple(captions[image_id])) for image_id, (_, name) in by_id.items()]
    where = {image_id: f"{file}: images[{i}] (id {image_id})" for image_id, (i, _) in by_id.items()}
    _check_files_exist(items, where, file)
    return check_images(items, where) if verify else LoadedCaptions(items, [], where)


def load_csv(
    path: Path | str,
    image_dir: Path | str | None = None,
    path_column: str = "path",
    caption_column: str = "caption",
    verify: bool = True,
) -> LoadedCaptions:
    """A CSV with one row per (image, caption); several rows of one image are its references. Relative image
    paths resolve against ``image_dir`` (default: the CSV's folder)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"caption CSV {file} does not exist")
    root = Path(image_dir).expanduser() if image_dir is not None else file.parent
    reader = csv.DictReader(io.StringIO(read_csv_text(file), newline=""))
    missing = [c for c in (path_column, caption_column) if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(
            f"{file}: missing column(s) {missing}; found {reader.fieldnames}; the header must name "
            f"the image column ({path_column!r}) and the caption column ({caption_column!r})"
        )
    captions: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        raw = (row[path_column] or "").strip()
        if not raw:
            raise ValueError(f"{file}:{line}: empty {path_column!r}; every row needs an image path")
        captions.setdefault(raw, []).append(clean_caption(row[caption_column] or "", f"{file}:{line} ({raw})"))
        first_line.setdefault(raw, line)
    items = [
        CaptionItem(raw, Path(raw) if Path(raw).is_absolute() else root / raw, tuple(texts))
        for raw, texts in captions.items()
    ]
    where = {raw: f"{file}:{line}" for raw, line in first_line.items()}
    _check_files_exist(items, where, file)
    return check_images(items, where) if verify else LoadedCaptions(items, [], where)


def hf_caption_texts(cell: Any, where: str) -> list[str]:
    """A caption cell of a dataset row: one string or a list of strings (each cleaned)."""
    texts = cell if isinstance(cell, (list, tuple)) else [cell]
    if not texts:
        raise ValueError(f"{where}: the image has no caption (empty list); remove the row or add captions")
    return [clean_caption(text, f"{where} caption {i}" if len(texts) > 1 else where) for i, text in enumerate(texts)]


def load_hf(
    dataset_id: str,
    split: str,
    image_column: str,
    caption_column: str,
    out_dir: Path | str,
    name: str | None = None,
    revision: str | None = None,
) -> LoadedCaptions:
    """A Hugging Face dataset with an image column and a caption column (string or list of strings).

    Images are written to ``out_dir/images`` named by content (as the classification prepare stage does);
    rows with the same image bytes are one image whose captions are all its references (datasets with one
    row per caption), so no image's references straddle two splits.
    """
    import datasets  # imported when a dataset is loaded: the import takes seconds (as fewclip.data.sources.hf)

    try:
        ds = datasets.load_dataset(dataset_id, name, revision=revision, split=split)
    except ValueError as err:
        raise ValueError(f"caption data: could not load split {split!r} of {dataset_id}: {err}") from err
    except RuntimeError as err:
        if "Dataset scripts are no longer supported" not in str(err):
            raise
        raise ValueError(script_dataset_advice(dataset_id, datasets.__version__, err)) from None
    for key, column in (("image_column", image_column), ("caption_column", caption_column)):
        if column not in ds.column_names:
            raise ValueError(
                f"caption data.{key}: column {column!r} not in {dataset_id}[{split}]; columns: {ds.column_names}"
            )
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    folder = Path(out_dir) / "images"
    captions: dict[str, list[str]] = {}
    paths: dict[str, Path] = {}
    skipped: list[SkippedImage] = []
    for row, record in enumerate(ds):
        where = f"{dataset_id}[{split}][{row}]"
        texts = hf_caption_texts(record[caption_column], where)
        try:
            data = _cell_bytes(record[image_column], where)
            verify_image(data, where)
        except UnreadableImage as err:
            skipped.append(SkippedImage(where, where, str(err)))
            continue
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 not in paths:
            paths[sha1] = folder / f"{sha1[:20]}{image_format_suffix(data)}"
            if not paths[sha1].is_file():
                atomic_write_bytes(paths[sha1], data)
        captions.setdefault(sha1, []).extend(texts)
    items = [CaptionItem(sha1[:20], paths[sha1], tuple(texts), sha1) for sha1, texts in captions.items()]
    return LoadedCaptions(items, skipped)


def _cell_bytes(cell: Any, where: str) -> bytes:
    if not isinstance(cell, dict):
        raise UnreadableImage(f"{where}: the image cell is {type(cell).__name__}, not an image")
    if cell.get("bytes") is not None:
        return cell["bytes"]
    if cell.get("path"):
        return read_file(cell["path"])
    raise UnreadableImage(f"{where}: the image cell holds neither bytes nor a path")


# --- the sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSource:
    """One kind of caption data: its loader and the ``data`` keys it needs."""

    name: str
    load: Callable[["CaptionDataConfig", Path], LoadedCaptions]  # (data block, the run's data folder)
    needs: tuple[str, ...] = ()  # keys of the data block it cannot do without
    verifies_images: bool = False  # it decodes every image as it loads (else the images are checked after)


CAPTION_SOURCES: Registry[CaptionSource] = Registry("caption data source")


def register_caption_source(
    name: str, needs: tuple[str, ...] = (), verifies_images: bool = False
) -> Callable[
    [Callable[["CaptionDataConfig", Path], LoadedCaptions]], Callable[["CaptionDataConfig", Path], LoadedCaptions]
]:
    """Function decorator: register ``load`` as the caption source ``name``."""

    def register(
        load: Callable[["CaptionDataConfig", Path], LoadedCaptions],
    ) -> Callable[["CaptionDataConfig", Path], LoadedCaptions]:
        CAPTION_SOURCES.register(name, CaptionSource(name, load, needs, verifies_images))
        return load

    return register


def list_caption_sources() -> list[str]:
    return CAPTION_SOURCES.names()


@register_caption_source("world")
def world_captions(cfg: "CaptionDataConfig", base: Path) -> LoadedCaptions:
    """The embedded world, rendered into the run's data folder (the same seed renders the same set)."""
    world = WorldCaptionConfig(
        n_images=cfg.world_images,
        captions_per_image=cfg.world_captions_per_image,
        image_size=cfg.world_image_size,
        seed=cfg.world_seed,
    )
    folder = base / "world_captions"
    return load_coco(write_world_captions(folder, world), folder / IMAGE_DIR, verify=False)


@register_caption_source("coco", needs=("captions", "image_dir"))
def coco_captions(cfg: "CaptionDataConfig", base: Path) -> LoadedCaptions:
    return load_coco(cfg.captions or "", cfg.image_dir or "", verify=False)


@register_caption_source("csv", needs=("captions",))
def csv_captions(cfg: "CaptionDataConfig", base: Path) -> LoadedCaptions:
    return load_csv(cfg.captions or "", cfg.image_dir, cfg.path_column, cfg.caption_column, verify=False)


@register_caption_source("hf", needs=("id",), verifies_images=True)
def hf_captions(cfg: "CaptionDataConfig", base: Path) -> LoadedCaptions:
    return load_hf(
        cfg.id or "", cfg.split, cfg.image_column, cfg.caption_column, base / "hf_captions", cfg.name, cfg.revision
    )


class CaptionDataConfig(ConfigBlock):
    """Where the captions come from and how the images split into train / val / test."""

    source: str = Field("world", description=f"One of {', '.join(list_caption_sources())}.")
    captions: str | None = Field(None, description="coco: the caption JSON; csv: the CSV with path,caption rows.")
    image_dir: str | None = Field(
        None, description="coco: the image folder; csv: relative paths resolve here (default: the CSV's folder)."
    )
    id: str | None = Field(None, description="hf: dataset id on the hub or a local folder load_dataset reads.")
    name: str | None = Field(None, description="hf: dataset configuration name.")
    revision: str | None = Field(None, description="hf: git revision of the dataset repo.")
    split: str = Field(
        "train",
        description="hf: the split holding the images (fewclip splits it itself); a "
        "slice such as 'train[:5000]' reads only those rows (every row read is exported).",
    )
    image_column: str = Field("image", description="hf: the image column.")
    caption_column: str = Field("caption", description="hf and csv: the caption column (hf: a string or a list).")
    path_column: str = Field("path", description="csv: the image path column.")
    world_images: int = Field(480, ge=3, description="world: images rendered for the caption set.")
    world_captions_per_image: int = Field(5, ge=1, le=8, description="world: reference captions per image.")
    world_image_size: int = Field(64, ge=16, le=1024, description="world: image side in pixels.")
    world_seed: int = Field(0, description="world: the same seed renders the same images and captions.")
    val_fraction: float = Field(
        0.15, ge=0, lt=1, description="Share of the images for validation (model selection by CIDEr)."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the images for the test split.")
    seed: int = Field(0, description="Seed of the split: which images go to train, val and test.")
    max_images: int | None = Field(
        None, ge=3, description="Use at most this many images (a seeded choice), before splitting."
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source not in CAPTION_SOURCES:
            raise ValueError(unknown_name_message("caption data source", source, list_caption_sources()))
        return source

    @model_validator(mode="after")
    def _source_keys(self) -> "CaptionDataConfig":
        missing = [key for key in CAPTION_SOURCES.get(self.source).needs if getattr(self, key) is None]
        if missing:
            raise ValueError(
                f"source {self.source!r} needs {' and '.join(missing)} (set "
                f"{', '.join(f'{key}=...' for key in missing)})"
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leave no "
                "train images; their sum must be below 1"
            )
        return self


@dataclass(frozen=True)
class CaptionData:
    """The images of each split (sorted by image id) and those skipped as unreadable."""

    train: list[CaptionItem]
    val: list[CaptionItem]
    test: list[CaptionItem]
    skipped: list[SkippedImage]

    def split(self, name: str) -> list[CaptionItem]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown caption split {name!r}; valid: train, val, test")
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def order_key(seed: int, text: str) -> str:
    """A machine-independent pseudo-random order: a hash of (seed, text), never a listing order."""
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def split_by_image(
    items: Sequence[CaptionItem], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[CaptionItem], list[CaptionItem], list[CaptionItem]]:
    """(train, val, test): images ordered by a hash of (seed, image content), the first
    round(test_fraction * n) to test, the next round(val_fraction * n) to val (at least one each when the
    fraction is above 0), the rest to train.
    Images with the same content go to the same split; each split is sorted by image id."""
    groups: dict[str, list[CaptionItem]] = {}
    for item in items:
        groups.setdefault(item.sha1 or item.image_id, []).append(item)
    ordered = sorted(groups, key=lambda content: order_key(seed, content))
    n_test = max(1, round(test_fraction * len(items)))
    n_val = max(1, round(val_fraction * len(items))) if val_fraction > 0 else 0
    train: list[CaptionItem] = []
    val: list[CaptionItem] = []
    test: list[CaptionItem] = []
    for content in ordered:
        target = test if len(test) < n_test else val if len(val) < n_val else train
        target.extend(groups[content])
    train, val, test = (sorted(split, key=lambda item: item.image_id) for split in (train, val, test))
    return train, val, test


def _cap(items: Sequence[CaptionItem], max_images: int | None, seed: int) -> list[CaptionItem]:
    if max_images is None or len(items) <= max_images:
        return list(items)
    return sorted(items, key=lambda item: order_key(seed + 1, item.image_id))[:max_images]


def load_caption_data(cfg: CaptionDataConfig, base_dir: Path | str, workers: int = 2) -> CaptionData:
    """Load ``cfg``'s captions and split them. ``base_dir`` (the run's data folder) receives what the source
    writes: the rendered world set, images exported from a Hugging Face dataset."""
    source = CAPTION_SOURCES.get(cfg.source)
    loaded = source.load(cfg, Path(base_dir))
    if source.verifies_images:
        items, skipped = _cap(loaded.items, cfg.max_images, cfg.seed), loaded.skipped
    else:
        checked = check_images(_cap(loaded.items, cfg.max_images, cfg.seed), loaded.where, workers)
        items, skipped = checked.items, checked.skipped
    if len(items) < 3:
        raise ValueError(
            f"caption data ({cfg.source}): only {len(items)} readable image(s); need at least 3 (train, val, test)"
        )
    train, val, test = split_by_image(items, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    return CaptionData(train, val, test, skipped)
