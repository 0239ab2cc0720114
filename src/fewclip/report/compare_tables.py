"""The tables of ``fewclip compare RUN_DIR...`` (``compare.py``; the page: ``compare_html.py``): one paper-style table across finished runs, with published numbers beside
fewclip's where a run follows a paper's protocol.

Each run contributes its dataset (``dataset.name`` for a CoOp-layout dataset, else the config's ``name``),
its protocol (few-shot on all classes, or base-to-new) and its backbone; runs of one protocol and backbone
form one table: rows are methods and shot budgets (and base / new / HM in base-to-new), columns are datasets
plus their average. Values are accuracy in percent, mean ± sample std over seeds, read from each run's
``results/summary.csv``.

- HM is the harmonic mean of the mean base and the mean new accuracy, as CoCoOp's Table 1 computes it (its
  average row is HM(average base, average new): 2 * 80.47 * 71.69 / (80.47 + 71.69) = 75.83), not the mean of
  per-seed HMs; so an HM has no std.
- ``Average (n)`` is the unweighted mean over the table's n datasets of the per-dataset means (HM: of the
  averaged base and new), given only for rows with a value in every dataset; it is ``Average (11)`` when the
  table holds exactly CoOp's 11 datasets.

- A run with ``dataset.eval_on`` targets (``results/targets.json``) adds one table per protocol it holds
  (domain generalisation, cross-dataset transfer): columns are the source dataset (its test split), each
  target, and ``Average (targets)``, the mean over the targets only; a head that cannot classify a target's
  classes shows "cannot transfer". Target rows never enter the few-shot table. The average sits beside a
  published one only when the source is ImageNet and the targets are the papers' (``PAPER_TARGETS``).

compare.csv is long: dataset, method, shots, protocol, backbone, split, mean, std, n_seeds (percent; std and
n_seeds empty for HM and averages), reference and reference_source (the published number and its citation),
note ("cannot transfer", with no number), selection (how the method's paper chose hyper-parameters on that
dataset and what fewclip's run chose on: ``heads.selection_protocol``), reference_selection (how the
published number's were chosen, from published.csv), gap (the run's mean less the published number, in points)
and gap_beyond_spread ("yes" when the gap is larger than the seeds' sample std, "no" when within it, empty where
there is no published number or no std: HM, averages).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from fewclip.runner.config import SplitsConfig, split_variant
from fewclip.runner.config_yaml import ConfigFileError, read_yaml_file
from fewclip.heads import HEADS, list_heads
from fewclip.heads.selection_protocol import fewclip_selection, paper_selection, paper_selection_text, selection_label
from fewclip.data.sources.dassl_layouts import COOP_DATASETS, IMAGENET_VARIANTS
from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout
from fewclip.runner.run_dir import flatten_keys
from fewclip.stats import mean_std
from fewclip.data.eval_targets import read_targets
from fewclip.report.aggregate import split_key
from fewclip.report.published import (
    Reference,
    ReferenceKey,
    load_published,
    paper_backbone,
    paper_method,
    paper_protocol,
)

CSV_COLUMNS = (
    "dataset",
    "method",
    "shots",
    "protocol",
    "backbone",
    "split",
    "mean",
    "std",
    "n_seeds",
    "reference",
    "reference_source",
    "note",
    "selection",
    "reference_selection",
    "gap",
    "gap_beyond_spread",
)
TARGETS_AVERAGE = "Average (targets)"
# The targets the papers average over from ImageNet (CoCoOp's protocol): its four variants; the other 10 datasets
PAPER_TARGETS: dict[str, frozenset[str]] = {
    "domain_generalisation": frozenset(IMAGENET_VARIANTS),
    "cross_dataset": frozenset(COOP_DATASETS) - {"ImageNet"},
}
CANNOT_TRANSFER = "cannot transfer"


class CompareError(ValueError):
    """A run directory that cannot be compared; the message names it and says what to do."""


@dataclass(frozen=True)
class Run:
    """What compare needs from one run directory."""

    root: Path
    dataset: str
    protocol: str  # few_shot | base2new | base_classes | new_classes
    backbone: str  # as the config names it
    paper_backbone: str | None  # the paper's name, when the run follows the papers' data protocol
    summary: list[dict[str, str]]
    targets: list[dict[str, Any]] = field(default_factory=list)  # results/targets.json's entries (eval_on)
    named_by: str = "name"  # the config key ``dataset`` comes from: dataset.name (CoOp layout) or name
    dataset_config: dict[str, Any] = field(default_factory=dict)  # the run's dataset block, as config.yaml has it
    selections: dict[str, str] = field(default_factory=dict)  # method -> what fewclip chose on (fewclip_selection)


@dataclass(frozen=True)
class Cell:
    """One number of a table: accuracy (fraction) of a method at a budget on a dataset's split."""

    dataset: str
    method: str
    shots: int
    protocol: str
    backbone: str
    split: str
    mean: float
    std: float | None  # None: HM and averages (not a mean over seeds)
    n_seeds: int | None
    reference: Reference | None = None


def reference_gap(cell: Cell) -> tuple[float, bool | None] | None:
    """(the run's mean less the published number, in points; whether it is larger than the seeds' sample std, None
    where the cell has no std), or None without a published number."""
    if cell.reference is None:
        return None
    gap = 100 * cell.mean - cell.reference.value
    return gap, None if cell.std is None else abs(gap) > 100 * cell.std


def gap_columns(cell: Cell) -> tuple[str, str]:
    """compare.csv's gap and gap_beyond_spread of a cell."""
    found = reference_gap(cell)
    if found is None:
        return "", ""
    gap, beyond = found
    return f"{gap:+.2f}", "" if beyond is None else ("yes" if beyond else "no")


def backbone_name(model: Mapping[str, Any]) -> str:
    library, model_id = model.get("library", "hf"), str(model.get("id"))
    pretrained = model.get("pretrained")
    return f"{model_id} ({pretrained})" if library == "open_clip" and pretrained else model_id


def read_run(path: Path | str) -> Run:
    """A finished run's config and summary; a folder that is not one is a CompareError naming it."""
    layout = RunLayout(Path(path))
    if not layout.root.is_dir():
        raise CompareError(f"{layout.root}: no such directory; give the output.dir of a fewclip run")
    missing = [p.relative_to(layout.root).as_posix() for p in (layout.config, layout.summary) if not p.is_file()]
    if missing:
        raise CompareError(
            f"{layout.root} is not a finished fewclip run: {' and '.join(missing)} not found; give the "
            "output.dir of a run whose `fewclip evaluate` has finished"
        )
    try:
        config = read_yaml_file(layout.config)
    except ConfigFileError as err:
        raise CompareError(f"{layout.root}: cannot read its config.yaml ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("dataset"), dict):
        raise CompareError(f"{layout.config} has no dataset block, so {layout.root} is not a fewclip run directory")
    summary = read_csv(layout.summary)
    lacking = {"method", "shots", "seed", "split", "accuracy"} - set(summary[0] if summary else ())
    if not summary or lacking:
        why = f" (no column {sorted(lacking)})" if summary else ""
        raise CompareError(f"{layout.summary} has no result rows{why}; re-run `fewclip evaluate {layout.root}`")
    dataset = config["dataset"]
    named_by = "dataset.name" if dataset.get("source") == "coop" else "name"
    name = dataset.get("name") if named_by == "dataset.name" else config.get("name", layout.root.name)
    subsample = config.get("splits", {}).get("subsample", "all")
    protocol = {"all": "few_shot", "base2new": "base2new"}.get(subsample, f"{subsample}_classes")
    model = config.get("model", {})
    return Run(
        layout.root,
        str(name),
        protocol,
        backbone_name(model),
        paper_backbone(model) if paper_protocol(config) else None,
        summary,
        read_targets(layout),
        named_by,
        dataset,
        run_selections(config, [row["method"] for row in summary]),
    )


def run_selections(config: Mapping[str, Any], methods: Sequence[str]) -> dict[str, str]:
    """What fewclip chose on for each registered method of a run (``fewclip_selection``), from its config.yaml: the
    head's block (defaults under what the file says, then a variant's keys) and ``splits.val_per_class``."""
    val_per_class = int(config.get("splits", {}).get("val_per_class", SplitsConfig().val_per_class))
    chosen = {}
    for method in dict.fromkeys(methods):
        head = split_variant(method)[0]
        if head not in list_heads():
            continue
        head_cls = HEADS.get(head)
        block = {
            **head_cls.Config().model_dump(),
            **config.get(head_cls.config_key or "", {}),
            **config.get("variants", {}).get(method, {}),
        }
        chosen[method] = fewclip_selection(head_cls, block, val_per_class)
    return chosen


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def run_cells(run: Run) -> list[Cell]:
    """Mean ± std over seeds per (method, shots, split); HM from the mean base and mean new (CoCoOp's way).

    summary.csv's own per-seed ``hm`` rows are not used."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    target_splits = {t["target"] for t in run.targets}  # in their own tables (target_tables)
    for row in run.summary:
        if row["split"] != "hm" and row["split"] not in target_splits:
            groups.setdefault((row["method"], int(row["shots"]), row["split"]), []).append(float(row["accuracy"]))
    cells = [
        Cell(run.dataset, m, k, run.protocol, run.backbone, s, *mean_std(v), len(v)) for (m, k, s), v in groups.items()
    ]
    by_key = {(c.method, c.shots, c.split): c for c in cells}
    for (method, shots, split), base in list(by_key.items()):
        new = by_key.get((method, shots, "new"))
        if split == "base" and new is not None:
            cells.append(
                Cell(
                    run.dataset,
                    method,
                    shots,
                    run.protocol,
                    run.backbone,
                    "hm",
                    harmonic_mean(base.mean, new.mean),
                    None,
                    None,
                )
            )
    return cells


def average_label(datasets: Sequence[str]) -> str:
    all_coop = len(datasets) == len(COOP_DATASETS) and set(datasets) == set(COOP_DATASETS)
    return f"Average ({len(datasets)})" if not all_coop else "Average (11)"


def average_cells(cells: Sequence[Cell], datasets: Sequence[str], label: str) -> list[Cell]:
    """Per (method, shots, split) with a cell in every dataset: the mean of the per-dataset means; HM of the
    averaged base and new."""
    values: dict[tuple[str, int, str], dict[str, float]] = {}
    for c in cells:
        if c.split != "hm":
            values.setdefault((c.method, c.shots, c.split), {})[c.dataset] = c.mean
    first = cells[0]
    averages = {key: sum(per.values()) / len(per) for key, per in values.items() if set(per) == set(datasets)}
    out = [Cell(label, m, k, first.protocol, first.backbone, s, v, None, None) for (m, k, s), v in averages.items()]
    for (method, shots, split), base in averages.items():
        new = averages.get((method, shots, "new"))
        if split == "base" and new is not None:
            hm = harmonic_mean(base, new)
            out.append(Cell(label, method, shots, first.protocol, first.backbone, "hm", hm, None, None))
    return out


@dataclass(frozen=True)
class Table:
    """The runs of one protocol and backbone: their cells, datasets in column order and the average's label."""

    protocol: str
    backbone: str
    runs: list[Run]
    datasets: list[str]
    average: str
    cells: list[Cell]
    notes: dict[tuple[str, str], str] = field(default_factory=dict)  # (dataset, method) -> "cannot transfer"

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(c.method for c in self.cells))

    def rows(self) -> list[tuple[str, int, str]]:
        order = {m: i for i, m in enumerate(self.methods)}
        keys = {(c.method, c.shots, c.split) for c in self.cells}
        return sorted(keys, key=lambda k: (order[k[0]], k[1], split_key(k[2])))

    def selection(self, method: str, dataset: str | None = None) -> str:
        """A method's selection label on ``dataset`` (its paper's protocol there, what its run chose on) or, with
        None, over the table (every paper exception named, unless one protocol holds for all its runs)."""
        if split_variant(method)[0] not in list_heads():
            return ""
        head_cls = HEADS.get(split_variant(method)[0])
        runs = [run for run in self.runs if run.dataset == dataset] or self.runs  # averages, targets: every run
        papers = {paper_selection(head_cls, run.dataset) for run in runs}
        paper = papers.pop() if len(papers) == 1 else paper_selection_text(head_cls)
        fewclip = " / ".join(dict.fromkeys(run.selections[method] for run in runs if method in run.selections))
        return selection_label(paper, fewclip or "not recorded")

    def cell(self, dataset: str, method: str, shots: int, split: str) -> Cell | None:
        key = (dataset, method, shots, split)
        return next((c for c in self.cells if (c.dataset, c.method, c.shots, c.split) == key), None)


def dataset_order(names: Sequence[str]) -> list[str]:
    """CoOp's 11 in the papers' column order, then any other dataset in the order given."""
    coop = [n for n in COOP_DATASETS if n in names]
    return coop + [n for n in dict.fromkeys(names) if n not in COOP_DATASETS]


def with_reference(cell: Cell, backbone: str | None, published: Mapping[ReferenceKey, Reference]) -> Cell:
    method = paper_method(cell.method)
    if backbone is None or method is None:
        return cell
    reference = published.get((backbone, cell.protocol, cell.dataset, method, cell.shots, cell.split))
    return cell if reference is None else replace(cell, reference=reference)


def clash_message(first: Run, second: Run) -> str:
    """Why two runs cannot share a table's column: one dataset run twice, or two datasets under one ``name``."""
    ignored = ("eval_on", "label")  # targets and table labels change no image the heads were trained or tested on
    before, after = (
        {key: value for key, value in flatten_keys(run.dataset_config).items() if key.split(".")[0] not in ignored}
        for run in (first, second)
    )
    differ = [
        f"dataset.{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    if second.named_by == "name" and differ:
        shown = "; ".join(differ[:3]) + ("; ..." if len(differ) > 3 else "")
        return (
            f"{first.root} and {second.root} both have `name: {second.dataset}` in their config.yaml, which "
            f"compare uses as the dataset's column, but read different datasets ({shown}); give each run its "
            f"own name: `fewclip report {second.root} name=<another name>` rewrites its config.yaml (name "
            "changes no result), then compare again"
        )
    return (
        f"{first.root} and {second.root} are both {second.dataset} runs of protocol {second.protocol} with "
        f"{second.backbone}; a table has one run per dataset: compare them in separate commands"
    )


def build_table(runs: list[Run], published: Mapping[ReferenceKey, Reference]) -> Table:
    """One table from runs that share protocol and backbone (each dataset at most once)."""
    seen: dict[str, Run] = {}
    for run in runs:
        if run.dataset in seen:
            raise CompareError(clash_message(seen[run.dataset], run))
        seen[run.dataset] = run
    datasets = dataset_order(list(seen))
    cells = [with_reference(c, seen[c.dataset].paper_backbone, published) for run in runs for c in run_cells(run)]
    label = average_label(datasets)
    averages = average_cells(cells, datasets, label) if len(datasets) > 1 else []
    backbones = {run.paper_backbone for run in runs}
    if label == "Average (11)" and len(backbones) == 1 and None not in backbones:  # every run follows the papers
        averages = [with_reference(c, next(iter(backbones)), published) for c in averages]
    return Table(runs[0].protocol, runs[0].backbone, runs, datasets, label, cells + averages)


def build_tables(run_dirs: Sequence[Path | str], published_text: str | None = None) -> list[Table]:
    runs = [read_run(path) for path in run_dirs]
    published = load_published(published_text)
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.protocol, run.backbone), []).append(run)
    tables = [build_table(group, published) for group in groups.values()]
    return tables + [table for run in runs for table in target_tables(run, published)]


def target_tables(run: Run, published: Mapping[ReferenceKey, Reference]) -> list[Table]:
    """Per protocol among the run's eval_on targets: source + targets + their average (see the module doc)."""
    source_split = "test" if any(r["split"] == "test" for r in run.summary) else "base"
    tables = []
    for protocol in dict.fromkeys(t["protocol"] for t in run.targets):
        chosen = [t for t in run.targets if t["protocol"] == protocol]
        groups: dict[tuple[str, str, int], list[float]] = {}
        for row in run.summary:
            dataset = run.dataset if row["split"] == source_split else row["split"]
            if dataset == run.dataset or any(t["target"] == dataset for t in chosen):
                groups.setdefault((dataset, row["method"], int(row["shots"])), []).append(float(row["accuracy"]))
        cells = [
            with_reference(
                Cell(d, m, k, protocol, run.backbone, "test", *mean_std(v), len(v)), run.paper_backbone, published
            )
            for (d, m, k), v in groups.items()
        ]
        targets = [t["target"] for t in chosen]
        means: dict[tuple[str, int], dict[str, float]] = {}
        for c in cells:
            if c.dataset in targets:
                means.setdefault((c.method, c.shots), {})[c.dataset] = c.mean
        papers_average = run.dataset == "ImageNet" and frozenset(targets) == PAPER_TARGETS.get(protocol, frozenset())
        averages = [
            Cell(TARGETS_AVERAGE, m, k, protocol, run.backbone, "test", sum(per.values()) / len(per), None, None)
            for (m, k), per in means.items()
            if set(per) == set(targets)
        ]
        cells += [with_reference(c, run.paper_backbone, published) if papers_average else c for c in averages]
        notes = {(t["target"], method): CANNOT_TRANSFER for t in chosen for method in t["cannot_transfer"]}
        tables.append(Table(protocol, run.backbone, [run], [run.dataset, *targets], TARGETS_AVERAGE, cells, notes))
    return tables


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.4f}"


def csv_rows(tables: Sequence[Table]) -> list[list[Any]]:
    rows = []
    for table in tables:
        for method, shots, split in table.rows():
            for dataset in [*table.datasets, table.average]:
                c = table.cell(dataset, method, shots, split)
                if c is not None:
                    rows.append(
                        [
                            c.dataset,
                            c.method,
                            c.shots,
                            c.protocol,
                            c.backbone,
                            c.split,
                            percent(c.mean),
                            percent(c.std),
                            "" if c.n_seeds is None else c.n_seeds,
                            "" if c.reference is None else f"{c.reference.value:.2f}",
                            "" if c.reference is None else c.reference.citation,
                            "",
                            table.selection(method, dataset),
                            "" if c.reference is None else c.reference.selection,
                            *gap_columns(c),
                        ]
                    )
                elif (dataset, method) in table.notes:
                    rows.append(
                        [
                            dataset,
                            method,
                            shots,
                            table.protocol,
                            table.backbone,
                            split,
                            "",
                            "",
                            "",
                            "",
                            "",
                            table.notes[(dataset, method)],
                            table.selection(method, dataset),
                            "",
                            "",
                            "",
                        ]
                    )
    return rows
