"""The 11 datasets of CoOp/CoCoOp/MaPLe, read as-is from the layout CoOp's DATASETS.md describes.

``dataset.path`` is the root that holds one folder per dataset (CoOp's ``DATASET.ROOT``: ``$DATA`` with
``$DATA/caltech-101/`` etc.); a path that already is the dataset's own folder is accepted too. Most
datasets are read from their ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[relative image
path, label, class name], ...]}``, paths relative to the dataset's image folder. FGVCAircraft is read
from its own ``images_variant_{train,val,test}.txt`` lists and ``variants.txt``; ImageNet from
``images/{train,val}/<wnid>/`` and ``classnames.txt`` (its val folder is the test split and it has no
validation split, as in CoOp). The ImageNet variants (ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR) are
test-only (no train or val images), read from their image folders and their own copy of ImageNet's
``classnames.txt``, as CoOp's readers do; they are the targets of domain generalisation (``dataset.eval_on``).
The ``split_fewshot/*.pkl`` pickles CoOp caches are never read: the
few-shot sets are drawn again from these files (``splits.sampler: coop``).

Classes are listed in label order and each split's items keep the order of its split file: CoOp's
few-shot draw depends on both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Literal

from pydantic import Field, field_validator

from fewclip.registry import unknown_name_message
from fewclip.data.sources.base import SourceConfig, SourceItem, Split, missing_path_message
from fewclip.data.sources.registry import register_source

# The class-name fixes CoOp applies when it builds these splits (readable EuroSAT land-use names,
# singular Caltech101 names). Published split files already carry them; a file that still has the
# folder names gets them here, so prompts read the same either way.
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "SeaLake": "Sea or Lake",
}
CALTECH101_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@dataclass(frozen=True)
class CoopDataset:
    """Where one dataset lives under the CoOp root."""

    folder: str  # under dataset.path
    image_dir: str  # split-file paths are relative to <folder>/<image_dir> ("" = the folder itself)
    split_file: str | None  # split_zhou_*.json; None: read from the dataset's own lists (reader below)
    class_fixes: dict[str, str] = field(default_factory=dict)


COOP_DATASETS: dict[str, CoopDataset] = {
    "ImageNet": CoopDataset("imagenet", "images", None),
    "Caltech101": CoopDataset("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", CALTECH101_NAMES),
    "OxfordPets": CoopDataset("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "StanfordCars": CoopDataset("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "Flowers102": CoopDataset("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "Food101": CoopDataset("food-101", "images", "split_zhou_Food101.json"),
    "FGVCAircraft": CoopDataset("fgvc_aircraft", "images", None),
    "SUN397": CoopDataset("sun397", "SUN397", "split_zhou_SUN397.json"),
    "DTD": CoopDataset("dtd", "images", "split_zhou_DescribableTextures.json"),
    "EuroSAT": CoopDataset("eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_NAMES),
    "UCF101": CoopDataset("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
# Test-only ImageNet variants (CoOp's datasets/imagenetv2.py, imagenet_sketch.py, imagenet_a.py, imagenet_r.py).
# ImageNetV2's class folders are ImageNet's labels 0..999, named in classnames.txt's order; the others hold
# one folder per WordNet id (-A and -R 200 of them), labelled in sorted order.
IMAGENET_VARIANTS: dict[str, CoopDataset] = {
    "ImageNetV2": CoopDataset("imagenetv2", "imagenetv2-matched-frequency-format-val", None),
    "ImageNetSketch": CoopDataset("imagenet-sketch", "images", None),
    "ImageNetA": CoopDataset("imagenet-adversarial", "imagenet-a", None),
    "ImageNetR": CoopDataset("imagenet-rendition", "imagenet-r", None),
}
READABLE_SOURCES = {**COOP_DATASETS, **IMAGENET_VARIANTS}  # every name dataset.source: coop reads
AIRCRAFT_LISTS = {split: f"images_variant_{split}.txt" for split in ("train", "val", "test")}
DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


class CoopSourceConfig(SourceConfig):
    source: Literal["coop"] = "coop"
    has_val_split: ClassVar[bool] = True
    path_keys: ClassVar[dict[str, str]] = {"path": "folder"}
    path: str = Field(description="CoOp's data root, holding e.g. caltech-101/ (or that dataset folder itself).")
    name: str = Field(
        description=f"One of {', '.join(COOP_DATASETS)}, or a test-only ImageNet variant "
        f"({', '.join(IMAGENET_VARIANTS)}) as a dataset.eval_on target."
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name not in READABLE_SOURCES:
            raise ValueError(unknown_name_message("CoOp dataset", name, list(READABLE_SOURCES)))
        return name

    def default_label(self) -> str:
        return self.name


@dataclass(frozen=True)
class Entry:
    """One row of a split list: the image, CoOp's label and class name, and where the row is."""

    path: Path
    label: int
    class_name: str
    origin: str


SplitLists = dict[str, list[Entry]]


def required_files(spec: CoopDataset, folder: Path) -> list[Path]:
    """The files and folders a dataset's layout must have before any image is read."""
    if spec.split_file is not None:
        return [folder / spec.split_file] + ([folder / spec.image_dir] if spec.image_dir else [])
    if spec in IMAGENET_VARIANTS.values():
        return [folder / "classnames.txt", folder / spec.image_dir]
    if spec.folder == "fgvc_aircraft":
        return [folder / "variants.txt"] + [folder / name for name in AIRCRAFT_LISTS.values()] + [folder / "images"]
    return [folder / "classnames.txt", folder / "images" / "train", folder / "images" / "val"]


def dataset_folder(root: Path, name: str, key: str = "dataset") -> Path:
    """``root/<folder>``, or ``root`` itself when it already holds the dataset's files (``key``: the dataset
    block's place in the config, for messages)."""
    spec = READABLE_SOURCES[name]
    nested = root / spec.folder
    if not nested.is_dir() and all(p.exists() for p in required_files(spec, root)):
        return root
    missing = [p for p in required_files(spec, nested) if not p.exists()]
    if missing:
        listed = "\n  ".join(str(p) for p in missing)
        raise FileNotFoundError(
            f"{key}: {name} in CoOp's layout is missing {len(missing)} file(s) or folder(s) under "
            f"{key}.path={root}; the layout expects:\n  {listed}\n"
            f"Lay the dataset out as CoOp's DATASETS.md says ({DATASETS_MD}) under {root}, "
            f"or point {key}.path at the folder that holds {spec.folder}/"
        )
    return nested


def read_json_splits(file: Path, image_root: Path, fixes: dict[str, str]) -> SplitLists:
    """``split_zhou_*.json``: each split a list of [path relative to ``image_root``, label, class name]."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not a JSON split file ({err}); download it again (see {DATASETS_MD})") from None
    absent = [s for s in ("train", "val", "test") if not isinstance(data, dict) or s not in data]
    if absent:
        raise ValueError(
            f"{file}: no {', '.join(absent)} list; a CoOp split file maps train, val and test "
            "to lists of [image path, label, class name]"
        )
    lists: SplitLists = {}
    for split in ("train", "val", "test"):
        entries = []
        for index, row in enumerate(data[split]):
            if not (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and isinstance(row[2], str)
                and isinstance(row[1], int)
            ):
                raise ValueError(
                    f"{file}: {split}[{index}] is {row!r}; expected [image path, integer label, class name]"
                )
            entries.append(Entry(image_root / row[0], row[1], fixes.get(row[2], row[2]), f"{file}:{split}[{index}]"))
        lists[split] = entries
    return lists


def read_aircraft_splits(folder: Path) -> SplitLists:
    """FGVCAircraft: ``variants.txt`` (one class per line, in label order) and per split
    ``images_variant_<split>.txt`` lines ``<image id> <variant>`` for ``images/<image id>.jpg``."""
    variants_file = folder / "variants.txt"
    variants = [line.strip() for line in variants_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    label_of = {name: label for label, name in enumerate(variants)}
    lists: SplitLists = {}
    for split, list_name in AIRCRAFT_LISTS.items():
        entries = []
        for number, line in enumerate((folder / list_name).read_text(encoding="utf-8").splitlines(), start=1):
            image_id, _, variant = line.strip().partition(" ")
            if not image_id:
                continue
            if variant not in label_of:
                raise ValueError(
                    f"{folder / list_name}:{number}: variant {variant!r} is not in {variants_file}; "
                    + unknown_name_message("variant", variant, variants)
                )
            entries.append(
                Entry(
                    folder / "images" / f"{image_id}.jpg", label_of[variant], variant, f"{folder / list_name}:{number}"
                )
            )
        lists[split] = entries
    return lists


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_classnames(names_file: Path) -> dict[str, str]:
    """``<wnid> <class name>`` per line (ImageNet's ``classnames.txt``), in file order."""
    names: dict[str, str] = {}
    for line in names_file.read_text(encoding="utf-8").splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            names[wnid] = name.strip()
    return names


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_variant_splits(folder: Path, name: str) -> SplitLists:
    """A test-only ImageNet variant: every image is a test image; class names from its ``classnames.txt``.

    ImageNetV2's folders ``0``..``999`` are labels naming the file's classes in order; the other variants'
    folders are WordNet ids, labelled in sorted order (-A and -R have 200, so their labels run 0..199).
    """
    spec = IMAGENET_VARIANTS[name]
    names_file, image_dir = folder / "classnames.txt", folder / spec.image_dir
    names = read_classnames(names_file)
    entries: list[Entry] = []
    if name == "ImageNetV2":
        ordered = list(names.values())
        labels = sorted((int(f), f) for f in _class_folders(image_dir) if f.isdigit())
        beyond = [f for label, f in labels if label >= len(ordered)]
        if beyond:
            raise ValueError(
                f"{image_dir}: folder(s) {beyond[:10]} have no class in {names_file} "
                f"({len(ordered)} lines); copy ImageNet's classnames.txt there"
            )
        for label, folder_name in labels:
            entries.extend(Entry(p, label, ordered[label], str(p)) for p in _files(image_dir / folder_name))
        used = sorted({e.label for e in entries})
        # class_list needs labels 0..n-1: keep the folders present (a full download has all 1,000)
        relabel = {old: new for new, old in enumerate(used)}
        entries = [Entry(e.path, relabel[e.label], e.class_name, e.origin) for e in entries]
    else:
        wnids = [w for w in _class_folders(image_dir)]
        unnamed = [w for w in wnids if w not in names]
        if unnamed:
            raise ValueError(
                f"{names_file}: no class name for folder(s) {unnamed[:10]} of {image_dir}; copy "
                "ImageNet's classnames.txt there (CoOp's DATASETS.md)"
            )
        for label, wnid in enumerate(wnids):
            entries.extend(Entry(p, label, names[wnid], str(p)) for p in _files(image_dir / wnid))
    return {"train": [], "val": [], "test": entries}


def read_imagenet_splits(folder: Path) -> SplitLists:
    """ImageNet: labels are the sorted wnid folders of ``images/train``; names come from ``classnames.txt``
    (``<wnid> <class name>`` per line); ``images/val`` is the test split; there is no val split.

    CoOp lists each class folder in ``os.listdir`` order, which depends on the file system; the images of
    a class are sorted here, so ImageNet's few-shot sets match CoOp's only where its listing was sorted.
    """
    names_file = folder / "classnames.txt"
    names = read_classnames(names_file)
    split_dirs = {"train": folder / "images" / "train", "test": folder / "images" / "val"}
    wnids = {
        split: sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        for split, d in split_dirs.items()
    }
    if wnids["train"] != wnids["test"]:
        differ = sorted(set(wnids["train"]) ^ set(wnids["test"]))
        raise ValueError(
            f"dataset: {split_dirs['train']} and {split_dirs['test']} must hold the same class folders; "
            f"only one of them has {differ[:10]}"
        )
    unnamed = [w for w in wnids["train"] if w not in names]
    if unnamed:
        raise ValueError(f"{names_file}: no class name for folder(s) {unnamed[:10]}; add '<wnid> <class name>' lines")
    lists: SplitLists = {"train": [], "val": [], "test": []}
    for split, base in split_dirs.items():
        for label, wnid in enumerate(wnids[split]):
            lists[split].extend(Entry(p, label, names[wnid], str(p)) for p in _files(base / wnid))
    return lists


def class_list(lists: SplitLists, where: Path) -> list[str]:
    """Class names by label 0..n-1; each label has one name and each name one label."""
    name_of: dict[int, str] = {}
    for entries in lists.values():
        for entry in entries:
            known = name_of.setdefault(entry.label, entry.class_name)
            if known != entry.class_name:
                raise ValueError(
                    f"{entry.origin}: label {entry.label} is {entry.class_name!r} here but {known!r} "
                    f"elsewhere in {where}"
                )
    gaps = sorted(set(range(max(name_of, default=-1) + 1)) - set(name_of))
    if gaps or min(name_of, default=0) < 0:
        raise ValueError(f"{where}: labels must run 0..n-1; missing {gaps[:10]}")
    names = [name_of[label] for label in range(len(name_of))]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where}: class name(s) {repeated} carry more than one label")
    return names


@register_source
class CoopSource:
    """A CoOp-layout dataset; ``items`` yields each split's images in split-file order."""

    Config = CoopSourceConfig

    def __init__(self, config: CoopSourceConfig) -> None:
        self.config = config
        root = Path(config.path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(missing_path_message(config, "path", "folder"))
        spec = READABLE_SOURCES[config.name]
        self.folder = dataset_folder(root, config.name, config.key)
        if config.name in IMAGENET_VARIANTS:
            self.lists = read_variant_splits(self.folder, config.name)
        elif spec.split_file is not None:
            image_root = self.folder / spec.image_dir if spec.image_dir else self.folder
            self.lists = read_json_splits(self.folder / spec.split_file, image_root, spec.class_fixes)
        elif config.name == "FGVCAircraft":
            self.lists = read_aircraft_splits(self.folder)
        else:
            self.lists = read_imagenet_splits(self.folder)
        self.names = class_list(self.lists, self.folder)

    def class_names(self, split: Split = "train") -> list[str]:  # one list for every split
        return list(self.names)

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        wanted = set(classes)
        for entry in self.lists[split]:
            if entry.class_name in wanted:
                yield SourceItem(class_name=entry.class_name, origin=entry.origin, path=entry.path)
