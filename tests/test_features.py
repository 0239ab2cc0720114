"""The feature cache and the extraction stage: cache hits and misses, atomic shards, memory maps, bad images."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.data.images import read_image
from fewclip.data.records import Record
from fewclip.features import FeatureCache, extract_features, fingerprint_key, load_features

BATCH = 8


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def folder_records(root: Path) -> list[Record]:
    """Every image under <root>/{train,test}/<class>/ as a record with an absolute path."""
    classes = sorted(p.name for p in (root / "train").iterdir())
    records = []
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            for path in sorted((root / split / name).glob("*.png")):
                records.append(Record(str(path), label, name, hashlib.sha1(path.read_bytes()).hexdigest()))
    return records


@pytest.fixture(scope="module")
def records(shapes_dir: Path) -> list[Record]:
    found = folder_records(shapes_dir)
    assert len(found) == 54 and len({r.sha1 for r in found}) == 54
    return found


def extract(records: list[Record], backbone: CLIPBackbone, cache: FeatureCache) -> tuple[list, int]:
    """Run extraction; return (failures, number of encoder calls it made)."""
    before = backbone.image_batches_encoded
    failures = extract_features(
        records, Path("/nonexistent"), backbone, cache, batch_size=BATCH, threads=2, progress=False
    )
    return failures, backbone.image_batches_encoded - before


def fresh_forward(records: list[Record], backbone: CLIPBackbone) -> np.ndarray:
    """Features computed directly, in the same batches extraction uses."""
    chunks = []
    for start in range(0, len(records), BATCH):
        pixels = [backbone.transform(read_image(r.path)) for r in records[start : start + BATCH]]
        chunks.append(backbone.encode_images(torch.from_numpy(np.stack(pixels))).numpy())
    return np.concatenate(chunks)


def test_second_extraction_hits_the_cache(records: list[Record], backbone: CLIPBackbone, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    assert cache.dir == tmp_path / "features" / fingerprint_key(backbone.fingerprint())
    assert json.loads((cache.dir / "fingerprint.json").read_text())["precision"] == "fp32"

    failures, calls = extract(records, backbone, cache)
    assert failures == [] and calls == math.ceil(54 / BATCH)
    assert len(cache) == 54 and cache.missing([r.sha1 for r in records]) == []

    assert extract(records, backbone, cache) == ([], 0)
    reopened = FeatureCache(tmp_path, backbone.fingerprint())  # as a later process sees it
    assert len(reopened) == 54
    assert extract(records, backbone, reopened) == ([], 0)
    np.testing.assert_array_equal(reopened.get([r.sha1 for r in records]), fresh_forward(records, backbone))

    # keyed by content: the same image under another name is a hit
    renamed = tmp_path / "renamed.png"
    shutil.copy(records[0].path, renamed)
    assert extract([Record(str(renamed), 0, "x", records[0].sha1)], backbone, reopened) == ([], 0)


def test_changed_preprocessing_misses(
    records: list[Record], backbone: CLIPBackbone, tiny_clip: Path, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path / "cache", backbone.fingerprint())
    extract(records, backbone, cache)

    model = shutil.copytree(tiny_clip, tmp_path / "model-resize-48")
    processor = json.loads((model / "preprocessor_config.json").read_text())
    processor["size"] = {"shortest_edge": 48}  # resize to 48, still crop 32: a different view of each image
    (model / "preprocessor_config.json").write_text(json.dumps(processor))
    edited = load_backbone(ModelConfig(id=str(model), device="cpu"))
    edited_cache = FeatureCache(tmp_path / "cache", edited.fingerprint())

    assert edited_cache.key != cache.key and len(edited_cache) == 0
    failures, calls = extract(records, edited, edited_cache)
    assert failures == [] and calls == math.ceil(54 / BATCH)
    sha1s = [r.sha1 for r in records]
    assert not np.allclose(edited_cache.get(sha1s), cache.get(sha1s), atol=1e-3)
    assert len(FeatureCache(tmp_path / "cache", backbone.fingerprint())) == 54  # the first cache is untouched


def test_changed_precision_misses(
    records: list[Record], backbone: CLIPBackbone, tiny_clip: Path, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    extract(records, backbone, cache)
    bf16 = load_backbone(ModelConfig(id=str(tiny_clip), device="cpu", precision="bf16"))
    bf16_cache = FeatureCache(tmp_path, bf16.fingerprint())

    assert bf16_cache.key != cache.key and len(bf16_cache) == 0
    failures, calls = extract(records, bf16, bf16_cache)
    assert failures == [] and calls == math.ceil(54 / BATCH)
    sha1s = [r.sha1 for r in records]
    fp32_features, bf16_features = cache.get(sha1s), bf16_cache.get(sha1s)
    assert not np.array_equal(fp32_features, bf16_features)
    np.testing.assert_allclose(bf16_features, fp32_features, atol=0.05)


def test_shard_without_keys_file_is_ignored_and_reextracted(
    records: list[Record], backbone: CLIPBackbone, tmp_path: Path
) -> None:
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    extract(records, backbone, cache)
    shards = sorted(cache.dir.glob("*.keys"))
    assert len(shards) == math.ceil(54 / BATCH)
    assert {p.stem for p in cache.dir.glob("*.npy")} == {p.stem for p in shards}

    # a write killed between the features and the keys file: the .npy is there, its .keys is not
    torn = shards[2]
    torn_keys = torn.read_text().split("\n")[1:-1]  # after the "#sha256 <hex>" line
    torn.unlink()
    # and the debris other kills can leave: a temp file, a garbage .npy, a keys file with the wrong count
    (cache.dir / f".{'0' * 32}.npy.abc123.tmp").write_bytes(b"\x93NUMPY partial")
    (cache.dir / f"{'1' * 32}.npy").write_bytes(b"garbage")
    np.save(cache.dir / f"{'2' * 32}.npy", np.zeros((3, 32), np.float32))
    (cache.dir / f"{'2' * 32}.keys").write_text("\n".join(torn_keys[:2]) + "\n")

    reopened = FeatureCache(tmp_path, backbone.fingerprint())
    assert len(reopened) == 54 - len(torn_keys)
    assert reopened.missing([r.sha1 for r in records]) == torn_keys
    with pytest.raises(KeyError, match="fewclip features"):
        reopened.get([torn_keys[0]])

    failures, calls = extract(records, backbone, reopened)
    assert failures == [] and calls == math.ceil(len(torn_keys) / BATCH) == 1
    assert len(reopened) == 54
    features, labels = load_features(reopened, records)
    assert features.dtype == torch.float32 and features.shape == (54, 32)
    assert labels.tolist() == [r.label for r in records]
    np.testing.assert_array_equal(features.numpy(), fresh_forward(records, backbone))


class Killed(BaseException):
    """Stands in for SIGKILL at one point of a shard write."""


@pytest.mark.parametrize("step", ["atomic_write_bytes", "atomic_write_text"])
def test_a_write_killed_at_either_step_leaves_no_shard(
    step: str, records: list[Record], backbone: CLIPBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while writing the features (.npy) or the keys: the cache still opens and lacks that batch."""
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    features = np.ones((2, 32), np.float32)
    cache.add([records[0].sha1, records[1].sha1], features)

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(f"fewclip.features.{step}", killed)
        with pytest.raises(Killed):
            cache.add([records[2].sha1, records[3].sha1], 2 * features)

    reopened = FeatureCache(tmp_path, backbone.fingerprint())
    assert len(reopened) == 2 and reopened.missing([r.sha1 for r in records[:4]]) == [records[2].sha1, records[3].sha1]
    np.testing.assert_array_equal(reopened.get([records[1].sha1]), features[:1])
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_shards_are_memory_mapped(records: list[Record], backbone: CLIPBackbone, tmp_path: Path) -> None:
    extract(records, backbone, FeatureCache(tmp_path, backbone.fingerprint()))
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    shards = list(cache._shards.values())
    assert len(shards) == math.ceil(54 / BATCH)
    assert all(isinstance(shard, np.memmap) and shard.mode == "r" for shard in shards)
    assert all(shard.dtype == np.float32 and shard.shape[1] == 32 for shard in shards)
    got = cache.get([records[5].sha1, records[0].sha1])
    assert type(got) is np.ndarray and got.dtype == np.float32  # a copy, not a view of the file
    assert cache.dim == 32


def test_unreadable_image_is_a_failure_entry_not_a_crash(
    records: list[Record], backbone: CLIPBackbone, tmp_path: Path
) -> None:
    good = records[:5]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.png"
    data = Path(good[0].path).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing = tmp_path / "gone.png"
    bad = [
        Record(str(p), 0, "red_circle", hashlib.sha1(p.name.encode()).hexdigest())
        for p in (corrupt, truncated, missing)
    ]
    mixed = good[:2] + bad[:1] + good[2:] + bad[1:]

    cache = FeatureCache(tmp_path / "cache", backbone.fingerprint())
    failures, calls = extract(mixed, backbone, cache)

    assert [path for path, _ in failures] == [str(corrupt), str(truncated), str(missing)]
    assert all(reason.startswith(path) for path, reason in failures)  # the reason names the file
    assert "cannot read file" in failures[2][1]
    assert calls == 1 and len(cache) == 5
    assert cache.missing([r.sha1 for r in mixed]) == [r.sha1 for r in bad]
    np.testing.assert_allclose(cache.get([r.sha1 for r in good]), fresh_forward(good, backbone), atol=1e-6)
