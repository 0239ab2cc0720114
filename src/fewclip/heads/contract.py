"""What a head declares about itself, and the checks that hold a head to its declarations.

Every optional capability is a boolean class attribute (scikit-learn's estimator tags; ``base.HeadBase`` gives
each its default, False): callers read the flag, never probe with ``hasattr``. Each ``Capability`` names what the flag promises -- methods, config
keys, learned state after ``fit`` -- so ``contract_problems`` (run over every registered head by
``tests/heads/test_contract.py``) fails a head whose flag and code disagree, e.g. a misspelt optional
method that callers would otherwise silently skip.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from fewclip.backbones.protocol import CAPABILITIES as BACKBONE_CAPABILITIES
from fewclip.configbase import ConfigBlock
from fewclip.heads.selection_protocol import selection_problems


@dataclass(frozen=True)
class Capability:
    """A flag a head class declares (``True`` / ``False``) and what ``True`` promises.

    A head declaring the flag must have ``methods`` and its Config the ``config_keys``; one that does not
    declare it must have neither (an undeclared method is never called). ``fitted`` is state ``fit`` (and
    ``load_head``) sets only when the flag is on. ``arguments`` names, per method, the parameters callers
    pass (after ``self``): a head whose method takes others fails before a caller does.
    """

    flag: str
    meaning: str
    methods: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    fitted: tuple[str, ...] = ()
    arguments: tuple[tuple[str, tuple[str, ...]], ...] = ()


CAPABILITIES: tuple[Capability, ...] = (
    Capability(
        "uses_shots",
        "fit(task, train, val) learns from few-shot features; False: fit(task) once, without "
        "images (one unit per method, no splits)",
    ),
    Capability("uses_text", "fit needs Task.backbone (the text tower); a text head must also declare checks_task"),
    Capability(
        "checks_task", "check(task) fails before any training on bad input (e.g. a prompt too long)", methods=("check",)
    ),
    Capability(
        "transfers",
        "transfer(backbone, class_names) gives the head for other class names (base-to-new); "
        "for a tunes_encoders head, one whose image_logits score them through the same tuned towers",
        methods=("transfer",),
        arguments=(("transfer", ("backbone", "class_names")),),
    ),
    Capability(
        "needs_text_at_predict",
        "attach(backbone, class_names) after loading, before logits (prompts that depend on the image)",
        methods=("attach",),
    ),
    Capability(
        "per_template_scores",
        "template_logits(features) -> (T, n, C), one score set per template in templates_",
        methods=("template_logits",),
        fitted=("templates_",),
    ),
    Capability(
        "has_differentiable_logits",
        "logits() runs without autograd; differentiable_logits(features) is "
        "what saliency backpropagates through (False: logits() itself is differentiable)",
        methods=("differentiable_logits",),
    ),
    Capability(
        "uses_augmented_views",
        "the Config's augment_views (int) asks the features stage for that many "
        "cached augmented views per support image, given to fit as FeatureSet.views",
        config_keys=("augment_views",),
    ),
    Capability(
        "selects_epoch",
        "trains over epochs and keeps one by the shared rule (heads.selection, the "
        "Config's select); best_epoch_ (1-based) and selection_ record it",
        config_keys=("select",),
        fitted=("best_epoch_",),
    ),
    Capability(
        "calibrates",
        "temperature-scales its logits on val (the Config's calibrate); calibration_ and temperature_ record it",
        config_keys=("calibrate",),
        fitted=("temperature_",),
    ),
    Capability(
        "tunes_encoders",
        "trains inside the encoders: fit(task, train, val) gets ImageSets (image files "
        "and labels, decoded and augmented per step) instead of cached features, and "
        "image_logits(pixels) scores preprocessed images through its own tuned towers (evaluation and "
        "predict call it instead of logits on the frozen features); image_saliency_pass(pixels) gives "
        "(logits, spatial activations) of its tuned image tower on one autograd graph (saliency)",
        methods=("image_logits", "image_saliency_pass"),
        arguments=(("image_logits", ("pixels",)), ("image_saliency_pass", ("pixels",))),
    ),
)


def capability(flag: str) -> Capability:
    return next(c for c in CAPABILITIES if c.flag == flag)


def contract_problems(head_cls: type) -> list[str]:
    """Everything a head class gets wrong about the contract (empty: it conforms), checked without fitting."""
    name = getattr(head_cls, "name", head_cls.__name__)  # a broken head may lack even its name
    problems: list[str] = []
    for attr, kind in (("name", str), ("Config", type)):
        if not isinstance(getattr(head_cls, attr, None), kind):
            problems.append(f"{name}: class attribute {attr} must be a {kind.__name__}")
    config_cls = getattr(head_cls, "Config", None)
    if isinstance(config_cls, type) and not issubclass(config_cls, ConfigBlock):
        problems.append(f"{name}: Config must subclass fewclip.configbase.ConfigBlock")
    key = getattr(head_cls, "config_key", ...)
    if key is not None and not (isinstance(key, str) and key.isidentifier()):
        problems.append(
            f"{name}: config_key must be the name of its top-level config block (an identifier) or "
            f"None (no hyperparameters), got {key!r}"
        )
    config_keys = (
        set(config_cls.model_fields) if isinstance(config_cls, type) and issubclass(config_cls, ConfigBlock) else set()
    )
    for cap in CAPABILITIES:
        declared = getattr(head_cls, cap.flag, None)
        if not isinstance(declared, bool):
            problems.append(f"{name}: declare {cap.flag} = True or False ({cap.meaning})")
            continue
        for method in cap.methods:
            if callable(getattr(head_cls, method, None)) != declared:
                problems.append(
                    f"{name}: {cap.flag} is {declared} but the class "
                    f"{'lacks' if declared else 'defines'} {method}() ({cap.meaning})"
                )
        if declared:
            problems += argument_problems(name, head_cls, cap)
        for config_key in cap.config_keys:
            if (config_key in config_keys) != declared:
                problems.append(
                    f"{name}: {cap.flag} is {declared} but its Config "
                    f"{'lacks' if declared else 'has'} the key {config_key!r} ({cap.meaning})"
                )
    # declared where the head's name is (a head built on another, as KgCoOp on CoOp, names its own paper)
    owner = next((cls for cls in inspect.getmro(head_cls) if "name" in vars(cls)), head_cls)
    for attr, meaning in (
        ("paper", "the paper it reproduces"),
        (
            "official_code",
            "the official repository (owner/name) its computation follows, proven by tests/reference/test_<name>.py",
        ),
    ):
        if attr not in vars(owner) or not isinstance(vars(owner)[attr], (str, type(None))):
            problems.append(
                f"{name}: declare {attr} in the class that declares its name ({meaning}; None: fewclip's own)"
            )
    problems += selection_problems(name, head_cls, owner)
    if getattr(head_cls, "uses_text", False) is True and getattr(head_cls, "checks_task", False) is not True:
        problems.append(f"{name}: a head that uses_text must declare checks_task and check every prompt in check(task)")
    needs = getattr(head_cls, "needs", None)
    if not isinstance(needs, frozenset) or not needs <= set(BACKBONE_CAPABILITIES):
        problems.append(
            f"{name}: needs must be a frozenset of backbone capabilities "
            f"({', '.join(BACKBONE_CAPABILITIES)}), got {needs!r}"
        )
    return problems


def argument_problems(name: str, head_cls: type, cap: Capability) -> list[str]:
    """The declared methods of ``cap`` whose parameters (after ``self``) are not the ones callers pass."""
    problems = []
    for method, expected in cap.arguments:
        function = getattr(head_cls, method, None)
        if not callable(function):
            continue  # reported as missing
        taken = tuple(inspect.signature(function).parameters)[1:]
        if taken != expected:
            problems.append(
                f"{name}: {method}() must take ({', '.join(expected)}) after self, as callers pass "
                f"them; it takes ({', '.join(taken)}) ({cap.meaning})"
            )
    return problems


def fitted_problems(head: Any) -> list[str]:
    """What a fitted (or loaded) head lacks, or has without declaring it, of the state its flags promise."""
    problems = []
    for cap in CAPABILITIES:
        declared = getattr(type(head), cap.flag, False)
        for attr in cap.fitted:
            if (attr in vars(head)) != declared:
                problems.append(
                    f"{head.name}: {cap.flag} is {declared} but the fitted head {'lacks' if declared else 'has'} {attr}"
                )
    if getattr(type(head), "selects_epoch", False) and "best_epoch_" in vars(head):
        best, epochs = head.best_epoch_, len(head.history_)
        if not (isinstance(best, int) and 1 <= best <= max(epochs, 1)):
            problems.append(f"{head.name}: best_epoch_ must be an epoch of history_ (1..{epochs}), got {best!r}")
    return problems
