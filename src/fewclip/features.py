"""The image-feature cache and the extraction stage.

Layout: ``<cache>/features/<key>/`` where ``key`` hashes the backbone fingerprint (model id, weight
bytes, preprocessing, precision). Inside, features are stored in shards: ``<id>.npy`` (n, dim) float32
and ``<id>.keys`` (a ``#sha256+keys <hex>`` line holding the checksum of the .npy's bytes and the keys, then
n image sha1s, one a line), each written atomically, the keys file last, so a shard without its keys file is an
interrupted write and is ignored. Entries are keyed by the image's content hash, so features are
shared across runs, methods, shots and seeds, and a renamed file still hits.

A shard is checked when it is opened (its header and row count) and before its features are first
read (its checksum and that every value is finite). A damaged shard is named in a warning and
deleted, so the next ``fewclip features`` re-extracts its images. Shards written before checksums
were recorded (no ``#sha256`` line) are accepted when they load and hold only finite values.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fewclip.backbones.preprocess import AUGMENT_PARAMS, ImageTransform, augment_rng, augment_view
from fewclip.backbones.protocol import Backbone
from fewclip.data.images import UnreadableImage, decode_image, read_file
from fewclip.data.records import Record
from fewclip.fileio import atomic_write_bytes, atomic_write_text, write_json

log = logging.getLogger(__name__)
_CHECKSUM_PREFIX = "#sha256 "  # shards written before the keys were covered too
_KEYED_PREFIX = "#sha256+keys "


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]


class DamagedShard(ValueError):
    """A cache shard that cannot be trusted; ``reason`` says why."""


def _read_keys(keys_file: Path) -> tuple[str | None, list[str]]:
    """(the recorded checksum, or None for a shard written before checksums, the row keys) of a keys file.
    A ``#sha256+keys`` checksum covers the .npy's bytes and the keys in their order (``_shard_digest``); the
    older ``#sha256`` one covers the bytes alone and is returned prefixed ``npy:``."""
    lines = keys_file.read_text(encoding="utf-8").split("\n")
    checksum = None
    if lines and lines[0].startswith("#"):
        header = lines.pop(0)
        for prefix, tag in ((_KEYED_PREFIX, ""), (_CHECKSUM_PREFIX, "npy:")):
            if header.startswith(prefix):
                checksum = tag + header[len(prefix) :].strip()
                break
        if checksum is None or len(checksum.removeprefix("npy:")) != 64:
            raise DamagedShard(f"its keys file has an unreadable checksum line {header[:80]!r}")
    return checksum, [line.strip() for line in lines if line.strip()]


def _shard_digest(npy_bytes_digest: Any, keys: Sequence[str]) -> str:
    """sha256 over a shard's .npy bytes (a running hashlib object) and then its keys, one a line: which row is
    which image is part of what is checked, not only the numbers."""
    digest = npy_bytes_digest.copy()
    digest.update(("\n".join(keys) + "\n").encode())
    return str(digest.hexdigest())


def _open_shard(npy: Path, rows: int) -> np.ndarray:
    """The shard's features, memory-mapped; ``DamagedShard`` if it is not an (rows, dim) float32 array."""
    try:
        array: np.ndarray = np.load(npy, mmap_mode="r")
    except FileNotFoundError as err:
        raise DamagedShard("its .npy file is missing") from err
    except (OSError, ValueError, EOFError) as err:
        detail = "garbage where the array header should be" if "pickle" in str(err) else str(err)
        raise DamagedShard(f"truncated or not a NumPy array file: {detail}") from err
    if array.dtype != np.float32 or array.ndim != 2:
        raise DamagedShard(f"holds a {array.dtype} array of shape {array.shape}, not (n, dim) float32")
    if array.shape[0] != rows:
        raise DamagedShard(f"holds {array.shape[0]} rows but its keys file lists {rows} images")
    return array


def _sha256_file(path: Path) -> Any:
    """A hashlib sha256 object fed with the file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256")


class FeatureCache:
    """Content-addressed, sharded, memory-mapped store of image features for one backbone fingerprint."""

    def __init__(self, root: Path, fingerprint: dict[str, Any]) -> None:
        self.key = fingerprint_key(fingerprint)
        self.dir = Path(root) / "features" / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "fingerprint.json").is_file():
            write_json(self.dir / "fingerprint.json", fingerprint)
        self._index: dict[str, tuple[str, int]] = {}
        self._shards: dict[str, np.ndarray] = {}
        self._keys: dict[str, list[str]] = {}
        self._checksums: dict[str, str | None] = {}
        self._verified: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Index the shards committed since the last look (a damaged one is discarded here)."""
        for keys_file in sorted(self.dir.glob("*.keys")):
            shard = keys_file.stem
            if shard in self._shards:
                continue
            try:
                checksum, keys = _read_keys(keys_file)
                array = _open_shard(self.dir / f"{shard}.npy", len(keys))
            except FileNotFoundError:
                continue  # removed meanwhile by another process that found it damaged
            except (DamagedShard, OSError, ValueError) as err:  # ValueError: a keys file that is not UTF-8
                self._discard(shard, str(err))
                continue
            self._shards[shard], self._keys[shard], self._checksums[shard] = array, keys, checksum
            for row, key in enumerate(keys):
                self._index.setdefault(key, (shard, row))

    def _verify(self, shard: str) -> bool:
        """Check a shard's checksum and values once, before its features are first used."""
        if shard in self._verified:
            return True
        npy, checksum = self.dir / f"{shard}.npy", self._checksums[shard]
        try:
            if checksum is not None:
                digest = _sha256_file(npy)
                found = digest.hexdigest() if checksum.startswith("npy:") else _shard_digest(digest, self._keys[shard])
                if found != checksum.removeprefix("npy:"):
                    raise DamagedShard(
                        "its sha256 differs from the one recorded when it was written: its features "
                        "or its keys file were modified or truncated"
                    )
            if not np.isfinite(self._shards[shard]).all():
                raise DamagedShard("it holds non-finite values (NaN or inf)")
        except (DamagedShard, OSError) as err:
            self._discard(shard, str(err))
            return False
        self._verified.add(shard)
        return True

    def _discard(self, shard: str, reason: str) -> None:
        """Warn, delete a damaged shard (keys file first: that un-commits it) and forget its entries."""
        npy = self.dir / f"{shard}.npy"
        log.warning(
            "feature cache shard %s is damaged (%s); deleted it, `fewclip features` re-extracts its images", npy, reason
        )
        try:
            (self.dir / f"{shard}.keys").unlink(missing_ok=True)
            npy.unlink(missing_ok=True)
        except OSError as err:  # e.g. a read-only cache: still never used, but found again next time
            log.warning("could not delete %s (%s); delete it by hand", npy, err)
        self._shards.pop(shard, None)
        self._checksums.pop(shard, None)
        for key in self._keys.pop(shard, []):
            if self._index.get(key, ("", 0))[0] == shard:
                del self._index[key]
        for other, keys in self._keys.items():  # an image also held by an intact shard stays available
            for row, key in enumerate(keys):
                self._index.setdefault(key, (other, row))

    def _locate(self, key: str) -> tuple[str, int] | None:
        """Where a key's features are, in a verified shard; None if nowhere."""
        while (entry := self._index.get(key)) is not None:
            if self._verify(entry[0]):
                return entry
        return None

    def __contains__(self, sha1: str) -> bool:
        return self._locate(sha1) is not None

    def __len__(self) -> int:
        """Entries of the shards opened so far (a shard found damaged when first read drops out)."""
        return len(self._index)

    def missing(self, sha1s: Sequence[str]) -> list[str]:
        """The keys with no intact cached features (checks the shards that hold the others)."""
        return [s for s in dict.fromkeys(sha1s) if self._locate(s) is None]

    def add(self, sha1s: Sequence[str], features: np.ndarray) -> None:
        """Store one shard: (n, dim) finite features for n image hashes."""
        if features.ndim != 2 or features.shape[0] != len(sha1s):
            raise ValueError(f"features of shape {features.shape} do not match {len(sha1s)} keys")
        bad = [key for key, finite in zip(sha1s, np.isfinite(features).all(axis=1)) if not finite]
        if bad:
            raise ValueError(
                f"refusing to cache non-finite features (NaN or inf) for {len(bad)} image(s) "
                f"(keys {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})"
            )
        shard = uuid.uuid4().hex
        buffer = _npy_bytes(np.ascontiguousarray(features, dtype=np.float32))
        atomic_write_bytes(self.dir / f"{shard}.npy", buffer)
        checksum = _shard_digest(hashlib.sha256(buffer), sha1s)
        atomic_write_text(self.dir / f"{shard}.keys", f"{_KEYED_PREFIX}{checksum}\n" + "\n".join(sha1s) + "\n")
        self.refresh()
        self._verified.add(shard)  # its bytes are the ones just checked and written

    def get(self, sha1s: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 for the given hashes (read through memory maps)."""
        entries = [self._locate(s) for s in sha1s]
        absent = [s for s, entry in zip(sha1s, entries) if entry is None]
        if absent:
            raise KeyError(
                f"{len(absent)} image(s) have no cached features (e.g. sha1 {absent[0]}); run `fewclip features`"
            )
        if not sha1s:
            return np.zeros((0, self.dim), np.float32)
        located = [entry for entry in entries if entry is not None]
        return np.stack([self._shards[shard][row] for shard, row in located]).astype(np.float32)

    @property
    def dim(self) -> int:
        return next(iter(self._shards.values())).shape[1] if self._shards else 0


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass(frozen=True)
class Job:
    """One image to encode: its cache key, its file, the sha1 ``prepare`` recorded for the file's
    bytes, and how its pixels are made."""

    key: str
    path: Path
    label: str  # for messages: the record's path as written
    transform: Callable[[Any], np.ndarray]
    sha1: str


def _load_pixels(job: Job) -> np.ndarray | str:
    """Pixels of the bytes read now, or why not; bytes that are not the ones ``prepare`` hashed are
    refused, so features are never stored under another image's key."""
    try:
        data = read_file(job.path)
        found = hashlib.sha1(data).hexdigest()
        if found != job.sha1:
            return (
                f"{job.path}: the file changed after `fewclip prepare` (its sha1 is now {found}, prepare "
                f"recorded {job.sha1}); re-run `fewclip prepare` with this config to use the current file"
            )
        return job.transform(decode_image(data, str(job.path)))
    except UnreadableImage as err:
        return str(err)


def _check_finite(batch: Sequence[Job], features: np.ndarray) -> None:
    """Refuse to cache a batch in which the backbone produced NaN or inf, naming the images."""
    bad = [job.label for job, row in zip(batch, np.isfinite(features).all(axis=1)) if not row]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"the backbone produced non-finite features (NaN or inf) for {len(bad)} image(s): {shown}; "
            "nothing was cached for their batch. Half precision can overflow: try model.precision=fp32"
        )


def encode_jobs(
    jobs: Sequence[Job],
    backbone: Backbone,
    cache: FeatureCache,
    batch_size: int = 64,
    threads: int = 2,
    progress: bool = True,
    desc: str = "features",
    part: tuple[int, int] = (0, 1),
) -> list[tuple[str, str]]:
    """Encode the jobs whose key is not cached yet; returns (image, reason) for unreadable ones and for
    files whose bytes changed since ``prepare``. Non-finite features are an error naming the images.

    Images are read and preprocessed by a thread pool a few batches ahead of the encoder; each
    encoded batch is committed as one shard, so a killed run loses at most one batch.

    ``part`` = (rank, world): the distinct jobs are cut into batches of ``batch_size`` and this process
    encodes batches rank, rank + world, ... Each image has one owner whatever the others have cached
    meanwhile (the ranks of a torchrun job share the work without talking), and on an empty cache every
    image is encoded in the very batch a one-process run puts it in, so the features are bit-for-bit the same.
    """
    rank, world = part
    unique = list({j.key: j for j in jobs}.values())
    mine = [
        job
        for start in range(rank * batch_size, len(unique), world * batch_size)
        for job in unique[start : start + batch_size]
    ]
    missing = set(cache.missing([j.key for j in mine]))
    todo = [j for j in mine if j.key in missing]
    failures: list[tuple[str, str]] = []
    if not todo:
        return failures
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        pending: deque[list[Future[np.ndarray | str]]] = deque()
        for batch in batches[:2]:
            pending.append([pool.submit(_load_pixels, job) for job in batch])
        for index, batch in enumerate(batches):
            loaded = [f.result() for f in pending.popleft()]
            if index + 2 < len(batches):
                pending.append([pool.submit(_load_pixels, job) for job in batches[index + 2]])
            good = [(job, px) for job, px in zip(batch, loaded) if not isinstance(px, str)]
            failures += [(job.label, px) for job, px in zip(batch, loaded) if isinstance(px, str)]
            if good:
                pixels = torch.from_numpy(np.stack([px for _, px in good]))
                features = backbone.encode_images(pixels).float().numpy()
                _check_finite([job for job, _ in good], features)
                cache.add([job.key for job, _ in good], features)
            bar.update(len(batch))
    bar.close()
    for _, reason in failures:
        log.warning("skipping image %s", reason)
    return failures


def extract_features(
    records: Sequence[Record],
    data_dir: Path,
    backbone: Backbone,
    cache: FeatureCache,
    batch_size: int = 64,
    threads: int = 2,
    progress: bool = True,
    part: tuple[int, int] = (0, 1),
) -> list[tuple[str, str]]:
    """Encode every record whose image is not cached yet (CLIP's eval preprocessing); ``part``: see
    ``encode_jobs``."""
    jobs = [Job(r.sha1, r.resolve(data_dir), r.path, backbone.transform, r.sha1) for r in records]
    return encode_jobs(jobs, backbone, cache, batch_size, threads, progress, part=part)


def view_key(sha1: str, view: int) -> str:
    return f"{sha1}:{view}"


def extract_views(
    records: Sequence[Record],
    data_dir: Path,
    backbone: Backbone,
    cache: FeatureCache,
    views: int,
    seed: int = 0,
    batch_size: int = 64,
    threads: int = 2,
    progress: bool = True,
    part: tuple[int, int] = (0, 1),
) -> list[tuple[str, str]]:
    """Encode ``views`` augmented views (random resized crop + flip) of each record, once.

    ``cache`` must be the augmentation's own cache (see ``augmented_fingerprint``); view v of an
    image is drawn from a generator seeded by (seed, image sha1, v), so it is the same on every run.
    """
    jobs = []
    for record in records:
        for view in range(views):
            transform = functools.partial(_augmented, backbone.transform, seed, record.sha1, view)
            jobs.append(Job(view_key(record.sha1, view), record.resolve(data_dir), record.path, transform, record.sha1))
    return encode_jobs(jobs, backbone, cache, batch_size, threads, progress, desc="augmented views", part=part)


def _augmented(transform: ImageTransform, seed: int, sha1: str, view: int, image: Any) -> np.ndarray:
    return augment_view(transform, augment_rng(seed, sha1, view), image)


def augmented_fingerprint(fingerprint: dict[str, Any], seed: int) -> dict[str, Any]:
    return {**fingerprint, "augment": {**AUGMENT_PARAMS, "seed": seed}}


def load_features(cache: FeatureCache, records: Sequence[Record]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, dim), labels (n,)) for records, in order."""
    features = torch.from_numpy(cache.get([r.sha1 for r in records]))
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    return features, labels


def load_views(cache: FeatureCache, records: Sequence[Record], views: int) -> torch.Tensor:
    """(n, views, dim) augmented-view features for records, in order."""
    keys = [view_key(r.sha1, v) for r in records for v in range(views)]
    return torch.from_numpy(cache.get(keys)).reshape(len(records), views, -1)
