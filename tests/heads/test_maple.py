"""MaPLe on the tiny CLIP and the shapes images: CoOp/zero-shot exactness at depth 1 without coupling, the deep
prompts' positions in both towers, causality, frozen weights, the schedule, learning, resume, save/load,
transfer and the run end to end."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch

from fewclip.heads import HEADS, Task
from fewclip.heads.contract import contract_problems, fitted_problems
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.training.encoder_schedule import build_optimizer
from fewclip.heads.encoders.maple import MapleConfig, MapleHead, MapleNet
from fewclip.backbones.hf_deep_prompts import image_features, text_hidden
from fewclip.heads.encoders.maple_prompts import MaplePrompts
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.runner.layout import RunLayout

from tests.heads.image_tasks import assert_deep_prompts_reload_and_transfer, assert_resumes_as_whole, pixels_of

TEMPLATE = "a photo of a {}."


def config(**changes: Any) -> MapleConfig:
    # the tiny CLIP has 2 layers (depth <= 2); 30 images in batches of 8: 3 steps an epoch (Dassl drops the last 6)
    values = dict(depth=2, epochs=3, batch_size=8, select="last")
    return MapleConfig(**{**values, **changes})


def task(backbone: Any, shapes: dict[str, Any], **changes: Any) -> Task:
    return Task(shapes["classes"], [TEMPLATE], backbone, seed=3, shots=10, **changes)


def test_the_contract_holds_and_defaults_are_the_papers() -> None:
    assert contract_problems(MapleHead) == []
    assert HEADS.get("maple") is MapleHead and MapleHead.tunes_encoders and MapleHead.transfers
    cfg = MapleConfig()
    assert (cfg.depth, cfg.n_ctx, cfg.ctx_init, cfg.coupling) == (9, 2, "a photo of a", True)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (0.0035, 0.9, 5e-4, 4, 5)
    assert (cfg.warmup_epochs, cfg.warmup_lr) == (1, 1e-5)


def test_vit_b16_prompts_have_the_papers_parameter_count() -> None:
    """ViT-B/16: text width 512, vision width 768, 2 tokens, depth 9: ~3.55M (the paper's Table)."""
    prompts = MaplePrompts(torch.zeros(2, 512), depth=9, coupling=True, vision_width=768)
    by_hand = 2 * 512 + 8 * 2 * 512 + 9 * (512 * 768 + 768)
    assert sum(p.numel() for p in prompts.parameters()) == by_hand == 3_555_072
    assert all(torch.equal(layer.weight, prompts.deep_proj[0].weight) for layer in prompts.deep_proj)  # cloned init


def test_depth_one_without_coupling_is_zero_shot_at_init(backbone: Any, shapes: dict[str, Any]) -> None:
    """ctx from "a photo of a" (4 and 2 learned tokens): the prompt is the template's, the image tower frozen."""
    pixels = pixels_of(backbone, shapes["test"])
    frozen = backbone.encode_images(pixels)
    expected = ZeroShotHead().fit(Task(shapes["classes"], [TEMPLATE], backbone)).logits(frozen)
    for n_ctx in (4, 2):
        net = MapleNet(backbone, shapes["classes"], config(depth=1, coupling=False, n_ctx=n_ctx), seed=0)
        with torch.no_grad():
            torch.testing.assert_close(net(pixels), expected, atol=1e-5, rtol=0)
            features = image_features(backbone.model, pixels, None, [])
        # no vision prompts: the frozen tower's computation (to float rounding: encode_images batches by
        # model.batch_size, and BLAS rounds by shape)
        torch.testing.assert_close(features, frozen, atol=1e-6 * float(frozen.abs().max()), rtol=1e-6)


def test_depth_one_without_coupling_equals_coop_with_the_same_context(backbone: Any, shapes: dict[str, Any]) -> None:
    net = MapleNet(backbone, shapes["classes"], config(depth=1, coupling=False, n_ctx=4, ctx_init=None), seed=0)
    ctx = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        net.prompts.ctx.copy_(ctx)
        coop_text = CoOpPrompts(backbone, shapes["classes"], 4, "end", "fp32", "coop").features(ctx)
        pixels = pixels_of(backbone, shapes["test"])
        coop_logits = backbone.logit_scale * torch.nn.functional.normalize(backbone.encode_images(pixels)) @ coop_text.T
        torch.testing.assert_close(net(pixels), coop_logits, atol=1e-5, rtol=0)
        other = MapleNet(backbone, shapes["classes"], config(depth=1, coupling=False, n_ctx=4, ctx_init=None), seed=1)
        assert not torch.allclose(other.class_text_features(), coop_text, atol=1e-3)  # another context: other features


def capture(store: dict[int, torch.Tensor]) -> Callable[[int, torch.Tensor], None]:
    return lambda index, hidden: store.__setitem__(index, hidden.detach().clone())


@torch.no_grad()
def test_deep_text_prompts_replace_the_context_rows(backbone: Any, shapes: dict[str, Any]) -> None:
    """Deep prompts set to the hidden states a depth-1 forward has at rows 1..n_ctx give that forward's output;
    other deep prompts change it."""
    net = MapleNet(backbone, shapes["classes"], config(depth=1, coupling=False), seed=0)
    embeds = torch.cat([net.base_embeds[:, :1], net.prompts.ctx.expand(3, -1, -1), net.base_embeds[:, 3:]], dim=1)
    inputs: dict[int, torch.Tensor] = {}
    shallow = text_hidden(backbone.model, embeds, [], on_layer=capture(inputs))
    context_rows = inputs[1][:, 1:3]
    assert torch.equal(context_rows, context_rows[:1].expand(3, -1, -1))  # causal: the same for every class
    deep = text_hidden(backbone.model, embeds, [context_rows[0]])
    torch.testing.assert_close(deep, shallow, atol=1e-6, rtol=0)
    seen: dict[int, torch.Tensor] = {}
    other = torch.randn(2, 64)
    changed = text_hidden(backbone.model, embeds, [other], on_layer=capture(seen))
    assert torch.equal(seen[1][:, 1:3], other.expand(3, -1, -1)) and torch.equal(seen[1][:, 3:], inputs[1][:, 3:])
    assert torch.equal(changed[:, 0], shallow[:, 0])  # the SOS row never sees the replaced rows
    assert not torch.allclose(changed[:, 3:], shallow[:, 3:], atol=1e-4)


@torch.no_grad()
def test_text_attention_stays_causal(backbone: Any, shapes: dict[str, Any]) -> None:
    net = MapleNet(backbone, shapes["classes"], config(depth=2), seed=0)
    embeds = torch.cat([net.base_embeds[:, :1], net.prompts.ctx.expand(3, -1, -1), net.base_embeds[:, 3:]], dim=1)
    deep = list(net.prompts.deep_text)
    before = text_hidden(backbone.model, embeds, deep)
    later = embeds.clone()
    later[:, 5:] += torch.randn_like(later[:, 5:])  # change every token after position 4
    after = text_hidden(backbone.model, later, deep)
    assert torch.equal(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:], atol=1e-4)


@torch.no_grad()
def test_vision_prompts_enter_before_ln_pre_and_deep_ones_replace_the_last_rows(
    backbone: Any, shapes: dict[str, Any]
) -> None:
    model = backbone.model
    pixels = pixels_of(backbone, shapes["test"])[:1]  # one image: its prompt rows' states are one tensor
    shallow = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    inputs: dict[int, torch.Tensor] = {}
    once = image_features(model, pixels, shallow, [], on_layer=capture(inputs))
    patches = model.vision_model.embeddings.num_positions
    assert inputs[0].shape[1] == patches + 2
    # appended after the class + patch tokens, without position embeddings, and normalised by pre_layrnorm
    torch.testing.assert_close(inputs[0][0, patches:], model.vision_model.pre_layrnorm(shallow), atol=1e-6, rtol=0)
    embedded = model.vision_model.embeddings(pixels)
    torch.testing.assert_close(inputs[0][:, :patches], model.vision_model.pre_layrnorm(embedded), atol=1e-6, rtol=0)
    deep = image_features(model, pixels, shallow, [inputs[1][0, patches:]])
    torch.testing.assert_close(deep, once, atol=1e-6, rtol=0)
    assert not torch.allclose(image_features(model, pixels, shallow, [torch.randn(2, 64)]), once, atol=1e-4)


def test_check_refuses_open_clip_a_depth_beyond_the_towers_and_a_short_ctx_init(
    backbone: Any, shapes: dict[str, Any]
) -> None:
    open_clip = SimpleNamespace(config=SimpleNamespace(library="open_clip"), offers=frozenset())  # no deep prompts
    with pytest.raises(
        ValueError,
        match="maple needs deep_prompts, which the open_clip backbone does not offer; "
        "use model.library=hf or remove maple from methods",
    ):
        MapleHead().check(Task(shapes["classes"], [TEMPLATE], open_clip))
    with pytest.raises(ValueError, match=r"maple.depth 9 exceeds the model's 2 layers .*at most 2"):
        MapleHead().check(Task(shapes["classes"], [TEMPLATE], backbone))
    with pytest.raises(ValueError, match=r"maple.ctx_init 'a' is 1 token\(s\) .* maple.n_ctx is 2"):
        MapleHead(config(ctx_init="a")).check(Task(shapes["classes"], [TEMPLATE], backbone))


def test_the_sgd_plan_sets_dassls_rate_per_epoch() -> None:
    """Three steps an epoch, five epochs, one warm-up epoch: epoch e trains at 1e-5, then lr(1+cos(pi(e-1)/5))/2."""
    plan = SimpleNamespace(
        optimizer="sgd",
        lr=0.0035,
        momentum=0.9,
        weight_decay=5e-4,
        iterations=15,
        steps_per_epoch=3,
        warmup_epochs=1,
        warmup_lr=1e-5,
    )
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(1))], plan)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 5e-4
    rates = []
    for _ in range(15):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-5] + [0.0035 * (1 + math.cos(math.pi * (e - 1) / 5)) / 2 for e in range(1, 5)]
    assert rates == pytest.approx([r for r in expected for _ in range(3)], rel=1e-12)


def test_training_moves_only_the_prompts_and_lowers_the_loss(backbone: Any, shapes: dict[str, Any]) -> None:
    frozen_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    pixels, labels = pixels_of(backbone, shapes["train"]), shapes["train"].labels
    cfg = config(epochs=3, lr=0.003, n_ctx=4, warmup_epochs=0, augment=False)
    start = MapleNet(backbone, shapes["classes"], cfg, seed=3)
    with torch.no_grad():
        start_loss = float(torch.nn.functional.cross_entropy(start(pixels), labels))
    head = MapleHead(cfg).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    assert all(torch.equal(v, frozen_before[k]) for k, v in backbone.model.state_dict().items())
    assert not any(p.requires_grad for p in backbone.model.parameters())
    logits = head.image_logits(pixels)
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    assert loss < 0.85 * start_loss, (loss, start_loss)
    for name, value in start.prompts.state_dict().items():  # every learned tensor moved
        assert not torch.equal(head.net_.prompts.state_dict()[name], value), name
    assert len(head.history_) == 3 and head.best_epoch_ == 3 and fitted_problems(head) == []
    # ctx 4 x 64, one deep text prompt 4 x 64, two Linears 64 -> 64 (+ bias)
    assert head.trainable_parameters() == 4 * 64 + 4 * 64 + 2 * (64 * 64 + 64) == 8832


def test_resume_after_a_kill_equals_an_uninterrupted_run(backbone: Any, shapes: dict[str, Any], tmp_path: Path) -> None:
    cfg = config(select="val_loss", accumulate=2)

    def fit(checkpoint: Path, on_epoch: Any) -> MapleHead:
        unit = task(backbone, shapes, checkpoint=checkpoint, on_epoch=on_epoch)
        return MapleHead(cfg).fit(unit, shapes["train"], shapes["val"])

    whole = assert_resumes_as_whole(fit, tmp_path)
    assert [row["lr"] for row in whole.history_] == pytest.approx(
        [1e-5, 0.0035, 0.0035 * (1 + math.cos(math.pi / 3)) / 2]
    )


def test_saved_head_is_the_prompts_reloads_to_the_same_logits_and_transfers(
    backbone: Any, shapes: dict[str, Any], tmp_path: Path
) -> None:
    head = MapleHead(config(epochs=1)).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    assert_deep_prompts_reload_and_transfer(head, backbone, shapes, tmp_path / "shot_10-seed_3")
    assert set(head.state_dict()) == {
        "prompts.ctx",
        "prompts.deep_text.0",
        "prompts.proj.weight",
        "prompts.proj.bias",
        "prompts.deep_proj.0.weight",
        "prompts.deep_proj.0.bias",
        "logit_scale",
    }


def test_fewclip_run_with_maple_then_predict(make_config: Callable[..., Any], tmp_path: Path) -> None:
    import fewclip
    from fewclip.runner.cli import main
    from fewclip.fileio import read_csv

    cfg = make_config(
        "maple.depth=2",
        "maple.epochs=2",
        "maple.batch_size=4",
        methods=["maple"],
        few_shot={"shots": [2]},
        output={"figures": False},
    )
    config_file = tmp_path / "maple.yaml"
    config_file.write_text(cfg.to_yaml())
    assert main(["-q", "run", str(config_file)]) == 0
    root = Path(cfg.output.dir)
    rows = [r for r in read_csv(RunLayout(root).summary) if r["method"] == "maple"]
    assert [(r["shots"], r["seed"], r["split"]) for r in rows] == [("2", "1", "test")]
    predictions = read_csv(root / "predictions" / "maple" / "shot_2-seed_1-test.csv")
    assert len(predictions) == int(rows[0]["n_eval"]) > 0
    assert sorted(p.name for p in (root / "heads" / "maple").iterdir()) == [
        "shot_2-seed_1.json",
        "shot_2-seed_1.safetensors",
    ]
    classifier = fewclip.load_classifier(root, method="maple")
    data = RunLayout(root).data
    paths = [Path(row["path"]) if Path(row["path"]).is_absolute() else data / row["path"] for row in predictions]
    assert [r.label for r in classifier.predict(paths, top_k=1)] == [row["pred_name"] for row in predictions]


def test_gradient_checkpointing_gives_the_same_training_and_bf16_trains(backbone: Any, shapes: dict[str, Any]) -> None:
    plain = MapleHead(config(epochs=1)).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    recomputed = MapleHead(config(epochs=1, gradient_checkpointing=True)).fit(
        task(backbone, shapes), shapes["train"], shapes["val"]
    )
    assert recomputed.net_.recompute and not plain.net_.recompute
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(recomputed.state_dict()[name], value, atol=1e-6, rtol=1e-5)
    bf16 = MapleHead(config(epochs=1, precision="bf16")).fit(task(backbone, shapes), shapes["train"], shapes["val"])
    assert all(np.isfinite(row["train_loss"]) for row in bf16.history_)
