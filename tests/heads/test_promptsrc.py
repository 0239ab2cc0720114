"""PromptSRC on the tiny CLIP and the shapes images: the contract and the paper's parameter count, GPA keeping the
Gaussian-weighted sum of the epochs' prompts (and resuming it), vision depth 0 as the frozen image tower, the
checks, learning, save/reload and transfer to new class names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fewclip.heads import HEADS, ImageSet, Task
from fewclip.heads.contract import contract_problems, fitted_problems
from fewclip.heads.encoders.promptsrc import (
    IVLPPrompts,
    PromptSRCConfig,
    PromptSRCHead,
    PromptSRCNet,
    gpa_weights,
    teacher_text_features,
)

from tests.heads.image_tasks import assert_deep_prompts_reload_and_transfer, assert_resumes_as_whole, pixels_of

TEMPLATE = "a photo of a {}."


def config(**changes: Any) -> PromptSRCConfig:
    # the tiny CLIP has 2 layers a tower; 12 images in batches of 4: 3 steps an epoch
    values = dict(text_depth=2, vision_depth=2, epochs=3, batch_size=4, gpa_mean=2.0, gpa_std=1.0, augment=False)
    return PromptSRCConfig(**{**values, **changes})


def few(shapes: dict[str, Any], picked: tuple[int, ...] = (0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23)) -> ImageSet:
    """Some of the training images (fewer images: a faster test)."""
    return ImageSet([shapes["train"].paths[i] for i in picked], shapes["train"].labels[list(picked)])


def task(backbone: Any, shapes: dict[str, Any], **changes: Any) -> Task:
    return Task(shapes["classes"], [TEMPLATE], backbone, seed=3, shots=10, **changes)


def test_the_contract_holds_and_vit_b16_has_the_papers_parameter_count() -> None:
    assert contract_problems(PromptSRCHead) == []
    assert HEADS.get("promptsrc") is PromptSRCHead and PromptSRCHead.transfers and not PromptSRCHead.selects_epoch
    assert "select" not in PromptSRCConfig.model_fields  # GPA is kept, whatever val says
    # ViT-B/16: 4 text tokens of 512 in 9 layers, 4 vision tokens of 768 in 9 layers (the paper: 46K)
    prompts = IVLPPrompts(torch.zeros(4, 512), text_depth=9, n_ctx_vision=4, vision_depth=9, vision_width=768)
    assert sum(p.numel() for p in prompts.parameters()) == 9 * 4 * 512 + 9 * 4 * 768 == 46_080


def test_gpa_keeps_the_gaussian_weighted_sum_of_every_epochs_prompts(backbone: Any, shapes: dict[str, Any]) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []
    head = PromptSRCHead(config(lr=0.02))

    def snapshot(row: dict[str, float]) -> None:  # told as each epoch ends, after its last step
        snapshots.append({k: v.detach().clone() for k, v in head.net_.prompts.state_dict().items()})

    head.fit(task(backbone, shapes, on_epoch=snapshot), few(shapes), shapes["val"])
    weights = gpa_weights(3, 2.0, 1.0)
    assert weights[1] > weights[0] == pytest.approx(weights[2]) and sum(weights) == pytest.approx(1.0, abs=1e-12)
    learned = head.prompts_state_
    for name, value in learned.items():
        expected = sum(w * s[name] for w, s in zip(weights, snapshots))
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
        assert not torch.allclose(value, snapshots[-1][name], atol=1e-5)  # not the last epoch's
    # the evaluated prompts are the aggregate: the class texts scored with are computed from it
    torch.testing.assert_close(head.class_text_features_, head.net_.class_text_features(), atol=0, rtol=0)
    assert len(head.history_) == 3 and fitted_problems(head) == [] and "best_epoch_" not in vars(head)


def test_resume_after_a_kill_equals_an_uninterrupted_run(backbone: Any, shapes: dict[str, Any], tmp_path: Path) -> None:
    """The running GPA sum is in each checkpoint: a run killed after epoch 2 resumes to the same aggregate."""
    cfg = config(gpa_mean=1.5, accumulate=2)

    def fit(checkpoint: Path, on_epoch: Any) -> PromptSRCHead:
        return PromptSRCHead(cfg).fit(task(backbone, shapes, checkpoint=checkpoint, on_epoch=on_epoch), few(shapes))

    assert_resumes_as_whole(fit, tmp_path)


@torch.no_grad()
def test_vision_depth_zero_keeps_the_frozen_image_tower_and_the_teacher_follows_the_templates(
    backbone: Any, shapes: dict[str, Any]
) -> None:
    net = PromptSRCNet(backbone, shapes["classes"], config(vision_depth=0), seed=0)
    assert net.prompts.vision() == (None, []) and set(net.prompts.state_dict()) == {"ctx", "deep_text.0"}
    pixels = pixels_of(backbone, shapes["test"])[:6]
    frozen = torch.nn.functional.normalize(backbone.encode_images(pixels))
    torch.testing.assert_close(net.image_features(pixels), frozen, atol=1e-6, rtol=0)
    # the penalty's image term is then 0: what is left is the text term (the same for every image) and the KL
    net.teacher_text = teacher_text_features(backbone, shapes["classes"], [TEMPLATE])
    torch.testing.assert_close(
        net.teacher_text,
        torch.nn.functional.normalize(backbone.encode_text([TEMPLATE.format(n) for n in shapes["classes"]])),
    )
    net.train()
    out = net(pixels)
    text_term = 25.0 * (net.class_text_features() - net.teacher_text).abs().mean()
    log_p, log_q = out.logits.log_softmax(1), (net.logit_scale * frozen @ net.teacher_text.T).log_softmax(1)
    kl = (log_q.exp() * (log_q - log_p)).sum(1) / 3
    torch.testing.assert_close(out.penalty, text_term + kl, atol=1e-6, rtol=0)
    run = PromptSRCHead(config(teacher_templates="run"))
    assert run.teacher_templates(task(backbone, shapes)) == [TEMPLATE]
    assert len(PromptSRCHead().teacher_templates(task(backbone, shapes))) == 60


def test_check_refuses_a_backbone_without_deep_prompts_depths_beyond_the_towers_and_a_resnet(
    backbone: Any, shapes: dict[str, Any]
) -> None:
    no_prompts = SimpleNamespace(config=SimpleNamespace(library="open_clip"), offers=frozenset())
    with pytest.raises(ValueError, match="promptsrc needs deep_prompts"):
        PromptSRCHead().check(Task(shapes["classes"], [TEMPLATE], no_prompts))
    with pytest.raises(ValueError, match=r"promptsrc.text_depth 9 exceeds the model's 2 layers"):
        PromptSRCHead().check(Task(shapes["classes"], [TEMPLATE], backbone))
    with pytest.raises(ValueError, match=r"promptsrc.vision_depth 3 exceeds the model's 2 layers"):
        PromptSRCHead(config(vision_depth=3)).check(Task(shapes["classes"], [TEMPLATE], backbone))
    with pytest.raises(ValueError, match=r"promptsrc.ctx_init 'a' is 1 token\(s\) .* promptsrc.n_ctx_text is 4"):
        PromptSRCHead(config(ctx_init="a")).check(Task(shapes["classes"], [TEMPLATE], backbone))
    towers = SimpleNamespace(text_layers=2, vision_layers=0, text_width=64, vision_width=0)
    resnet = SimpleNamespace(
        config=SimpleNamespace(library="open_clip"),
        offers=frozenset({"deep_prompts"}),
        deep_prompt_towers=lambda: towers,
    )
    with pytest.raises(ValueError, match="set promptsrc.vision_depth: 0"):
        PromptSRCHead(config()).check(Task(shapes["classes"], [TEMPLATE], resnet))


def test_a_short_fit_raises_training_accuracy_and_moves_only_the_prompts(backbone: Any, shapes: dict[str, Any]) -> None:
    """Two images a class, batches of 2, four epochs: the GPA prompts classify the training images better than the
    initial ones (on the tiny random CLIP: 2 of 6 -> 4 of 6, cross-entropy 1.61 -> 0.99)."""
    frozen_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    train = few(shapes, (0, 1, 10, 11, 20, 21))
    pixels, labels = pixels_of(backbone, train), train.labels
    cfg = config(epochs=4, batch_size=2, lr=0.05, warmup_epochs=0, gpa_mean=4.0)
    with torch.no_grad():
        start = PromptSRCNet(backbone, shapes["classes"], cfg, seed=3)(pixels)
    head = PromptSRCHead(cfg).fit(task(backbone, shapes), train)
    logits = head.image_logits(pixels)
    accuracy, start_accuracy = [float((x.argmax(1) == labels).float().mean()) for x in (logits, start)]
    assert accuracy >= start_accuracy + 0.3, (start_accuracy, accuracy)
    cross_entropy = torch.nn.functional.cross_entropy
    assert float(cross_entropy(logits, labels)) < 0.8 * float(cross_entropy(start, labels))
    assert all(torch.equal(v, frozen_before[k]) for k, v in backbone.model.state_dict().items())
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert head.trainable_parameters() == 2 * 4 * 64 + 2 * 4 * 64  # ctx + 1 deep text; vision ctx + 1 deep


def test_saved_head_reloads_to_the_same_logits_and_transfers_to_new_names(
    backbone: Any, shapes: dict[str, Any], tmp_path: Path
) -> None:
    """The saved head is the learned prompts (text context, deep text prompts, vision prompts) and the scale."""
    head = PromptSRCHead(config(epochs=1, lr=0.02)).fit(task(backbone, shapes), few(shapes))
    prompts = {"ctx", "deep_text.0", "vision_ctx", "deep_vision.0"}
    assert set(head.state_dict()) == {f"prompts.{name}" for name in prompts} | {"logit_scale"}
    assert_deep_prompts_reload_and_transfer(head, backbone, shapes, tmp_path / "shot_10-seed_3")
