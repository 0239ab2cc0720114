"""The shipped ``published.csv``: its columns, one number per key, every row with its source and the protocol its
hyper-parameters were chosen with, and the names the heads declare (``published_as``)."""

from __future__ import annotations

import csv
import io
from importlib import resources

import pytest

from fewclip.data.sources.dassl_layouts import COOP_DATASETS, IMAGENET_VARIANTS
from fewclip.heads import HEADS, list_heads
from fewclip.heads.base import own_declaration
from fewclip.heads.selection_protocol import PAPER_SELECTIONS, paper_selection
from fewclip.report.published import PAPER_BACKBONES, PUBLISHED_FILE, load_published

COLUMNS = ["paper", "table", "backbone", "protocol", "dataset", "method", "shots", "split", "value", "selection"]
COLUMNS += ["verified_from"]
SPLITS = {"few_shot": {"test"}, "base2new": {"base", "new", "hm"}, "domain_generalisation": {"test"}}
SPLITS["cross_dataset"] = {"test"}


def shipped_rows() -> list[dict[str, str]]:
    text = resources.files("fewclip.report").joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == COLUMNS
    return list(reader)


def test_every_row_has_a_source_a_protocol_and_a_number() -> None:
    rows = shipped_rows()
    assert rows
    for line, row in enumerate(rows, start=2):
        where = f"{PUBLISHED_FILE} line {line}: {row}"
        assert all(row[c] and row[c].strip() == row[c] for c in COLUMNS), where  # nothing empty or padded
        assert row["selection"] in PAPER_SELECTIONS, where
        assert row["backbone"] in PAPER_BACKBONES, where
        assert row["split"] in SPLITS[row["protocol"]], where
        assert 0 < float(row["value"]) <= 100 and len(row["value"].split(".")[-1]) <= 2, where
        assert int(row["shots"]) in (0, 1, 2, 4, 8, 16), where
        assert (int(row["shots"]) == 0) == (row["method"] == "CLIP"), where  # only zero-shot CLIP has no shots
        assert row["selection"] != "none" or row["method"] == "CLIP", where
        known = (
            row["dataset"] in COOP_DATASETS
            or row["dataset"] in IMAGENET_VARIANTS
            or row["dataset"].startswith("Average")
        )
        assert known, where
        assert row["verified_from"].startswith("github.com/") or row["verified_from"].startswith("arxiv.org/"), where


def test_one_number_per_key_and_the_loader_reads_them_all() -> None:
    rows = shipped_rows()
    keys = [(r["backbone"], r["protocol"], r["dataset"], r["method"], int(r["shots"]), r["split"]) for r in rows]
    assert len(set(keys)) == len(keys), [k for k in keys if keys.count(k) > 1][:3]
    published = load_published()
    assert set(published) == set(keys)
    assert all(published[k].selection == r["selection"] for k, r in zip(keys, rows))


def test_every_method_is_a_heads_published_name() -> None:
    names = {own_declaration(HEADS.get(n), "published_as") for n in list_heads()} - {None}
    assert {r["method"] for r in shipped_rows()} <= names


@pytest.mark.parametrize("bad", ["", "test", "validation"])
def test_a_row_without_a_known_selection_is_refused_naming_its_line(bad: str) -> None:
    text = (
        ",".join(COLUMNS) + "\n"
        "P,T,ViT-B/16,few_shot,DTD,CoOp,16,test,65.00,validation-free,here\n"
        f"P,T,ViT-B/16,few_shot,DTD,CoOp,8,test,60.00,{bad},here\n"
    )
    with pytest.raises(ValueError, match=f"published.csv line 3: selection '{bad}' is not one of 'none'"):
        load_published(text)


def test_the_heads_without_published_numbers_are_the_ones_docs_protocols_names() -> None:
    """No README that could be read prints a table for these, neither the 11-dataset mean nor a dataset of it
    (docs/protocols.md, "What published.csv holds")."""
    names = {own_declaration(HEADS.get(n), "published_as") for n in list_heads()} - {None}
    assert names - {r["method"] for r in shipped_rows()} == {"Linear probe CLIP", "ZS-LP", "CLAP", "TaskRes"}


def test_each_rows_selection_is_its_heads_released_code_on_that_dataset() -> None:
    """A row's protocol is the head's ``paper_selection`` on its dataset; a mean over the 11 that includes a
    dataset chosen on test (Tip-Adapter's, GDA's and ProKeR's code on ImageNet) is marked as chosen on test."""
    by_name = {own_declaration(HEADS.get(n), "published_as"): HEADS.get(n) for n in list_heads()}
    checked = 0
    for row in shipped_rows():
        head = by_name.get(row["method"])
        assert head is not None, row
        if row["dataset"].startswith("Average"):
            on_test = "test set (released code)" in (own_declaration(head, "paper_selection_except") or {}).values()
            expected = "test set (released code)" if on_test else paper_selection(head)
        else:
            expected = paper_selection(head, row["dataset"])
        assert row["selection"] == expected, row
        checked += 1
    assert checked > 100


def test_the_heads_with_per_dataset_numbers_are_the_ones_docs_protocols_names() -> None:
    """Per protocol, the methods with a number for one dataset (not a mean): a source dropped from the file fails
    here, and one added must be named in docs/protocols.md too."""
    per_dataset: dict[str, set[str]] = {}
    for row in shipped_rows():
        if not row["dataset"].startswith("Average"):
            per_dataset.setdefault(row["protocol"], set()).add(row["method"])
    assert per_dataset == {
        "base2new": {"CLIP", "CoOp", "CoCoOp", "MaPLe", "PromptSRC"},  # ImageNet only
        "domain_generalisation": {"CLIP", "CoOp", "CoCoOp", "MaPLe"},
        "cross_dataset": {"CoOp", "CoCoOp", "MaPLe"},
    }


def test_the_per_dataset_targets_cover_the_imagenet_variants_and_coops_ten_other_datasets() -> None:
    """Domain generalisation rows are ImageNet and its four variants; cross-dataset rows ImageNet (the source)
    and the ten other CoOp datasets, each method on all of them."""
    by_method: dict[tuple[str, str], set[str]] = {}
    for row in shipped_rows():
        if row["protocol"] in ("domain_generalisation", "cross_dataset") and not row["dataset"].startswith("Average"):
            by_method.setdefault((row["protocol"], row["method"]), set()).add(row["dataset"])
    for (protocol, method), datasets in by_method.items():
        expected = {"ImageNet", *IMAGENET_VARIANTS} if protocol == "domain_generalisation" else set(COOP_DATASETS)
        assert datasets == expected, (protocol, method)


# (backbone, protocol, dataset, method, shots, split) -> the value as read in the file named by verified_from
READ_IN_SOURCES = {
    ("ViT-B/16", "domain_generalisation", "ImageNetSketch", "CLIP", 0, "test"): 46.15,  # HPT README
    ("ViT-B/16", "domain_generalisation", "ImageNetA", "CoOp", 16, "test"): 49.71,  # HPT and PromptAlign READMEs
    ("ViT-B/16", "domain_generalisation", "ImageNetR", "MaPLe", 16, "test"): 76.98,  # HPT and PromptAlign READMEs
    ("ViT-B/16", "cross_dataset", "FGVCAircraft", "CoOp", 16, "test"): 18.47,  # HPT README (row labelled CLIP)
    ("ViT-B/16", "cross_dataset", "EuroSAT", "CoCoOp", 16, "test"): 45.37,  # HPT README
    ("ViT-B/16", "cross_dataset", "Average (targets)", "MaPLe", 16, "test"): 66.30,  # HPT and ProText READMEs
    ("ViT-B/16", "base2new", "ImageNet", "CoCoOp", 16, "hm"): 73.10,  # Awesome-Prompt-Learning README
    ("ViT-B/16", "few_shot", "Average (11)", "CLIP-LoRA", 16, "test"): 82.89,  # CLIP-SVD README
}


def test_a_handful_of_rows_hold_the_numbers_read_in_their_sources() -> None:
    published = load_published()
    assert {key: published[key].value for key in READ_IN_SOURCES} == READ_IN_SOURCES
