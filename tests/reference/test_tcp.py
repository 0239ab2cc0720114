"""TCP against its official code, htyao89/Textual-based_Class-aware_prompt_tuning, re-implemented here in plain torch
from reading it (never copied):

- ``trainers/tcp.py`` ``PromptLearner.__init__`` (CTX_INIT False: N_CTX vectors from N(0, 0.02) behind the "X X X X"
  placeholders of ``CUSTOM_TEMPLATES``, whose ``"X X X X {}."`` entry, e.g. Caltech101's, is the prompt here;
  ``text_features``: the dataset's ``CUSTOM_TEMPLATES_ori`` template encoded by the frozen CLIP, normalised;
  ``meta_net``: Linear(vis_dim, vis_dim // 4) -> QuickGELU -> Linear(vis_dim // 4, 4 * ctx_dim)),
  ``PromptLearner.forward`` (``meta_net(text_features)`` reshaped to (C, 4, width): the class-aware tokens),
  ``TextEncoder.forward`` and ``CustomCLIP.forward`` (``logit_scale.exp()`` times the cosine; the loss
  ``cross_entropy + 8.0 * (1 - mean(cos(text, text_old)))``), ``TCP.forward_backward`` (Dassl's
  ``model_backward_and_update``, the schedule stepped after an epoch's last batch);
- ``trainers/clip_text/model.py`` ``ResidualAttentionBlock_MaPLe.forward``: when the block counter is in
  ``layers=[8]``, the rows 1..1+n of the hidden states become ``1.0 * tokens + (1 - 1.0) * rows`` before the block;
- ``configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml`` and ``scripts/base2new_train.sh``: Adam, lr 0.002, 50 epochs,
  batch 32, one constant warm-up epoch at 1e-5, cosine; N_CTX 4; the README's eps 1e-3 in Dassl's Adam
  (``dassl_clip.DasslOptim``).

The tiny CLIP's text tower has 2 layers, so the tokens enter before layer 1 here, where fewclip's default puts them
(two thirds up: 8 of 12 on ViT-B/16). fewclip's random initial context and TKE are given to the reference (both
draw them from their own generators), and so is the batch order. Compared: the gradients of the first step, each
epoch's loss, every trained tensor after 3 epochs, the logits, and the transfer to new class names; precision is fp32
on both sides (the reference trains in fp16).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fewclip.heads.prompts.tcp
from fewclip.backbones import CLIPBackbone
from fewclip.heads import Task, TcpHead
from tests.heads.test_coop import TASK_NAMES, synthetic_task
from tests.reference.dassl_clip import DasslOptim, ReferenceCLIPText, class_prompt_tokens, dassl_train, loader_batches
from tests.reference.recording import recording
from tests.reference.test_coop import LOGITS_TOL, epoch_means

SEED, EPOCHS, BATCH, LR = 3, 3, 5, 0.01
TEMPLATE = "a photo of the {}."  # CUSTOM_TEMPLATES_ori's entry (fewclip: prompts.templates)
N_CTX, LAYER, W = 4, 1, 8.0  # LAYER: the tiny tower's two thirds up (the reference's 8 of 12)
# Adam divides by sqrt(v) + eps, which can enlarge a rounding difference of a small gradient; observed <= 2.1e-7
PARAMS_TOL = dict(atol=1e-5, rtol=1e-5)
GRADS_RTOL = 1e-5  # of each tensor's largest gradient (fp32 rounding through the tower; observed <= 1.2e-6)


class ReferenceTCP:
    """``PromptLearner`` + ``CustomCLIP`` + ``TCP.forward_backward`` (fp32), from the given initial context and
    meta-net weights (``linear1.weight``, ``linear1.bias``, ``linear2.weight``, ``linear2.bias``)."""

    def __init__(
        self, clip: ReferenceCLIPText, class_names: list[str], ctx: torch.Tensor, meta_net: dict[str, torch.Tensor]
    ) -> None:
        self.clip = clip
        self.ctx = ctx.clone().requires_grad_(True)
        self.meta_net = {k: v.clone().requires_grad_(True) for k, v in meta_net.items()}
        prefix = " ".join(["X"] * N_CTX)  # CUSTOM_TEMPLATES: "X X X X {}."
        self.tokenized, self.token_prefix, self.token_suffix = class_prompt_tokens(clip, prefix, class_names, N_CTX)
        with torch.no_grad():
            text_features = clip.encode_text([TEMPLATE.format(c.replace("_", " ")) for c in class_names])
            self.text_features = text_features / text_features.norm(dim=-1, keepdim=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.ctx, *self.meta_net.values()]

    def class_feature(self) -> torch.Tensor:
        """``meta_net(text_features)`` reshaped to (C, 4, width)."""
        net = self.meta_net
        hidden = F.linear(self.text_features, net["linear1.weight"], net["linear1.bias"])
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        out = F.linear(hidden, net["linear2.weight"], net["linear2.bias"])
        return out.reshape(out.shape[0], -1, self.ctx.shape[-1])

    def text_features_norm(self) -> torch.Tensor:
        class_feature = self.class_feature()
        n_cls = self.token_prefix.shape[0]
        prompts = torch.cat([self.token_prefix, self.ctx.unsqueeze(0).expand(n_cls, -1, -1), self.token_suffix], 1)

        def before_layer(index: int, x: torch.Tensor) -> torch.Tensor:  # ResidualAttentionBlock_MaPLe, layers=[8]
            if index != LAYER:
                return x
            n, weight = class_feature.shape[1], 1.0
            midfix = weight * class_feature + (1 - weight) * x[:, 1 : 1 + n]
            return torch.cat([x[:, :1], midfix, x[:, 1 + n :]], dim=1)

        text_features = self.clip.encode(prompts, self.tokenized, before_layer)
        return text_features / text_features.norm(dim=-1, keepdim=True)

    def forward(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``CustomCLIP.forward``: (logits, score), score = 1 - mean cos(learned, hand-crafted)."""
        text_features_norm = self.text_features_norm()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = self.clip.logit_scale * image_features @ text_features_norm.t()
        score = 1.0 - torch.mean(F.cosine_similarity(text_features_norm, self.text_features, dim=1, eps=1e-07))
        return logits, score

    def train(
        self, features: torch.Tensor, labels: torch.Tensor, optim: DasslOptim, orders: list[torch.Tensor]
    ) -> tuple[list[float], list[torch.Tensor]]:
        """Each step's loss, and every parameter's gradient at the first step."""
        first_grads: list[torch.Tensor] = []

        def forward_backward(optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
            output, score = self.forward(features[batch])
            loss = F.cross_entropy(output, labels[batch]) + W * score
            optimizer.zero_grad()  # model_backward_and_update
            loss.backward()
            if not first_grads:
                first_grads.extend(p.grad.detach().clone() for p in self.parameters() if p.grad is not None)
            optimizer.step()
            return loss.item()

        return dassl_train(self.parameters(), optim, orders, forward_backward), first_grads


def meta_net_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fewclip's TKE tensors under the reference's ``meta_net`` names."""
    return {k[len("tke.") :]: v for k, v in state.items() if k.startswith("tke.")}


@pytest.fixture(scope="module")
def trained(backbone: CLIPBackbone, clip: ReferenceCLIPText) -> dict[str, Any]:
    """fewclip's TCP (default config but the short schedule) and the reference, trained on the same data."""
    config = fewclip.heads.prompts.tcp.TcpConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, select="last", calibrate=False)
    train = synthetic_task(backbone, 2, seed=1)  # 6 classes x 2 = 12 images: batches of 5, the partial one dropped
    with recording(fewclip.heads.prompts.tcp) as record:
        head = TcpHead(config).fit(Task(TASK_NAMES, [TEMPLATE], backbone, SEED), train)
    initial = record.initial_state
    reference = ReferenceTCP(clip, TASK_NAMES, initial["ctx"], meta_net_of(initial))
    orders = [epoch.order for epoch in record.epochs]
    for epoch in record.epochs:
        assert [b.tolist() for b in epoch.batches] == [b.tolist() for b in loader_batches(epoch.order, BATCH)]
    optim = DasslOptim(lr=LR, max_epoch=EPOCHS, batch_size=BATCH, name="adam", adam_eps=1e-3)
    losses, first_grads = reference.train(train.features, train.labels, optim, orders)
    return dict(head=head, reference=reference, record=record, losses=losses, first_grads=first_grads, train=train)


def test_the_start_is_the_reference_initialisation(trained: dict[str, Any], backbone: CLIPBackbone) -> None:
    """N(0, 0.02) context; the TKE is Linear(d, d/4) -> Linear(d/4, 4 x width) with PyTorch's default init."""
    initial, width, dim = trained["record"].initial_state, trained["reference"].ctx.shape[-1], backbone.dim
    assert initial["ctx"].shape == (N_CTX, width) and 0.01 < float(initial["ctx"].std()) < 0.03
    shapes = {k: tuple(v.shape) for k, v in meta_net_of(initial).items()}
    assert shapes == {
        "linear1.weight": (dim // 4, dim),
        "linear1.bias": (dim // 4,),
        "linear2.weight": (N_CTX * width, dim // 4),
        "linear2.bias": (N_CTX * width,),
    }
    for name, fan_in in (("linear1", dim), ("linear2", dim // 4)):  # kaiming_uniform(a=sqrt(5)) and its bias
        assert float(initial[f"tke.{name}.weight"].abs().max()) <= fan_in**-0.5
        assert float(initial[f"tke.{name}.bias"].abs().max()) <= fan_in**-0.5


def test_first_step_gradients_equal_the_reference(trained: dict[str, Any]) -> None:
    grads = trained["record"].first_grads
    names = ["ctx", *(f"tke.{k}" for k in trained["reference"].meta_net)]
    assert sorted(grads) == sorted(names)
    for name, expected in zip(names, trained["first_grads"], strict=True):
        largest = float(expected.abs().max())
        torch.testing.assert_close(grads[name], expected, atol=GRADS_RTOL * largest, rtol=GRADS_RTOL, msg=name)
        assert largest > 1e-4, name  # every tensor is trained


def test_training_follows_the_reference(trained: dict[str, Any]) -> None:
    head, reference, train = trained["head"], trained["reference"], trained["train"]
    assert [row["train_loss"] for row in head.history_] == pytest.approx(epoch_means(trained["losses"], 2), rel=1e-5)
    torch.testing.assert_close(head.params_.ctx, reference.ctx.detach(), **PARAMS_TOL)
    for name, tensor in reference.meta_net.items():
        torch.testing.assert_close(head.params_.state_dict()[f"tke.{name}"], tensor.detach(), **PARAMS_TOL)
    with torch.no_grad():
        logits, score = reference.forward(train.features)
        torch.testing.assert_close(head.uncalibrated_logits(train.features), logits, **LOGITS_TOL)
    # teeth: training moved every tensor far beyond the tolerance, and the consistency term weighs in the loss
    initial = trained["record"].initial_state
    assert float((reference.ctx.detach() - initial["ctx"]).abs().max()) > 1e-2
    moved = reference.meta_net["linear2.weight"].detach() - initial["tke.linear2.weight"]
    assert float(moved.abs().max()) > 1e-2
    assert W * score.item() > 1e-2
    # and the README's Adam eps matters: torch's default 1e-8 ends elsewhere
    default_eps = ReferenceTCP(reference.clip, TASK_NAMES, initial["ctx"], meta_net_of(initial))
    optim = DasslOptim(lr=LR, max_epoch=EPOCHS, batch_size=BATCH, name="adam")
    default_eps.train(train.features, train.labels, optim, [epoch.order for epoch in trained["record"].epochs])
    elsewhere = default_eps.meta_net["linear2.weight"].detach() - reference.meta_net["linear2.weight"].detach()
    assert float(elsewhere.abs().max()) > 1e-3


def test_the_class_aware_tokens_change_the_logits(trained: dict[str, Any]) -> None:
    """Without the insertion (the context alone, as CoOp) the logits differ: the tokens are really inserted."""
    reference, train = trained["reference"], trained["train"]
    with torch.no_grad():
        with_tokens = reference.forward(train.features)[0]
        n_cls = reference.token_prefix.shape[0]
        ctx = reference.ctx.unsqueeze(0).expand(n_cls, -1, -1)
        prompts = torch.cat([reference.token_prefix, ctx, reference.token_suffix], 1)
        text = reference.clip.encode(prompts, reference.tokenized)
        text = text / text.norm(dim=-1, keepdim=True)
        image = train.features / train.features.norm(dim=-1, keepdim=True)
        without = reference.clip.logit_scale * image @ text.t()
    assert float((with_tokens - without).abs().max()) > 1e-1


def test_transfer_maps_new_names_as_the_reference(
    trained: dict[str, Any], backbone: CLIPBackbone, clip: ReferenceCLIPText
) -> None:
    """base-to-new: the reference rebuilt on the new names with the trained context and meta-net."""
    head, reference, train = trained["head"], trained["reference"], trained["train"]
    new_names = ["purple cross", "orange ring"]
    new = ReferenceTCP(clip, new_names, reference.ctx.detach(), {k: v.detach() for k, v in reference.meta_net.items()})
    with torch.no_grad():
        expected = new.forward(train.features)[0]
    torch.testing.assert_close(
        head.transfer(backbone, new_names).uncalibrated_logits(train.features), expected, **LOGITS_TOL
    )


def test_defaults_follow_the_official_config() -> None:
    """``vit_b16_ep100_ctxv1.yaml`` (Adam lr 0.002, 50 epochs, batch 32, constant warm-up 1e-5, cosine, CTX_INIT
    False), ``base2new_train.sh`` (N_CTX 4), the README's Adam eps 1e-3, Dassl's defaults (weight decay 5e-4,
    betas 0.9 / 0.999, drop_last) and ``tcp.py``'s loss weight 8.0 and TKE width d / 4."""
    config = fewclip.heads.prompts.tcp.TcpConfig()
    assert (config.n_ctx, config.ctx_init, config.layer, config.reduction, config.weight) == (4, None, None, 4, 8.0)
    assert (config.optimizer, config.lr, config.adam_betas, config.adam_eps, config.weight_decay) == (
        "adam",
        0.002,
        (0.9, 0.999),
        1e-3,
        5e-4,
    )
    assert (config.epochs, config.batch_size, config.warmup_epochs, config.warmup_lr) == (50, 32, 1, 1e-5)
    assert (config.schedule, config.drop_last) == ("dassl", True)
    assert fewclip.heads.prompts.tcp.insert_layer(config, 12) == 8  # ViT-B/16's text tower: the reference's layer
