"""Classifier heads behind one registry (``list_heads()``); each follows the contract in ``base``."""

from __future__ import annotations

from ..registry import Registry
from .base import FeatureSet, Head, ImageSet, Task, load_head, normalize, read_head_meta, save_head
from .clap import ClapConfig, ClapHead
from .clip_lora import ClipLoraConfig, ClipLoraHead
from .clip_adapter import ClipAdapterConfig, ClipAdapterHead
from .cocoop import CoCoOpConfig, CoCoOpHead
from .coop import CoOpConfig, CoOpHead
from .kgcoop import KgCoOpConfig, KgCoOpHead
from .linear_probe import LinearProbeConfig, LinearProbeHead
from .maple import MapleConfig, MapleHead
from .prograd import ProGradConfig, ProGradHead
from .tip_adapter import TipAdapterConfig, TipAdapterHead
from .tip_adapter_f import TipAdapterFConfig, TipAdapterFHead
from .zero_shot import ZeroShotConfig, ZeroShotHead
from .zs_lp import ZsLpConfig, ZsLpHead

HEADS: Registry[type] = Registry("head")
HEADS.register(ZeroShotHead.name, ZeroShotHead)
HEADS.register(LinearProbeHead.name, LinearProbeHead)
HEADS.register(CoOpHead.name, CoOpHead)
HEADS.register(CoCoOpHead.name, CoCoOpHead)
HEADS.register(TipAdapterHead.name, TipAdapterHead)
HEADS.register(TipAdapterFHead.name, TipAdapterFHead)
HEADS.register(ClipAdapterHead.name, ClipAdapterHead)
HEADS.register(ZsLpHead.name, ZsLpHead)
HEADS.register(ClapHead.name, ClapHead)
HEADS.register(KgCoOpHead.name, KgCoOpHead)
HEADS.register(ProGradHead.name, ProGradHead)
HEADS.register(ClipLoraHead.name, ClipLoraHead)
HEADS.register(MapleHead.name, MapleHead)


def list_heads() -> list[str]:
    return HEADS.names()


__all__ = [
    "KgCoOpConfig", "KgCoOpHead", "ProGradConfig", "ProGradHead",
    "ClapConfig", "ClapHead", "ClipLoraConfig", "ClipLoraHead", "MapleConfig", "MapleHead", "ClipAdapterConfig", "ClipAdapterHead", "ZsLpConfig", "ZsLpHead",
    "CoCoOpConfig", "CoCoOpHead", "CoOpConfig", "CoOpHead", "FeatureSet", "ImageSet", "HEADS", "Head", "LinearProbeConfig", "LinearProbeHead", "Task", "TipAdapterConfig", "TipAdapterFConfig",
    "TipAdapterFHead", "TipAdapterHead", "ZeroShotConfig",
    "ZeroShotHead", "list_heads", "load_head", "normalize", "read_head_meta", "save_head",
]
