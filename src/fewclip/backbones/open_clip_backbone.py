"""A frozen OpenCLIP model (``open_clip_torch``): ResNet CLIPs, OpenAI/LAION ViTs, ConvNeXt, ...

``model.id`` names the architecture: a built-in OpenCLIP name (``RN50``, ``ViT-B-32``), a model config
JSON file (registered through OpenCLIP's ``add_model_config``; its stem becomes the name), or
``local-dir:FOLDER`` / ``hf-hub:ORG/REPO`` as OpenCLIP reads them. ``model.pretrained`` is a tag
(``openai``, ``laion2b_s34b_b79k``) or a local checkpoint file. A tag trained with QuickGELU
(every OpenAI tag) builds the model with QuickGELU, so the weights compute what they were trained to.

Preprocessing is OpenCLIP's own, reproduced in PIL + numpy (``ImageTransform``): the model's
``preprocess_cfg`` (size, mean/std, interpolation, resize mode) with torchvision's crop rounding;
equal to OpenCLIP's torchvision pipeline to float rounding (tested). The text tower is run on
embeddings by ``OpenCLIPPromptTower``: token + position embeddings, OpenCLIP's own transformer with
its causal mask cut to the prompt length, ``ln_final``, the EOT position, the projection; equal to
``model.encode_text`` (tested), so prompts are cut to the longest one as on the Hugging Face tower.

Importing this module does not import ``open_clip``; choosing the library without it installed is an
error saying what to install.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from fewclip.backbones.config import ModelConfig, register_backbone
from fewclip.backbones.device import autocast_for, resolve_device
from fewclip.backbones.preprocess import ImageTransform
from fewclip.backbones.open_clip_towers import (
    PROMPT_POOLING,
    OpenCLIPDeepPromptTowers,
    OpenCLIPPromptTower,
    vit_last_block_patches,
)
from fewclip.backbones.protocol import NotOffered, TunableTowers
from fewclip.backbones.weights import WEIGHT_SUFFIXES, files_digest, weights_digest

INSTALL_HINT = (
    "pip install 'fewclip[open_clip]' (OpenCLIP needs torchvision; on a CPU-only machine the index only "
    "has CUDA builds of it, which need torch from the index too: `bash setup.sh --open-clip` builds "
    ".venv-open-clip with torch 2.13.0 + torchvision 0.28.0 + open_clip_torch 3.3.0)"
)
SCHEMAS = ("local-dir:", "hf-hub:")


def require_open_clip() -> Any:
    """The ``open_clip`` module, or an ImportError saying how to get it."""
    try:
        return importlib.import_module("open_clip")
    except ImportError as err:  # torchvision missing or mismatched is an ImportError or a RuntimeError on import
        raise ImportError(
            f"model.library: open_clip needs the OpenCLIP package, which is not importable here ({err}); {INSTALL_HINT}"
        ) from err
    except RuntimeError as err:
        raise ImportError(
            f"model.library: open_clip: importing OpenCLIP failed ({err}); torchvision must match torch: {INSTALL_HINT}"
        ) from err


def architecture(config: ModelConfig) -> str:
    """The name OpenCLIP knows ``model.id`` by; a config JSON file is registered first."""
    model_id = config.id
    if model_id.startswith(SCHEMAS):
        return model_id
    path = Path(model_id).expanduser()
    if model_id.endswith(".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(
                f"model.id: OpenCLIP model config {path} does not exist; give a built-in "
                f"architecture name (RN50, ViT-B-32, ...) or an existing config JSON file"
            )
        register_config_file(path)
        return path.stem
    open_clip = require_open_clip()
    if model_id not in open_clip.list_models():
        from fewclip.registry import unknown_name_message

        raise ValueError(
            "model.id: " + unknown_name_message("OpenCLIP architecture", model_id, open_clip.list_models())
        )
    return model_id


@functools.lru_cache(maxsize=None)
def register_config_file(path: Path) -> None:
    """OpenCLIP's own mechanism for custom architectures: ``add_model_config`` (once per file and process)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"model.id: {path} is not a readable OpenCLIP model config JSON ({err})") from err
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in data]
    if missing:
        raise ValueError(
            f"model.id: {path} is not an OpenCLIP model config: it has no {', '.join(missing)} "
            f"(see open_clip/model_configs/*.json for the format)"
        )
    require_open_clip().add_model_config(path)


def weight_file(config: ModelConfig, download: bool) -> Path | None:
    """The checkpoint ``model.pretrained`` names: the file itself, or a tag's file in the download cache
    (downloaded when ``download``; None when it is not there yet)."""
    pretrained = config.pretrained
    if pretrained is None or config.id.startswith(SCHEMAS):
        return None
    path = Path(pretrained).expanduser()
    if path.suffix in WEIGHT_SUFFIXES or path.exists() or "/" in pretrained:
        if not path.is_file():
            raise FileNotFoundError(
                f"model.pretrained: checkpoint file {path} does not exist; give an existing "
                f"file or an OpenCLIP tag (openai, laion2b_s34b_b79k, ...)"
            )
        return path
    open_clip = require_open_clip()
    name = architecture(config)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        from fewclip.registry import unknown_name_message

        raise ValueError(
            "model.pretrained: "
            + unknown_name_message(f"pretrained tag for {name}", pretrained, tags)
            + " (or a checkpoint file)"
        )
    if download:
        try:
            return Path(open_clip.download_pretrained(tag_cfg))
        except Exception as err:  # noqa: BLE001 - OpenCLIP raises whatever the hub or urllib raised
            raise OSError(
                f"model.pretrained: could not get the weights of {name} {pretrained!r} ({err}); offline, "
                f"point model.pretrained at a local checkpoint file"
            ) from err
    return _cached_tag_file(tag_cfg)


def _cached_tag_file(tag_cfg: dict[str, Any]) -> Path | None:
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, filename = hub.rstrip("/"), None
    if not hub.endswith("/"):
        repo, filename = hub.rsplit("/", 1)
    for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return Path(found)
    return None


def check_open_clip(config: ModelConfig) -> None:
    """Fast checks before a run: package importable, architecture known, weights named and findable."""
    require_open_clip()
    architecture(config)
    if config.pretrained is None and not config.id.startswith(SCHEMAS):
        raise ValueError(
            "model.pretrained: an OpenCLIP model needs weights: a tag (openai, laion2b_s34b_b79k, ...) "
            "or a local checkpoint file"
        )
    weight_file(config, download=False)


def transform_from_cfg(cfg: dict[str, Any]) -> ImageTransform:
    """OpenCLIP's ``preprocess_cfg`` (its evaluation transform) as an ``ImageTransform``."""
    from PIL import Image

    size = cfg.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash") or (mode == "shortest" and height != width):
        raise ValueError(
            f"model.id: OpenCLIP preprocessing with resize_mode {mode!r} at size {size} is not supported "
            f"(fewclip reproduces 'shortest' with a square crop, and 'squash')"
        )
    interpolation = cfg.get("interpolation", "bicubic")
    resample = Image.Resampling.BILINEAR if interpolation == "bilinear" else Image.Resampling.BICUBIC
    return ImageTransform(
        resize=height,
        crop=(height, width),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resample=int(resample),
        resize_mode=mode,
        crop_rounding="round",
    )


class OpenCLIPImageEncoder(nn.Module):
    """An OpenCLIP model's ``encode_image``: pixels -> unnormalised features (``Backbone.image_encoder``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.clip_model: Any = model  # OpenCLIP's CLIP / CustomTextCLIP, untyped

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.clip_model.encode_image(pixels)
        return features.float()


class OpenCLIPTokens:
    """OpenCLIP's BPE tokenizer (``SimpleTokenizer``) as ``TextTokens``."""

    def __init__(self, tokenizer: Any) -> None:
        if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "sot_token_id"):
            raise ValueError(
                f"model.id: this OpenCLIP model's tokenizer ({type(tokenizer).__name__}) is not CLIP's BPE "
                f"tokenizer; fewclip supports OpenCLIP models with CLIP-style text towers"
            )
        self.tokenizer = tokenizer
        self.sos_id, self.eot_id = int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)
        self.clean = getattr(tokenizer, "clean_fn", lambda text: text)

    def word_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(self.clean(text)))

    def counts(self, texts: Sequence[str]) -> list[int]:
        return [len(self.word_ids(text)) + 2 for text in texts]


def open_clip_fingerprint(config: ModelConfig, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """Architecture + weight file hash + preprocessing + precision; None when a tag's weights are not
    downloaded yet."""
    open_clip = require_open_clip()
    name = architecture(config)
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        digest = weights_digest(folder, cache_dir / "weights_sha256.json" if cache_dir else None)
        preprocess = json.loads((folder / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
        model_cfg: Any = None
    elif name.startswith("hf-hub:"):
        return None  # known only once OpenCLIP has fetched it: the loaded backbone fingerprints itself
    else:
        found = weight_file(config, download=False)
        if found is None:
            return None
        digest = files_digest([found], cache_dir / "weights_sha256.json" if cache_dir else None)
        model_cfg = open_clip.get_model_config(name)
        preprocess = _preprocess_cfg(open_clip, name, config.pretrained)
    return {
        "library": "open_clip",
        "model": name,
        "model_config": model_cfg,
        "pretrained": config.pretrained,
        "quick_gelu": _quick_gelu(open_clip, name, config.pretrained),
        "weights_sha256": digest,
        "preprocess": transform_from_cfg(preprocess).to_dict(),
        "precision": config.precision,
        "feature": "projected image embedding, unnormalised, float32",
    }


def _tag_cfg(open_clip: Any, name: str, pretrained: str | None) -> dict[str, Any]:
    if pretrained is None or name.startswith(SCHEMAS) or Path(pretrained).expanduser().is_file():
        return {}
    return dict(open_clip.get_pretrained_cfg(name, pretrained) or {})


def _quick_gelu(open_clip: Any, name: str, pretrained: str | None) -> bool:
    return bool(_tag_cfg(open_clip, name, pretrained).get("quick_gelu", False))


def _preprocess_cfg(open_clip: Any, name: str, pretrained: str | None) -> dict[str, Any]:
    """The evaluation preprocessing OpenCLIP would use: defaults, the model config's image size, the tag's."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg: dict[str, Any] = dict(PreprocessCfg().__dict__)
    model_cfg = open_clip.get_model_config(name) or {}
    cfg = merge_preprocess_dict(cfg, model_cfg.get("preprocess_cfg", {}))
    cfg["size"] = model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"])
    merged: dict[str, Any] = merge_preprocess_dict(cfg, _tag_cfg(open_clip, name, pretrained))
    return merged


def architecture_json(config: ModelConfig) -> dict[str, Any] | None:
    """The OpenCLIP model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of ``model.id``, read from its file
    without importing OpenCLIP: the JSON file itself, ``local-dir:``'s or a cached ``hf-hub:`` model's
    ``open_clip_config.json``, or the installed package's ``model_configs/<name>.json``; None where it is not on
    disk (the package not installed, a hub model not downloaded yet)."""
    model_id = config.id
    if model_id.startswith("local-dir:"):
        file: Path | None = Path(model_id.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
    elif model_id.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache  # installed with transformers

        cached = try_to_load_from_cache(model_id.removeprefix("hf-hub:"), "open_clip_config.json")
        file = Path(cached) if isinstance(cached, str) else None
    elif model_id.endswith(".json") or Path(model_id).expanduser().is_file():
        file = Path(model_id).expanduser()
    else:
        spec = importlib.util.find_spec("open_clip")  # finds the package without importing it (torchvision)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        file = Path(folders[0]) / "model_configs" / f"{model_id}.json" if folders else None
    if file is None or not file.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the check names what is wrong with it
    model: dict[str, Any] = data.get("model_cfg", data)  # open_clip_config.json nests it under model_cfg
    return model


def open_clip_model_offers(config: ModelConfig) -> frozenset[str] | None:
    """What one OpenCLIP model offers, from its config JSON (``architecture_json``): image tokens need a
    ``VisionTransformer`` (not a ResNet or a timm tower), vision prompts a plain one (read at its class token)."""
    model = architecture_json(config)
    if model is None:
        return None
    vision = model.get("vision_cfg", {})
    transformer = isinstance(vision.get("layers", 12), int) and not vision.get("timm_model_name")
    plain = transformer and not vision.get("attentional_pool") and vision.get("pool_type", "tok") == "tok"
    dropped = (set() if transformer else {"image_tokens"}) | (set() if plain else {"vision_prompts"})
    return OpenCLIPBackbone.offers - dropped


@register_backbone(
    "open_clip",
    check=check_open_clip,
    fingerprint_from_files=open_clip_fingerprint,
    model_offers=open_clip_model_offers,
)
class OpenCLIPBackbone:
    """A frozen OpenCLIP model behind the ``Backbone`` protocol.

    Offers ``deep_prompts`` (``open_clip_towers``), ``vision_prompts`` and ``image_tokens`` where the image
    tower is a ViT (``open_clip_model_offers`` reads which from the model's config JSON before it loads).
    Not ``lora_targets``: OpenCLIP's attention is ``nn.MultiheadAttention`` with one fused ``in_proj_weight``
    parameter for q, k and v, which LoRA (peft) cannot wrap as the separate q/k/v linear layers CLIP-LoRA adapts.
    """

    offers: ClassVar[frozenset[str]] = frozenset({"deep_prompts", "vision_prompts", "image_tokens"})

    def __init__(self, config: ModelConfig, cache_dir: Path | None = None) -> None:
        open_clip = require_open_clip()
        check_open_clip(config)
        self.config = config
        self.device = resolve_device(config.device)
        name = architecture(config)
        weights = weight_file(config, download=True)
        options: dict[str, Any] = {"force_quick_gelu": _quick_gelu(open_clip, name, config.pretrained)}
        if not name.startswith(SCHEMAS):
            options["pretrained"] = str(weights) if weights is not None else None
        try:
            with warnings_quiet():
                # an OpenCLIP CLIP (or CustomTextCLIP); Any: open_clip ships no type hints
                self.model: Any = open_clip.create_model(name, device="cpu", **options)
        except (RuntimeError, OSError, KeyError, ValueError) as err:
            raise OSError(
                f"model: cannot build OpenCLIP {name!r} with pretrained={config.pretrained!r}: {err}"
            ) from err
        self.model.eval().requires_grad_(False).to(self.device)
        self.transform = transform_from_cfg(dict(self.model.visual.preprocess_cfg))
        self.tokens = OpenCLIPTokens(open_clip.get_tokenizer(name))
        fingerprint = open_clip_fingerprint(config, cache_dir)
        if fingerprint is None:  # a tag just downloaded, or an hf-hub model: hash what was loaded
            fingerprint = {
                "library": "open_clip",
                "model": name,
                "pretrained": config.pretrained,
                "weights_sha256": state_digest(self.model),
                "preprocess": self.transform.to_dict(),
                "precision": config.precision,
                "feature": "projected image embedding, unnormalised, float32",
            }
        self._fingerprint = fingerprint
        self.image_batches_encoded = 0

    @property
    def dim(self) -> int:
        projection = self.model.text_projection
        if isinstance(projection, nn.Linear):
            return int(projection.out_features)
        return int(projection.shape[1]) if projection is not None else int(self.model.transformer.width)

    @property
    def max_text_positions(self) -> int:
        return int(getattr(self.model, "context_length", 77))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast_for(self.config.precision, self.device)

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def prompt_tower(self) -> OpenCLIPPromptTower:
        return OpenCLIPPromptTower(self.model)

    def image_encoder(self) -> nn.Module:
        return OpenCLIPImageEncoder(self.model)

    def tunable_towers(self) -> TunableTowers:
        raise NotOffered(
            "open_clip",
            "lora_targets",
            "OpenCLIP fuses q, k and v into one in_proj_weight of "
            "nn.MultiheadAttention, which LoRA cannot wrap; use model.library: hf",
        )

    def deep_prompt_towers(self) -> OpenCLIPDeepPromptTowers:
        return OpenCLIPDeepPromptTowers(self.model)

    def _vision_transformer(self) -> Any:
        """The model's ``VisionTransformer`` (Any, as ``model``); ``NotOffered`` for another image tower."""
        visual = self.model.visual
        if not (hasattr(visual, "transformer") and hasattr(visual, "class_embedding")):
            raise NotOffered(
                "open_clip",
                "image_tokens",
                f"this model's image tower is {type(visual).__name__}, "
                "not a VisionTransformer with patch tokens; choose a ViT model.id",
            )
        return visual

    @property
    def image_token_shape(self) -> tuple[int, int]:
        visual = self._vision_transformer()
        grid_h, grid_w = visual.grid_size
        return 1 + grid_h * grid_w, int(visual.transformer.width)

    @torch.no_grad()
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The class and patch tokens leaving the ViT's last block, before ``ln_post`` (as the Hugging Face
        backbone gives ``last_hidden_state``, before ``post_layernorm``)."""
        visual = self._vision_transformer()
        with self.autocast():
            out = visual.forward_intermediates(
                torch.as_tensor(pixels).to(self.device),
                indices=1,
                intermediates_only=True,
                output_fmt="NLC",
                output_extra_tokens=True,
            )
        tokens = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)
        return tokens.float()

    def image_tokens_fingerprint(self) -> dict[str, Any]:
        return {
            **self.fingerprint(),
            "feature": "OpenCLIP ViT tokens after the last block, before ln_post (class + patches), float32",
        }

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        pixels = torch.as_tensor(pixels)
        self.image_batches_encoded += 1
        with self.autocast():
            out: torch.Tensor = self.model.encode_image(pixels.to(self.device))
        return out.float().cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> (n, dim), cut to the longest text of each batch (exact: causal, read at EOT). Never
        truncates: OpenCLIP's tokenizer would cut silently at its context length, so that is an error here."""
        tower = self.prompt_tower() if getattr(self.model, "text_pool_type", None) in PROMPT_POOLING else None
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            ids = [[self.tokens.sos_id, *self.tokens.word_ids(text), self.tokens.eot_id] for text in batch]
            longest = max(range(len(ids)), key=lambda i: len(ids[i]))
            if len(ids[longest]) > self.max_text_positions:
                raise ValueError(
                    f"text {batch[longest]!r} needs {len(ids[longest])} tokens but model {self.config.id} "
                    f"reads at most {self.max_text_positions}; shorten it"
                )
            length = len(ids[longest]) if tower is not None else self.max_text_positions
            tokens = torch.tensor([row + [0] * (length - len(row)) for row in ids], device=self.device)
            with self.autocast():
                if tower is not None:
                    eot = torch.tensor([len(row) - 1 for row in ids], device=self.device)
                    out = tower(tower.embed_tokens(tokens), eot)
                else:
                    out = self.model.encode_text(tokens)
            chunks.append(out.float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A ResNet's last convolutional stage (``layer4``'s output, before the attention pooling), or the
        patch tokens a ViT's last block normalises for its attention (``ln_1``'s output: at its input a
        LayerNorm's scale invariance makes gradient x activation vanish, see ``hf_saliency.last_layer_patches``),
        as (n, gh, gw, c) on the feature's graph."""
        visual = self.model.visual
        captured: dict[str, torch.Tensor] = {}
        if hasattr(visual, "attnpool") and hasattr(visual, "layer4"):  # ModifiedResNet

            def keep(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
                grid = output.permute(0, 2, 3, 1)  # (n, c, h, w) -> (n, h, w, c), read back as the stage's output
                grid.retain_grad()
                captured["grid"] = grid
                return grid.permute(0, 3, 1, 2)

            handle = visual.layer4.register_forward_hook(keep)
        elif hasattr(visual, "transformer") and hasattr(visual, "class_embedding"):  # VisionTransformer
            if not getattr(visual.transformer, "batch_first", True):
                raise ValueError("saliency: this OpenCLIP ViT runs sequence-first; fewclip reads batch-first tokens")
            with vit_last_block_patches(visual) as grid:
                features = self.model.encode_image(pixels.to(self.device)).float().cpu()
            return features, grid["grid"]
        else:
            raise ValueError(
                f"saliency: no spatial activations known for OpenCLIP image tower {type(visual).__name__} "
                f"(supported: ModifiedResNet, VisionTransformer); set output.saliency_images: 0"
            )
        try:
            features = self.model.encode_image(pixels.to(self.device)).float().cpu()
        finally:
            handle.remove()
        return features, captured["grid"]


def state_digest(model: nn.Module) -> str:
    """sha256 over a model's tensors (names, shapes, bytes), for weights that are not one known file."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def warnings_quiet() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # OpenCLIP's QuickGELU notice: handled by force_quick_gelu
        yield
