"""Zero-shot prompt ensembling against openai/CLIP ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``,
re-implemented from the notebook: ``zeroshot_classifier`` (per class: its template prompts encoded, each
embedding L2-normalised, averaged, the mean renormalised; stacked as (d, C)) and the evaluation cell
(``logits = 100. * image_features @ zeroshot_weights`` on normalised image features). The notebook's ``100.`` is
CLIP's ``logit_scale.exp()`` for the OpenAI weights; the tiny test model has its own, so the reference multiplies
by the backbone's ``logit_scale`` (a documented deviation of ``zero_shot``)."""

from __future__ import annotations


import torch

from fewclip.backbones import CLIPBackbone
from fewclip.heads import Task, ZeroShotHead
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task


TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "a drawing of a {}."]


def zeroshot_classifier(backbone: CLIPBackbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    with torch.no_grad():
        zeroshot_weights = []
        for classname in classnames:
            texts = [template.format(classname) for template in templates]
            class_embeddings = backbone.encode_text(texts)
            class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)
            class_embedding = class_embeddings.mean(dim=0)
            class_embedding /= class_embedding.norm()
            zeroshot_weights.append(class_embedding)
        return torch.stack(zeroshot_weights, dim=1)


def test_zero_shot_is_the_notebooks_ensemble(backbone: CLIPBackbone) -> None:
    test = cluster_task(backbone.dim, 4, seed=3)
    head = ZeroShotHead().fit(Task(TASK_NAMES, TEMPLATES, backbone))
    zeroshot_weights = zeroshot_classifier(backbone, TASK_NAMES, TEMPLATES)  # (d, C)
    # the text is encoded in other batch shapes (per class here, all prompts at once in fewclip): 1e-6
    torch.testing.assert_close(head.prototypes_, zeroshot_weights.T, atol=1e-6, rtol=1e-5)
    image_features = test.features / test.features.norm(dim=-1, keepdim=True)
    logits = backbone.logit_scale * image_features @ zeroshot_weights
    torch.testing.assert_close(head.logits(test.features), logits, atol=1e-5, rtol=1e-5)
    # the renormalised mean of normalised embeddings is not the mean of the raw ones
    raw = backbone.encode_text([t.format(n) for t in TEMPLATES for n in TASK_NAMES]).reshape(3, len(TASK_NAMES), -1)
    raw_mean = raw.mean(0) / raw.mean(0).norm(dim=-1, keepdim=True)
    assert (raw_mean - zeroshot_weights.T).abs().max().item() > 1e-3
