"""Classifier heads behind one registry (``list_heads()``); each follows the contract in ``base``.

Each head registers itself where it is defined (``@register_head`` above its class); importing the head modules
here fills the registry, in this order, which is the order of ``list_heads()``.
"""

from __future__ import annotations

from fewclip.heads.base import FeatureSet, Head, ImageSet, Task, normalize, read_head_meta, save_head
from fewclip.heads.registry import HEADS, list_heads, load_head
from fewclip.heads.on_features.zero_shot import ZeroShotConfig, ZeroShotHead
from fewclip.heads.on_features.linear_probe import LinearProbeConfig, LinearProbeHead
from fewclip.heads.prompts.coop import CoOpConfig, CoOpHead
from fewclip.heads.prompts.cocoop import CoCoOpConfig, CoCoOpHead
from fewclip.heads.on_features.tip_adapter import TipAdapterConfig, TipAdapterHead
from fewclip.heads.on_features.tip_adapter_f import TipAdapterFConfig, TipAdapterFHead
from fewclip.heads.on_features.clip_adapter import ClipAdapterConfig, ClipAdapterHead
from fewclip.heads.on_features.zs_lp import ZsLpConfig, ZsLpHead
from fewclip.heads.on_features.clap import ClapConfig, ClapHead
from fewclip.heads.on_features.gda import GdaConfig, GdaHead
from fewclip.heads.on_features.taskres import TaskResConfig, TaskResHead
from fewclip.heads.on_features.lp_pp import LpPpConfig, LpPpHead
from fewclip.heads.on_features.proker import ProkerConfig, ProkerHead
from fewclip.heads.prompts.kgcoop import KgCoOpConfig, KgCoOpHead
from fewclip.heads.prompts.prograd import ProGradConfig, ProGradHead
from fewclip.heads.prompts.tcp import TcpConfig, TcpHead
from fewclip.heads.encoders.clip_lora import ClipLoraConfig, ClipLoraHead
from fewclip.heads.encoders.maple import MapleConfig, MapleHead
from fewclip.heads.encoders.promptsrc import PromptSRCConfig, PromptSRCHead
from fewclip.heads.encoders.clip_svd import ClipSvdConfig, ClipSvdHead

__all__ = [
    "FeatureSet",
    "HEADS",
    "Head",
    "ImageSet",
    "Task",
    "list_heads",
    "load_head",
    "normalize",
    "read_head_meta",
    "save_head",
    "ZeroShotConfig",
    "ZeroShotHead",
    "LinearProbeConfig",
    "LinearProbeHead",
    "CoOpConfig",
    "CoOpHead",
    "CoCoOpConfig",
    "CoCoOpHead",
    "TipAdapterConfig",
    "TipAdapterHead",
    "TipAdapterFConfig",
    "TipAdapterFHead",
    "ClipAdapterConfig",
    "ClipAdapterHead",
    "ZsLpConfig",
    "ZsLpHead",
    "ClapConfig",
    "ClapHead",
    "KgCoOpConfig",
    "KgCoOpHead",
    "ProGradConfig",
    "ProGradHead",
    "TcpConfig",
    "TcpHead",
    "ClipLoraConfig",
    "ClipLoraHead",
    "MapleConfig",
    "MapleHead",
    "PromptSRCConfig",
    "PromptSRCHead",
    "ClipSvdConfig",
    "ClipSvdHead",
    "GdaConfig",
    "GdaHead",
    "TaskResConfig",
    "TaskResHead",
    "LpPpConfig",
    "LpPpHead",
    "ProkerConfig",
    "ProkerHead",
]
