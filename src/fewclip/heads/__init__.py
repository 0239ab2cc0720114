"""Classifier heads behind one registry (``list_heads()``); each follows the contract in ``base``.

Each head registers itself where it is defined (``@register_head`` above its class); importing the head modules
here fills the registry, in this order, which is the order of ``list_heads()``.
"""

from __future__ import annotations

from .base import FeatureSet, Head, ImageSet, Task, load_head, normalize, read_head_meta, save_head
from .registry import HEADS, list_heads
from .zero_shot import ZeroShotConfig, ZeroShotHead
from .linear_probe import LinearProbeConfig, LinearProbeHead
from .coop import CoOpConfig, CoOpHead
from .cocoop import CoCoOpConfig, CoCoOpHead
from .tip_adapter import TipAdapterConfig, TipAdapterHead
from .tip_adapter_f import TipAdapterFConfig, TipAdapterFHead
from .clip_adapter import ClipAdapterConfig, ClipAdapterHead
from .zs_lp import ZsLpConfig, ZsLpHead
from .clap import ClapConfig, ClapHead
from .kgcoop import KgCoOpConfig, KgCoOpHead
from .prograd import ProGradConfig, ProGradHead
from .clip_lora import ClipLoraConfig, ClipLoraHead
from .maple import MapleConfig, MapleHead

__all__ = [
    "FeatureSet", "HEADS", "Head", "ImageSet", "Task",
    "list_heads", "load_head", "normalize", "read_head_meta", "save_head",
    "ZeroShotConfig", "ZeroShotHead", "LinearProbeConfig", "LinearProbeHead", "CoOpConfig", "CoOpHead",
    "CoCoOpConfig", "CoCoOpHead", "TipAdapterConfig", "TipAdapterHead", "TipAdapterFConfig", "TipAdapterFHead",
    "ClipAdapterConfig", "ClipAdapterHead", "ZsLpConfig", "ZsLpHead", "ClapConfig", "ClapHead",
    "KgCoOpConfig", "KgCoOpHead", "ProGradConfig", "ProGradHead",
    "ClipLoraConfig", "ClipLoraHead", "MapleConfig", "MapleHead",
]
