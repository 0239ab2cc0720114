"""fewclip: the best small classifier from a frozen CLIP and a handful of labelled images per class.

The library (backbones, data, features, heads, metrics) stands alone; ``pipeline`` chains the stages
and ``cli`` puts a command line on top.
"""

from fewclip.version import __version__ as __version__
from fewclip.backbones import CLIPBackbone, ImageTransform, list_backbones, load_backbone
from fewclip.runner.config import Config, ConfigError, load_config
from fewclip.data import list_sources
from fewclip.features import FeatureCache, extract_features, load_features
from fewclip.heads import FeatureSet, Task, list_heads, load_head, save_head
from fewclip.runner.pipeline import run
from fewclip.runner.run_context import RunContext
from fewclip.runner.predict import Classifier, Prediction, load_classifier
from fewclip.runner.export import export_classifier
from fewclip.runner.caption_predict import Captioner, load_captioner


__all__ = [
    "CLIPBackbone",
    "Captioner",
    "Classifier",
    "Config",
    "ConfigError",
    "FeatureCache",
    "FeatureSet",
    "ImageTransform",
    "Prediction",
    "RunContext",
    "Task",
    "export_classifier",
    "extract_features",
    "list_backbones",
    "list_heads",
    "list_sources",
    "load_backbone",
    "load_captioner",
    "load_classifier",
    "load_config",
    "load_features",
    "load_head",
    "run",
    "save_head",
    "__version__",
]
