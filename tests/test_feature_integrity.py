"""The feature cache's integrity: checksummed shards, damaged shards named and re-extracted, non-finite
features refused, and features keyed by the bytes actually encoded."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.data.records import Record
from fewclip.features import FeatureCache, extract_features

BATCH = 8


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="module")
def records(shapes_dir: Path) -> list[Record]:
    paths = sorted((shapes_dir / "train").rglob("*.png"))[:24]
    return [Record(str(p), 0, p.parent.name, hashlib.sha1(p.read_bytes()).hexdigest()) for p in paths]


def extract(records: list[Record], backbone: CLIPBackbone, cache: FeatureCache) -> tuple[list, int]:
    before = backbone.image_batches_encoded
    failures = extract_features(
        records, Path("/nonexistent"), backbone, cache, batch_size=BATCH, threads=1, progress=False
    )
    return failures, backbone.image_batches_encoded - before


def shard_keys(keys_file: Path) -> list[str]:
    lines = keys_file.read_text().split("\n")
    assert lines[0].startswith("#sha256") and lines[-1] == ""
    return lines[1:-1]


@pytest.fixture()
def filled(records: list[Record], backbone: CLIPBackbone, tmp_path: Path) -> tuple[FeatureCache, np.ndarray]:
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    assert extract(records, backbone, cache) == ([], 3)
    return cache, cache.get([r.sha1 for r in records])


def test_keys_file_records_the_checksum_of_the_npy_and_the_keys(
    filled: tuple[FeatureCache, np.ndarray], records: list[Record]
) -> None:
    cache, _ = filled
    keys_files = sorted(cache.dir.glob("*.keys"))
    assert len(keys_files) == 3
    for keys_file in keys_files:
        npy = keys_file.with_suffix(".npy")
        keys_text = "\n".join(shard_keys(keys_file)) + "\n"
        expected = hashlib.sha256(npy.read_bytes() + keys_text.encode()).hexdigest()
        assert keys_file.read_text().split("\n")[0] == f"#sha256+keys {expected}"
        assert len(shard_keys(keys_file)) == BATCH
    assert sorted(k for f in keys_files for k in shard_keys(f)) == sorted(r.sha1 for r in records)


def nan_same_shape(npy: Path) -> None:
    array = np.load(npy)
    np.save(npy, np.full_like(array, np.nan))


def noise_same_shape(npy: Path) -> None:
    array = np.load(npy)
    np.save(npy, np.random.default_rng(0).standard_normal(array.shape).astype(np.float32))


def truncate(npy: Path) -> None:
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) // 2])


def garbage(npy: Path) -> None:
    npy.write_bytes(np.random.default_rng(0).bytes(npy.stat().st_size))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (nan_same_shape, "its sha256 differs from the one recorded when it was written"),
        (noise_same_shape, "its sha256 differs from the one recorded when it was written"),
        (truncate, "truncated or not a NumPy array file: mmap length is greater than file size"),
        (garbage, "truncated or not a NumPy array file: garbage where the array header should be"),
    ],
)
def test_a_damaged_shard_is_named_deleted_and_reextracted(
    damage,
    reason: str,
    filled: tuple[FeatureCache, np.ndarray],
    records: list[Record],
    backbone: CLIPBackbone,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache, expected = filled
    keys_file = sorted(cache.dir.glob("*.keys"))[1]
    lost = shard_keys(keys_file)
    npy = keys_file.with_suffix(".npy")
    damage(npy)

    with caplog.at_level(logging.WARNING, logger="fewclip.features"):
        reopened = FeatureCache(tmp_path, backbone.fingerprint())
        assert reopened.missing([r.sha1 for r in records]) == lost
    assert f"feature cache shard {npy} is damaged ({reason}" in caplog.text
    assert "re-extracts its images" in caplog.text
    assert not npy.exists() and not keys_file.exists()

    assert extract(records, backbone, reopened) == ([], 1)  # only the lost batch is encoded again
    np.testing.assert_array_equal(reopened.get([r.sha1 for r in records]), expected)
    again = FeatureCache(tmp_path, backbone.fingerprint())
    assert again.missing([r.sha1 for r in records]) == []


def test_get_on_a_shard_damaged_after_opening_fails_clearly_once(
    filled: tuple[FeatureCache, np.ndarray],
    records: list[Record],
    backbone: CLIPBackbone,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opened (indexed) first, overwritten before its features are read: a KeyError naming the fix, not NaN."""
    cache, _ = filled
    reopened = FeatureCache(tmp_path, backbone.fingerprint())
    keys_file = sorted(cache.dir.glob("*.keys"))[0]
    nan_same_shape(keys_file.with_suffix(".npy"))
    with (
        pytest.raises(KeyError, match=r"have no cached features .*run `fewclip features`"),
        caplog.at_level(logging.WARNING, logger="fewclip.features"),
    ):
        reopened.get([shard_keys(keys_file)[0]])
    assert "is damaged (its sha256 differs" in caplog.text
    assert len(FeatureCache(tmp_path, backbone.fingerprint())) == len(records) - BATCH


def test_old_shards_without_a_checksum_are_accepted_if_finite(
    filled: tuple[FeatureCache, np.ndarray], records: list[Record], backbone: CLIPBackbone, tmp_path: Path
) -> None:
    cache, expected = filled
    old, poisoned = sorted(cache.dir.glob("*.keys"))[:2]
    old_keys, poisoned_keys = shard_keys(old), shard_keys(poisoned)
    old.write_text("\n".join(old_keys) + "\n")  # the format before checksums: keys only
    poisoned.write_text("\n".join(poisoned_keys) + "\n")
    nan_same_shape(poisoned.with_suffix(".npy"))

    reopened = FeatureCache(tmp_path, backbone.fingerprint())
    sha1s = [r.sha1 for r in records]
    assert reopened.missing(sha1s) == poisoned_keys
    assert not poisoned.exists()  # non-finite: damaged even without a checksum
    assert old.exists()
    np.testing.assert_array_equal(reopened.get(old_keys), expected[[sha1s.index(k) for k in old_keys]])


def test_non_finite_features_are_refused_naming_the_images(
    records: list[Record], backbone: CLIPBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = CLIPBackbone.encode_images
    poisoned_batch = []

    def nan_for_the_second_image(self: CLIPBackbone, pixels: torch.Tensor) -> torch.Tensor:
        features = original(self, pixels)
        if len(poisoned_batch) == 1:
            features[1] = float("nan")
        poisoned_batch.append(len(pixels))
        return features

    monkeypatch.setattr(CLIPBackbone, "encode_images", nan_for_the_second_image)
    cache = FeatureCache(tmp_path, backbone.fingerprint())
    with pytest.raises(ValueError) as err:
        extract(records, backbone, cache)
    assert str(err.value).startswith(
        f"the backbone produced non-finite features (NaN or inf) for 1 image(s): "
        f"{records[BATCH + 1].path}; nothing was cached"
    )
    assert "model.precision=fp32" in str(err.value)
    assert cache.missing([r.sha1 for r in records]) == [r.sha1 for r in records[BATCH:]]  # the first batch stays

    with pytest.raises(
        ValueError, match=rf"non-finite features \(NaN or inf\) for 1 image\(s\) \(keys {records[0].sha1}\)"
    ):
        cache.add([records[0].sha1, records[1].sha1], np.array([[np.inf, 0.0], [1.0, 0.0]], np.float32))


def test_an_image_changed_after_prepare_is_not_stored_under_its_old_hash(
    records: list[Record], backbone: CLIPBackbone, tmp_path: Path
) -> None:
    originals = records[:3]
    copies = []
    for index, record in enumerate(originals):
        path = tmp_path / f"img{index}.png"
        path.write_bytes(Path(record.path).read_bytes())
        copies.append(Record(str(path), 0, "x", record.sha1))  # what prepare recorded
    changed = Path(copies[1].path)
    changed.write_bytes(Path(records[5].path).read_bytes())  # edited between prepare and features

    cache = FeatureCache(tmp_path / "cache", backbone.fingerprint())
    failures, calls = extract(copies, backbone, cache)
    assert calls == 1
    assert failures == [
        (
            str(changed),
            f"{changed}: the file changed after `fewclip prepare` (its sha1 is now "
            f"{records[5].sha1}, prepare recorded {originals[1].sha1}); re-run "
            "`fewclip prepare` with this config to use the current file",
        )
    ]
    assert cache.missing([r.sha1 for r in originals] + [records[5].sha1]) == [originals[1].sha1, records[5].sha1]
    assert sorted(k for f in cache.dir.glob("*.keys") for k in shard_keys(f)) == sorted(
        [originals[0].sha1, originals[2].sha1]
    )


def test_swapped_lines_of_a_keys_file_discard_the_shard(
    filled: tuple[FeatureCache, np.ndarray], records: list[Record], caplog: pytest.LogCaptureFixture
) -> None:
    """The .npy's bytes are intact, but its rows would be attached to the wrong images."""
    cache, _ = filled
    keys_file = sorted(cache.dir.glob("*.keys"))[0]
    lines = keys_file.read_text().split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    keys_file.write_text("\n".join(lines))
    reopened = FeatureCache(cache.dir.parent.parent, json.loads((cache.dir / "fingerprint.json").read_text()))
    with caplog.at_level("WARNING"):
        assert set(lines[1:3]) <= set(reopened.missing([r.sha1 for r in records]))
    assert "keys file were modified" in caplog.text and not keys_file.exists()


def test_a_shard_written_before_keys_were_covered_still_loads(
    filled: tuple[FeatureCache, np.ndarray], records: list[Record]
) -> None:
    cache, features = filled
    for keys_file in cache.dir.glob("*.keys"):
        npy_digest = hashlib.sha256(keys_file.with_suffix(".npy").read_bytes()).hexdigest()
        keys_file.write_text(f"#sha256 {npy_digest}\n" + "\n".join(shard_keys(keys_file)) + "\n")
    reopened = FeatureCache(cache.dir.parent.parent, json.loads((cache.dir / "fingerprint.json").read_text()))
    assert reopened.missing([r.sha1 for r in records]) == []
    np.testing.assert_array_equal(reopened.get([r.sha1 for r in records]), features)
