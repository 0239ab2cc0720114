"""What the heads that learn deep prompts in both towers share (maple, promptsrc): the class prompts' tokens, the
prompted network (pixels -> logits, what the trainer wraps) and the head's life after training (attach to a
backbone, transfer to other class names, score images, save and load the learned tensors).

The class prompt is ``[SOS] [ctx]*n_ctx [rest of ctx_init] [name tokens] [.] [EOT]``, ``ctx`` at rows 1..n_ctx,
as both references build it (``MultiModalPromptLearner`` in muzairkhattak/multimodal-prompt-learning,
``VLPromptLearner`` in muzairkhattak/PromptSRC). What differs between the heads is the learned tensors
(``DeepPrompts``: MaPLe's coupled prompts, PromptSRC's independent ones), the loss and which weights are kept.
How the prompts enter the towers is the backbone's (``Backbone.deep_prompt_towers``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fewclip.backbones.capabilities import require
from fewclip.backbones.protocol import Backbone, DeepPromptTowers, TextTokens
from fewclip.heads.base import ImageSet, Task, normalize
from fewclip.heads.encoders.base import EncoderHeadBase
from fewclip.heads.prompts.learning import context_init_ids, name_and_period_ids


def prompt_token_ids(
    tokens: TextTokens,
    class_names: list[str],
    n_ctx: int,
    ctx_init: str | None,
    max_positions: int,
    n_ctx_key: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, L) token ids of ``[SOS] ctx_init-tokens name. [EOT]`` (``ctx_init`` null: n_ctx SOS placeholders),
    padded with EOT to the longest, and the (C,) EOT positions. The name and its period are tokenised together
    (as the references tokenise the whole prompt). ``n_ctx_key``: the config key of ``n_ctx`` (``maple.n_ctx``),
    named in errors with its block's ``ctx_init``."""
    key = n_ctx_key.split(".")[0]
    init = context_init_ids(tokens, ctx_init) if ctx_init else [tokens.sos_id] * n_ctx
    if len(init) < n_ctx:
        raise ValueError(
            f"{key}.ctx_init {ctx_init!r} is {len(init)} token(s) for this model's tokenizer but "
            f"{n_ctx_key} is {n_ctx}: its first n_ctx tokens initialise the context; lower {n_ctx_key} "
            "or use a longer ctx_init (or ctx_init: null for a random context)"
        )
    rows = []
    for name in class_names:
        name_ids, period = name_and_period_ids(tokens, name)
        ids = [tokens.sos_id, *init, *name_ids, *period, tokens.eot_id]
        if len(ids) > max_positions:
            raise ValueError(
                f"{key}: the prompt for class {name!r} needs {len(ids)} tokens ({len(init)} of "
                f"{key}.ctx_init / the context, {len(name_ids)} for the name, SOS, '.', EOT) but the model "
                f"has {max_positions} text positions; shorten the class name (dataset.rename) or "
                f"{key}.ctx_init"
            )
        rows.append(ids)
    length = max(len(r) for r in rows)
    token_ids = torch.tensor([r + [tokens.eot_id] * (length - len(r)) for r in rows], dtype=torch.long)
    return token_ids, torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)


class DeepPrompts(nn.Module):
    """The learned tensors of a deep-prompt head: ``ctx`` (n_ctx, text width) at the prompt's rows 1..n_ctx,
    ``deep_text`` (one (n_ctx, text width) for each text layer 1..), and the vision prompts ``vision()`` gives."""

    ctx: nn.Parameter
    deep_text: nn.ParameterList

    def vision(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(shallow (k, vision width) or None: the frozen image tower, deep vision prompts for layers 1..)."""
        raise NotImplementedError


# (initial ctx, the towers) -> the learned tensors; called under the net's seed (its random draws are the seed's)
MakePrompts = Callable[[torch.Tensor, DeepPromptTowers], DeepPrompts]


class DeepPromptNet(nn.Module):
    """Frozen CLIP + deep prompts as a module (pixels -> logits): what the trainer (and DDP) wraps. Only the
    prompts are registered; the frozen towers are held outside the module tree (DDP need not broadcast them).

    ``ctx`` starts as the embeddings of ``ctx_init``'s first n_ctx tokens (as the references), or (``ctx_init``
    None) from N(0, 0.02); ``make_prompts`` builds the rest, drawing from ``seed``."""

    def __init__(
        self,
        backbone: Backbone,
        class_names: list[str],
        n_ctx: int,
        ctx_init: str | None,
        seed: int,
        recompute: bool,
        make_prompts: MakePrompts,
        n_ctx_key: str,
    ) -> None:
        super().__init__()
        self.towers: DeepPromptTowers = backbone.deep_prompt_towers()  # not an nn.Module: not registered
        self.recompute = recompute
        self.logit_scale = float(backbone.logit_scale)
        self.n_ctx = n_ctx
        token_ids, self.eot_positions = prompt_token_ids(
            backbone.tokens, class_names, n_ctx, ctx_init, backbone.max_text_positions, n_ctx_key
        )
        with torch.no_grad():
            self.base_embeds = backbone.prompt_tower().embed_tokens(token_ids.to(backbone.device)).detach()  # (C, L, w)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if ctx_init:  # the init words' own embeddings, as the references
                ctx = self.base_embeds[0, 1 : 1 + n_ctx].float().cpu()
            else:
                ctx = torch.randn(n_ctx, self.towers.text_width) * 0.02
            self.prompts = make_prompts(ctx, self.towers)
        self.prompts.to(backbone.device)

    def class_text_features(self) -> torch.Tensor:
        """(C, dim) normalised text features of the class prompts with the current prompts."""
        prompts = self.prompts
        embeds = self.base_embeds
        ctx = prompts.ctx.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        embeds = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx :]], dim=1)
        out = self.towers.text_features(embeds, self.eot_positions, list(prompts.deep_text), self.recompute)
        return normalize(out.float())

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, dim) normalised image features through the prompted vision tower."""
        shallow, deep = self.prompts.vision()
        return normalize(self.towers.image_features(pixels, shallow, deep, self.recompute).float())

    def saliency_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, dim) normalised image features and the normalised patch tokens the last vision layer attends
        over, (n, g, g, w), on one autograd graph (``DeepPromptTowers.saliency_pass``: the CLS token and the
        appended vision prompts are left out of the grid)."""
        shallow, deep = self.prompts.vision()
        features, patches = self.towers.saliency_pass(pixels, shallow, deep)
        return normalize(features.float()), patches

    def forward(self, pixels: torch.Tensor, text: torch.Tensor | None = None) -> Any:
        """(n, 3, H, W) -> (n, C) logits; the text is re-encoded (each step, as the references) unless given.
        (Any: a subclass may return ``PenalizedLogits`` in training.)"""
        text = self.class_text_features() if text is None else text
        return self.logit_scale * self.image_features(pixels) @ text.T


class DeepPromptHead(EncoderHeadBase):
    """The life of a deep-prompt head once its network is built: attaching the saved prompts to a backbone,
    transferring them to other class names, scoring images and saving. A head subclasses it with its ``check``,
    ``fit`` (``prepare_fit``, ``train_net``, ``_finish``) and ``build_net`` (the learned tensors and the network)."""

    needs = frozenset({"deep_prompts"})
    net_: DeepPromptNet

    def build_net(self, backbone: Backbone, class_names: list[str], seed: int) -> DeepPromptNet:
        """The network for ``class_names`` with the head's config, its random tensors drawn from ``seed``."""
        raise NotImplementedError

    def _build(self, backbone: Backbone, class_names: list[str], seed: int) -> None:
        self.net_ = self.build_net(backbone, class_names, seed)
        self.device_ = backbone.device

    def prepare_fit(self, task: Task, train: ImageSet | None) -> tuple[Backbone, ImageSet]:
        """What ``fit`` does before training: refuse what cannot be trained (no images, ``check``), build the
        network with the task's seed and keep the backbone's logit scale; returns the backbone and the images."""
        if not isinstance(train, ImageSet) or len(train) == 0:
            raise ValueError(f"{self.name} trains on images: fit needs an ImageSet of training images")
        self.check(task)
        backbone = task.backbone
        assert backbone is not None  # check() refuses a task without one
        self._build(backbone, task.class_names, task.seed)
        self.logit_scale_ = torch.tensor(self.net_.logit_scale)
        return backbone, train

    def check(self, task: Task) -> None:
        raise NotImplementedError

    def prompt_towers(self, task: Task) -> tuple[Backbone, DeepPromptTowers]:
        """The task's backbone and its prompted towers; refuses a task without a backbone, or one whose library
        does not offer deep prompts (``check``'s first step)."""
        if task.backbone is None:
            raise ValueError(f"{self.name} needs the backbone (Task.backbone is None)")
        require(self.name, self.needs, task.backbone)
        return task.backbone, task.backbone.deep_prompt_towers()

    def _finish(self) -> None:
        """Eval mode, and the class text features computed once for scoring."""
        self.net_.eval()
        with torch.no_grad():
            self.class_text_features_ = self.net_.class_text_features()

    def attach(self, backbone: Backbone, class_names: list[str]) -> None:
        """Rebuild the prompted towers on ``backbone`` for ``class_names`` from the learned tensors."""
        state = self.prompts_state_
        self._build(backbone, class_names, 0)
        expected = set(self.net_.prompts.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"{self.name}: the saved prompts ({sorted(state)[:4]}...) do not fit this model and {self.config_key} "
                f"block ({sorted(expected)[:4]}...); the model or the {self.config_key} block changed: retrain "
                "with `fewclip train`"
            )
        self.net_.prompts.load_state_dict({k: v.to(self.device_) for k, v in state.items()})
        self.net_.logit_scale = float(self.logit_scale_)
        self._finish()

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "DeepPromptHead":
        """The same learned prompts on other class names (base-to-new: the new classes' prompts carry the same
        context, deep prompts and vision prompts)."""
        head = type(self)(self.config)
        skip = {"net_", "class_text_features_", "device_"}
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_") and k not in skip})
        head.saved_prompts_ = self.prompts_state_
        head.attach(backbone, class_names)
        return head

    @torch.no_grad()
    def image_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) preprocessed images -> (n, C) logits through the prompted towers, on the CPU."""
        self.net_.eval()
        logits: torch.Tensor = self.net_(pixels.to(self.device_), self.class_text_features_)
        return logits.float().cpu()

    def image_saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C) logits with autograd and the patch tokens entering the prompted vision tower's last layer,
        (n, g, g, width), on one graph (what ``fewclip.saliency`` backpropagates through); the class texts are
        constants here."""
        self.net_.eval()
        features, patches = self.net_.saliency_features(pixels.to(self.device_))
        return self.net_.logit_scale * features @ self.class_text_features_.T, patches

    @property
    def prompts_state_(self) -> dict[str, torch.Tensor]:
        """The learned tensors, on the CPU."""
        saved: dict[str, torch.Tensor] | None = self.__dict__.get("saved_prompts_")
        if saved is not None:
            return saved
        return {k: v.detach().cpu().clone() for k, v in self.net_.prompts.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **{f"prompts.{k}": v for k, v in self.prompts_state_.items()},
            "logit_scale": self.logit_scale_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.saved_prompts_ = {k[len("prompts.") :]: v for k, v in tensors.items() if k.startswith("prompts.")}
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        if self.selects_epoch:
            self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        if "net_" not in vars(self) and "saved_prompts_" not in vars(self):
            return 0
        return sum(int(v.numel()) for v in self.prompts_state_.values())
