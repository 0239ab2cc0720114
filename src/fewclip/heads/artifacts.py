"""Safetensors artifacts that prove they are intact: heads and training checkpoints.

A head's ``.safetensors`` is checked against the sha256 its JSON records (``SAFETENSORS_SHA256``); a
checkpoint has no JSON, so it carries a digest of its own tensors in its metadata. Either way a file
that was truncated, overwritten or edited after it was written fails to load with ``DamagedArtifact``
(naming the file) instead of being trusted.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save as save_bytes

from fewclip.fileio import atomic_write_bytes, read_json

SAFETENSORS_SHA256 = "safetensors_sha256"  # the JSON key that holds a head's tensor-file checksum
_TENSORS_DIGEST = "tensors_sha256"  # the metadata key that holds a checkpoint's own tensor digest


class DamagedArtifact(ValueError):
    """A saved head or checkpoint that is truncated, garbage, or not what was written."""

    def __init__(self, path: Path, what: str, reason: str, advice: str = "") -> None:
        self.path, self.what, self.reason = path, what, reason
        super().__init__(f"{path}: damaged {what} ({reason})" + (f"; {advice}" if advice else ""))


class StaleArtifact(ValueError):
    """A head written by an earlier fewclip that computed it differently: ``load_head`` names the file and says
    to retrain it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, self_check: bool = False
) -> str:
    """Write a safetensors file atomically (unique temporary, usual permissions); returns its sha256.

    ``self_check`` stores a digest of the tensors in the file's metadata, for files no JSON vouches for.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = dict(metadata or {})
    if self_check:
        metadata[_TENSORS_DIGEST] = tensors_digest(tensors)
    data = save_bytes(tensors, metadata=metadata or None)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (an 8-byte little-endian header length, then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


def read_tensors(
    path: Path, sha256: str | None = None, what: str = "file", advice: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, verified against ``sha256`` and its own digest if any.

    Raises ``DamagedArtifact`` naming the file, saying what is wrong and ``advice`` on what to do.
    """

    def damaged(reason: str) -> DamagedArtifact:
        return DamagedArtifact(path, what, reason, advice)

    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise damaged("the file is missing") from err
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise damaged("its sha256 differs from the one recorded when it was written: truncated or modified")
    try:
        tensors, metadata = load_bytes(data), _metadata(data)
    except (SafetensorError, struct.error, ValueError) as err:  # ValueError covers bad JSON and UTF-8
        raise damaged(f"not a readable safetensors file: {err}") from err
    if _TENSORS_DIGEST in metadata and tensors_digest(tensors) != metadata[_TENSORS_DIGEST]:
        raise damaged("its tensors differ from the digest recorded when it was written")
    return tensors, metadata


def read_artifact_json(path: Path, what: str = "file", advice: str = "") -> Any:
    """A JSON file, or ``DamagedArtifact`` naming it when it is truncated or not JSON."""
    try:
        return read_json(path)
    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError
        raise DamagedArtifact(path, what, f"not valid JSON: {err}", advice) from err
