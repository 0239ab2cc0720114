"""The image-feature cache and the extraction stage.

Layout: ``<cache>/features/<key>/`` where ``key`` hashes the backbone fingerprint (model id, weight
bytes, preprocessing, precision). Inside, features are stored in shards: ``<id>.npy`` (n, dim) float32
and ``<id>.keys`` (n image sha1s, one a line), each written atomically, the keys file last, so a shard
without its keys file is an interrupted write and is ignored. Entries are keyed by the image's content
hash, so features are shared across runs, methods, shots and seeds, and a renamed file still hits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

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


def _load_pixels(path: Path, transform: Callable[[Any], np.ndarray]) -> np.ndarray | str:
    try:
        return transform(read_image(path))
    except UnreadableImage as err:
        return str(err)


def extract_features(
    records: Sequence[Record],
    data_dir: Path,
    backbone: Any,
    cache: FeatureCache,
    batch_size: int = 64,
    threads: int = 2,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Encode every record whose image is not cached yet; returns (image, reason) for unreadable ones.

    Images are read and preprocessed by a thread pool a few batches ahead of the encoder; each
    encoded batch is committed as one shard, so a killed run loses at most one batch.
    """
    by_sha1 = {r.sha1: r for r in records}
    todo = [by_sha1[s] for s in cache.missing([r.sha1 for r in records])]
    failures: list[tuple[str, str]] = []
    if not todo:
        return failures
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), desc="features", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        pending: deque[list[Future[np.ndarray | str]]] = deque()

        def submit(batch: list[Record]) -> None:
            pending.append([pool.submit(_load_pixels, r.resolve(data_dir), backbone.transform) for r in batch])

        for batch in batches[:2]:
            submit(batch)
        for index, batch in enumerate(batches):
            loaded = [f.result() for f in pending.popleft()]
            if index + 2 < len(batches):
                submit(batches[index + 2])
            good = [(r, px) for r, px in zip(batch, loaded) if not isinstance(px, str)]
            failures += [(r.path, px) for r, px in zip(batch, loaded) if isinstance(px, str)]
            if good:
                pixels = torch.from_numpy(np.stack([px for _, px in good]))
                features = backbone.encode_images(pixels).numpy()
                cache.add([r.sha1 for r, _ in good], features)
            bar.update(len(batch))
    bar.close()
    for path, reason in failures:
        log.warning("skipping unreadable image %s", reason)
    return failures


def load_features(cache: FeatureCache, records: Sequence[Record]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, dim), labels (n,)) for records, in order."""
    features = torch.from_numpy(cache.get([r.sha1 for r in records]))
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    return features, labels
