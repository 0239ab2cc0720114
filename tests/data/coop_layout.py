"""Small fake datasets in CoOp's layout (DATASETS.md), written the way its files look on disk.

Spelled out here from DATASETS.md and CoOp's dataset classes, not from fewclip's reader: folder names,
split files, image folders, and the lists of FGVCAircraft and ImageNet.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

from PIL import Image

# name -> (dataset folder, image folder the split file's paths are relative to, split file)
JSON_LAYOUTS = {
    "Caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "OxfordPets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "StanfordCars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "Flowers102": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "Food101": ("food-101", "images", "split_zhou_Food101.json"),
    "SUN397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "DTD": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "EuroSAT": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "UCF101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
ALL_NAMES = ["ImageNet", *JSON_LAYOUTS, "FGVCAircraft"]

# Class names as each split file spells them (Caltech101 and EuroSAT with their folder names, which
# CoOp's fixes turn into the readable ones below).
FILE_CLASSES = {
    "Caltech101": ["Faces", "airplanes", "anchor"],
    "EuroSAT": ["AnnualCrop", "Forest", "SeaLake"],
    "StanfordCars": ["2012 Audi TTS Coupe", "2012 BMW M3 coupe", "2007 Dodge Caliber Wagon"],
    "SUN397": ["indoor abbey", "airplane cabin", "outdoor apartment building"],
    "UCF101": ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery"],
}
READABLE = {"Caltech101": ["face", "airplane", "anchor"], "EuroSAT": ["Annual Crop Land", "Forest", "Sea or Lake"]}
DEFAULT_CLASSES = ["alpha_one", "beta", "gamma"]
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "F/A-18"]
IMAGENET_CLASSES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}

_colours = itertools.count()


def png(path: Path) -> None:
    """A tiny image with bytes of its own (solid colour from a global counter)."""
    i = next(_colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, (37 * i) % 256)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())


def file_classes(name: str) -> list[str]:
    if name == "FGVCAircraft":
        return list(AIRCRAFT_VARIANTS)
    if name == "ImageNet":
        return list(IMAGENET_CLASSES.values())
    return FILE_CLASSES.get(name, DEFAULT_CLASSES)


def readable_classes(name: str) -> list[str]:
    return READABLE.get(name, file_classes(name))


def build_coop_dataset(
    root: Path, name: str, counts: dict[str, list[int]] | None = None, label_order: list[int] | None = None
) -> dict[str, list[tuple[Path, int]]]:
    """Write dataset ``name`` under ``root`` (CoOp's $DATA); returns per split [(image path, label)] in
    file order. ``counts[split][label]``: images per class; ``label_order``: the order classes appear in
    each list (CoOp groups by first appearance, so it matters)."""
    counts = counts or {"train": [5, 3, 6], "val": [2, 1, 3], "test": [2, 2, 2]}
    order = label_order or list(range(len(counts["train"])))
    if name == "ImageNet":
        return _imagenet(root / "imagenet", counts)
    if name == "FGVCAircraft":
        return _aircraft(root / "fgvc_aircraft", counts, order)
    folder_name, image_dir, split_file = JSON_LAYOUTS[name]
    folder = root / folder_name
    names = file_classes(name)
    expected: dict[str, list[tuple[Path, int]]] = {}
    rows: dict[str, list[list]] = {}
    for split in ("train", "val", "test"):
        expected[split], rows[split] = [], []
        for label in order:
            for i in range(counts[split][label]):
                sub = "cars_train" if name == "StanfordCars" else f"class{label}"
                relative = f"{sub}/{split}_{label}_{i}.jpg"
                path = folder / image_dir / relative if image_dir else folder / relative
                png(path)
                expected[split].append((path, label))
                rows[split].append([relative, label, names[label]])
    (folder / split_file).write_text(json.dumps(rows))
    return expected


def _aircraft(folder: Path, counts: dict[str, list[int]], order: list[int]) -> dict[str, list[tuple[Path, int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "variants.txt").write_text("".join(f"{v}\n" for v in AIRCRAFT_VARIANTS))
    expected: dict[str, list[tuple[Path, int]]] = {}
    serial = itertools.count(1000000)
    for split in ("train", "val", "test"):
        lines, expected[split] = [], []
        for label in order:
            for _ in range(counts[split][label]):
                image_id = str(next(serial))
                png(folder / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {AIRCRAFT_VARIANTS[label]}\n")
                expected[split].append((folder / "images" / f"{image_id}.jpg", label))
        (folder / f"images_variant_{split}.txt").write_text("".join(lines))
    return expected


def _imagenet(folder: Path, counts: dict[str, list[int]]) -> dict[str, list[tuple[Path, int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in IMAGENET_CLASSES.items()))
    expected: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
    for split, directory in (("train", "train"), ("test", "val")):
        for label, wnid in enumerate(sorted(IMAGENET_CLASSES)):
            for i in range(counts[split][label]):
                path = folder / "images" / directory / wnid / f"{wnid}_{i:04d}.JPEG"
                png(path)
                expected[split].append((path, label))
    return expected


# ImageNet's variants as DATASETS.md lays them out: <folder>/classnames.txt (a copy of ImageNet's) and an image
# folder; ImageNetV2's class folders are ImageNet's labels 0..999, the others' are WordNet ids (-A and -R hold
# a 200-class subset: here the last two of the three fake ImageNet classes).
VARIANT_LAYOUTS = {
    "ImageNetV2": ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    "ImageNetSketch": ("imagenet-sketch", "images"),
    "ImageNetA": ("imagenet-adversarial", "imagenet-a"),
    "ImageNetR": ("imagenet-rendition", "imagenet-r"),
}
SUBSET_WNIDS = ["n01443537", "n01484850"]  # goldfish, great white shark


def build_imagenet_variant(root: Path, name: str, per_class: int = 2) -> list[tuple[Path, str]]:
    """Write ImageNet variant ``name`` under ``root``; returns [(image path, class name)] of its images."""
    folder_name, image_dir = VARIANT_LAYOUTS[name]
    folder = root / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in IMAGENET_CLASSES.items()))
    wnids = SUBSET_WNIDS if name in ("ImageNetA", "ImageNetR") else sorted(IMAGENET_CLASSES)
    images = []
    for wnid in wnids:
        class_folder = str(list(IMAGENET_CLASSES).index(wnid)) if name == "ImageNetV2" else wnid
        for i in range(per_class):
            path = folder / image_dir / class_folder / f"{name}_{wnid}_{i}.jpg"
            png(path)
            images.append((path, IMAGENET_CLASSES[wnid]))
    return images
