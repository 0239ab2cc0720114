"""The image-feature cache and the extraction stage.

Layout: ``<cache>/features/<key>/`` where ``key`` hashes the backbone fingerprint (model id, weight
bytes, preprocessing, precision). Inside, features are stored in shards: ``<id>.npy`` (n, dim) float32
and ``<id>.keys`` (n image sha1s, one a line), each written atomically, the keys file last, so a shard
without its keys file is an interrupted write and is ignored. Entries are keyed by the image's content
hash, so features are shared across runs, methods, shots and seeds, and a renamed file still hits.
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

from .backbones.preprocess import AUGMENT_PARAMS, augment_rng, augment_view
from .data.images import UnreadableImage, read_image
from .data.records import Record
from .fileio import atomic_write_bytes, atomic_write_text, write_json

log = logging.getLogger(__name__)


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]


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
        self.refresh()

    def refresh(self) -> None:
        for keys_file in sorted(self.dir.glob("*.keys")):
            shard = keys_file.stem
            if shard in self._shards:
                continue
            array = np.load(self.dir / f"{shard}.npy", mmap_mode="r")
            keys = keys_file.read_text().split()
            if len(keys) != array.shape[0]:
                log.warning("ignoring inconsistent cache shard %s", keys_file)
                continue
            self._shards[shard] = array
            for row, key in enumerate(keys):
                self._index.setdefault(key, (shard, row))

    def __contains__(self, sha1: str) -> bool:
        return sha1 in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, sha1s: Sequence[str]) -> list[str]:
        return [s for s in dict.fromkeys(sha1s) if s not in self._index]

    def add(self, sha1s: Sequence[str], features: np.ndarray) -> None:
        """Store one shard: (n, dim) features for n image hashes."""
        assert features.shape[0] == len(sha1s)
        shard = uuid.uuid4().hex
        buffer = _npy_bytes(np.ascontiguousarray(features, dtype=np.float32))
        atomic_write_bytes(self.dir / f"{shard}.npy", buffer)
        atomic_write_text(self.dir / f"{shard}.keys", "\n".join(sha1s) + "\n")
        self.refresh()

    def get(self, sha1s: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 for the given hashes (read through memory maps)."""
        absent = [s for s in sha1s if s not in self._index]
        if absent:
            raise KeyError(f"{len(absent)} image(s) have no cached features (e.g. sha1 {absent[0]}); run `fewclip features`")
        if not sha1s:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._shards[shard][row] for shard, row in (self._index[s] for s in sha1s)]).astype(np.float32)

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
    """One image to encode: its cache key, its file, and how its pixels are made."""

    key: str
    path: Path
    label: str  # for messages: the record's path as written
    transform: Callable[[Any], np.ndarray]


def _load_pixels(job: Job) -> np.ndarray | str:
    try:
        return job.transform(read_image(job.path))
    except UnreadableImage as err:
        return str(err)


def encode_jobs(jobs: Sequence[Job], backbone: Any, cache: FeatureCache, batch_size: int = 64, threads: int = 2,
                progress: bool = True, desc: str = "features") -> list[tuple[str, str]]:
    """Encode the jobs whose key is not cached yet; returns (image, reason) for unreadable ones.

    Images are read and preprocessed by a thread pool a few batches ahead of the encoder; each
    encoded batch is committed as one shard, so a killed run loses at most one batch.
    """
    missing = set(cache.missing([j.key for j in jobs]))
    todo = [j for j in {j.key: j for j in jobs}.values() if j.key in missing]
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
                cache.add([job.key for job, _ in good], backbone.encode_images(pixels).numpy())
            bar.update(len(batch))
    bar.close()
    for _, reason in failures:
        log.warning("skipping unreadable image %s", reason)
    return failures


def extract_features(
    records: Sequence[Record],
    data_dir: Path,
    backbone: Any,
    cache: FeatureCache,
    batch_size: int = 64,
    threads: int = 2,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Encode every record whose image is not cached yet (CLIP's eval preprocessing)."""
    jobs = [Job(r.sha1, r.resolve(data_dir), r.path, backbone.transform) for r in records]
    return encode_jobs(jobs, backbone, cache, batch_size, threads, progress)


def view_key(sha1: str, view: int) -> str:
    return f"{sha1}:{view}"


def extract_views(
    records: Sequence[Record],
    data_dir: Path,
    backbone: Any,
    cache: FeatureCache,
    views: int,
    seed: int = 0,
    batch_size: int = 64,
    threads: int = 2,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Encode ``views`` augmented views (random resized crop + flip) of each record, once.

    ``cache`` must be the augmentation's own cache (see ``augmented_fingerprint``); view v of an
    image is drawn from a generator seeded by (seed, image sha1, v), so it is the same on every run.
    """
    jobs = []
    for record in records:
        for view in range(views):
            transform = functools.partial(_augmented, backbone.transform, seed, record.sha1, view)
            jobs.append(Job(view_key(record.sha1, view), record.resolve(data_dir), record.path, transform))
    return encode_jobs(jobs, backbone, cache, batch_size, threads, progress, desc="augmented views")


def _augmented(transform: Any, seed: int, sha1: str, view: int, image: Any) -> np.ndarray:
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
