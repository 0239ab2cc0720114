"""``fewclip export``: an exported classifier folder predicts what the run's head predicts (labels and
probabilities within 1e-5) through ``load_classifier`` and ``fewclip predict``, without the run directory; a
model whose fingerprint changed is refused, naming what differs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTokenizer

import fewclip
from fewclip.data.images import read_image
from fewclip.runner import pipeline
from fewclip.runner.cli import main
from fewclip.heads import HEADS
from fewclip.runner.export import check_mergeable, export_classifier
from fewclip.runner.export_folder import ModelMismatch
from fewclip.runner.predict import Classifier, HeadNotTrained
from tests.open_clip_models import build_open_clip, require_open_clip

NO_FIGURES = "output.figures=false"  # figures and saliency are not what these tests are about, and slow


def all_probabilities(classifier: Classifier, images: list[Path]) -> torch.Tensor:
    """(n, C) probabilities of every class, columns in the classifier's class order."""
    rows = []
    for result in classifier.predict(images, top_k=len(classifier.class_names)):
        by_label = dict(result.top_k)
        rows.append([by_label[name] for name in classifier.class_names])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture()
def run(make_config: Callable[..., Any]) -> Path:
    config = make_config("methods=[zero_shot,linear_probe,tip_adapter]", "few_shot.shots=[1,2]", NO_FIGURES)
    pipeline.run(config)
    return Path(config.output.dir)


@pytest.fixture()
def test_images(shapes_dir: Path) -> list[Path]:
    return sorted((shapes_dir / "test").rglob("*.png"))


def test_exported_folder_predicts_as_the_run_without_it(run: Path, test_images: list[Path], tmp_path: Path) -> None:
    expected = {}
    for method, shots in [("zero_shot", 0), ("linear_probe", 1), ("tip_adapter", 2)]:
        original = fewclip.load_classifier(run, method=method, shots=shots)
        expected[method] = (original.class_names, all_probabilities(original, test_images))
        export_classifier(run, tmp_path / "exports" / method, method=method, shots=shots)
    moved = tmp_path / "elsewhere"
    shutil.move(run, moved)  # the exports must not need the run directory
    shutil.rmtree(moved)
    for method, (class_names, probabilities) in expected.items():
        exported = fewclip.load_classifier(tmp_path / "exports" / method)
        assert exported.class_names == class_names and exported.method == method
        assert exported.why.startswith(f"exported to {tmp_path / 'exports' / method}: as asked")
        got = all_probabilities(exported, test_images)
        torch.testing.assert_close(got, probabilities, atol=1e-5, rtol=0)
        assert got.argmax(dim=1).tolist() == probabilities.argmax(dim=1).tolist()


def test_classifier_json_records_model_head_classes_and_recommendation(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "best"
    classifier = export_classifier(run, out)  # the run's recommended head
    document = json.loads((out / "classifier.json").read_text())
    recommendation = json.loads((run / "results" / "recommendation.json").read_text())
    assert (document["method"], document["shots"], document["seed"]) == (
        recommendation["method"],
        recommendation["shots"],
        recommendation["seed"],
    )
    assert document["recommendation"] == recommendation
    assert document["why"] == classifier.why and classifier.why.startswith("the run's recommendation")
    head = json.loads((out / "head.json").read_text())
    assert document["class_names"] == head["class_names"] == ["blue triangle", "green square", "red circle"]
    assert document["templates"] == head["templates"] and document["templates"][0] == "a photo of a {}."
    assert document["fingerprint"] == json.loads(json.dumps(classifier.backbone.fingerprint()))
    assert document["preprocessing"] == document["fingerprint"]["preprocess"]
    assert document["model"]["id"] == classifier.backbone.config.id
    unit = f"{document['method']}/shot_{document['shots']}-seed_{document['seed']}"
    for suffix in (".json", ".safetensors"):
        assert (out / f"head{suffix}").read_bytes() == (run / "heads" / f"{unit}{suffix}").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "head.json", "head.safetensors"]


def test_a_changed_model_is_refused_naming_what_differs(
    make_config: Callable[..., Any], tiny_clip: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_clip, model)
    config = make_config(f"model.id={model}", "few_shot.shots=[1]", NO_FIGURES)
    pipeline.run(config)
    export_classifier(config.output.dir, tmp_path / "export", method="linear_probe")
    preprocessor = json.loads((model / "preprocessor_config.json").read_text())
    preprocessor["image_mean"] = [0.5, 0.5, 0.5]
    (model / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    with pytest.raises(ModelMismatch, match=r"classifier\.json: model .* what differs: preprocess: recorded"):
        fewclip.load_classifier(tmp_path / "export")


def test_cli_exports_and_predicts_from_the_folder(
    run: Path, test_images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probe"
    assert main(["-q", "export", str(run), "--method", "linear_probe", "--shots", "2", "--out", str(out)]) == 0
    assert f"classifier: {out} (fewclip predict {out} IMAGE...)" in capsys.readouterr().out
    from_run = fewclip.load_classifier(run, method="linear_probe", shots=2).predict(test_images[:2], top_k=1)
    assert main(["-q", "predict", str(out), *map(str, test_images[:2]), "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    assert f"fewclip: predicting with linear_probe/shot_2-seed_1: exported to {out}: as asked" in captured.err
    assert captured.out == "".join(f"{r.path}\n  {r.top_k[0][1]:.4f}  {r.label}\n" for r in from_run)
    # another head than the one the folder holds, an --out that is not empty, a head the run did not train
    assert main(["-q", "predict", str(out), str(test_images[0]), "--shots", "1"]) == 2
    assert "holds one head, linear_probe shots=2 seed=1" in capsys.readouterr().err
    assert main(["-q", "export", str(run), "--out", str(out)]) == 2
    assert f"--out {out} exists and is not an empty folder" in capsys.readouterr().err
    assert main(["-q", "export", str(run), "--method", "coop", "--out", str(tmp_path / "new")]) == 2
    assert "no trained head for method=coop; trained heads:" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_load_exported_refuses_an_asked_head_it_does_not_hold(run: Path, tmp_path: Path) -> None:
    export_classifier(run, tmp_path / "zs", method="zero_shot")
    with pytest.raises(HeadNotTrained, match="holds one head, zero_shot shots=0 seed=0"):
        fewclip.load_classifier(tmp_path / "zs", method="linear_probe")


def onnx_probabilities(folder: Path, images: list[Path]) -> torch.Tensor:
    """(n, C) probabilities of ``classifier.onnx`` under onnxruntime, fed pixels preprocessed as classifier.json says
    (here by fewclip's own transform, which that recipe describes)."""
    import onnxruntime  # in the test extra: a missing one fails here rather than skipping the check

    classifier = fewclip.load_classifier(folder)
    pixels = np.stack([classifier.backbone.transform(read_image(path)) for path in images])
    session = onnxruntime.InferenceSession(str(folder / "classifier.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"pixels": pixels})
    return torch.from_numpy(probabilities).double()


@pytest.mark.parametrize(
    ("method", "shots", "extra"),
    [
        ("zero_shot", 0, ()),
        ("linear_probe", 2, ()),
        ("tip_adapter", 1, ()),
        ("coop", 1, ("coop.epochs=2", "coop.n_ctx=4")),
    ],
)
def test_onnx_model_gives_the_runs_probabilities(
    make_config: Callable[..., Any],
    test_images: list[Path],
    tmp_path: Path,
    method: str,
    shots: int,
    extra: tuple[str, ...],
) -> None:
    import onnx  # noqa: F401  # in the test extra (the exporter needs it): missing, the test fails, not skips

    config = make_config(f"methods=[{method}]", "few_shot.shots=[1,2]", *extra, NO_FIGURES)
    pipeline.run(config)
    out = tmp_path / "onnx"
    original = export_classifier(config.output.dir, out, method=method, shots=shots, export_format="onnx")
    expected = all_probabilities(original, test_images)
    assert json.loads((out / "classifier.json").read_text())["onnx"] == "classifier.onnx"
    got = onnx_probabilities(out, test_images)  # several images in one batch: the batch axis is free
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got.argmax(dim=1).tolist() == expected.argmax(dim=1).tolist()
    torch.testing.assert_close(onnx_probabilities(out, test_images[:1]), expected[:1], atol=1e-5, rtol=0)


def test_onnx_refuses_heads_that_do_not_score_frozen_features(
    make_config: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config("methods=[cocoop]", "few_shot.shots=[1]", "cocoop.epochs=1", NO_FIGURES)
    pipeline.run(config)
    out = tmp_path / "onnx"
    assert main(["-q", "export", str(config.output.dir), "--format", "onnx", "--out", str(out)]) == 2
    assert "--format onnx: cocoop builds its class prompts from each image" in capsys.readouterr().err
    assert not out.exists()


LORA = ("clip_lora.iterations_per_shot=3", "clip_lora.batch_size=4", "clip_lora.lr=0.02", "clip_lora.select=last")
SVD = ("clip_svd.iterations_per_shot=3", "clip_svd.batch_size=4", "clip_svd.lr=0.05", "clip_svd.select=last")


@pytest.mark.parametrize("method, settings", [("clip_lora", LORA), ("clip_svd", SVD)])
def test_merged_model_loaded_by_transformers_alone_gives_the_heads_logits(
    make_config: Callable[..., Any], test_images: list[Path], tmp_path: Path, method: str, settings: tuple[str, ...]
) -> None:
    config = make_config(f"methods=[{method}]", "few_shot.shots=[2]", *settings, NO_FIGURES)
    pipeline.run(config)
    out = tmp_path / method
    assert main(["-q", "export", str(config.output.dir), "--merged", "--out", str(out)]) == 0
    classifier = fewclip.load_classifier(config.output.dir)
    pixels = torch.from_numpy(np.stack([classifier.backbone.transform(read_image(p)) for p in test_images]))
    expected = classifier.head.image_logits(pixels)  # the adapters on top of the frozen weights

    model = CLIPModel.from_pretrained(out / "merged").eval()  # transformers alone, no peft, no fewclip
    assert not any(part in name for name, _ in model.named_parameters() for part in ("lora", "singular"))
    text = load_file(out / "class_text_features.safetensors")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        logits = text["logit_scale"] * torch.nn.functional.normalize(image, dim=-1) @ text["class_text_features"].T
        tokenizer = CLIPTokenizer.from_pretrained(out / "merged")
        prompts = [f"a photo of a {name}." for name in classifier.class_names]
        encoded = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt")).pooler_output
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(  # the saved class text features are the merged text tower's
        torch.nn.functional.normalize(encoded, dim=-1), text["class_text_features"], atol=1e-5, rtol=0
    )
    frozen = classifier.backbone.encode_images(pixels)  # the merge changed the image tower: training moved it
    assert float((frozen - image).abs().max()) > 1e-3
    # the folder also loads in fewclip, and its predictions are the run's
    exported = fewclip.load_classifier(out)
    torch.testing.assert_close(
        all_probabilities(exported, test_images), all_probabilities(classifier, test_images), atol=1e-5, rtol=0
    )


def test_merged_refuses_heads_without_adapters(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--merged: linear_probe has no adapters to merge into the model"):
        export_classifier(run, tmp_path / "probe", method="linear_probe", merged=True)


@pytest.mark.parametrize("method", ["maple", "promptsrc"])
def test_merged_refuses_deep_prompts_saying_why(method: str) -> None:
    """MaPLe's and PromptSRC's learned prompts are extra tokens in every block: no plain CLIP holds them."""
    classifier = SimpleNamespace(method=method, head=HEADS.get(method)())
    with pytest.raises(ValueError, match=rf"--merged: {method} trains prompts that the library's plain model has no"):
        check_mergeable(classifier)  # type: ignore[arg-type]


@pytest.mark.open_clip
def test_onnx_model_of_an_open_clip_backbone(
    make_config: Callable[..., Any], test_images: list[Path], tmp_path: Path
) -> None:
    require_open_clip()
    import onnx  # noqa: F401  # in the test extra (the exporter needs it): missing, the test fails, not skips

    config_file, weights = build_open_clip(tmp_path / "model", "fewclip-tiny-vit")
    model = ["model.library=open_clip", f"model.id={config_file}", f"model.pretrained={weights}"]
    config = make_config(*model, "methods=[linear_probe]", "few_shot.shots=[1]", NO_FIGURES)
    pipeline.run(config)
    original = export_classifier(config.output.dir, tmp_path / "onnx", method="linear_probe", export_format="onnx")
    got = onnx_probabilities(tmp_path / "onnx", test_images)
    torch.testing.assert_close(got, all_probabilities(original, test_images), atol=1e-5, rtol=0)
