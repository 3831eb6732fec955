"""Docs live in the repository: every ``docs/<file>.md §N`` that a source comment cites exists
and has a section ``## N.``, and nothing cites a design document that is not in the repo."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    p
    for d in ("src", "tests", "benchmarks", "scripts")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".py", ".h", ".cc", ".sh", ".toml", ".md") and p.is_file()
]


def test_cited_doc_sections_exist() -> None:
    cites = [
        (p, m.group(1), m.group(2))
        for p in SOURCES
        for m in re.finditer(r"(docs/[\w.-]+\.md)\s*§(\d+)", p.read_text(errors="replace"))
    ]
    assert len(cites) >= 8  # the conventions and exactness rules are cited across the code
    for path, doc, sec in cites:
        text = (ROOT / doc).read_text()
        assert re.search(rf"^## {sec}\. ", text, re.M), (
            f"{path.relative_to(ROOT)} cites {doc} §{sec}, which is missing"
        )


def test_no_citation_of_a_document_outside_the_repo() -> None:
    for p in SOURCES:
        assert not re.search(r"ARCHITECTURE (section|sec\.|\d)", p.read_text(errors="replace")), p


def test_readme_links_resolve() -> None:
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).is_file(), link


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Layout\n+```\n(.*?)```", text, re.M | re.S)
    assert m, "README.md has a '## Layout' section with a code block"
    return m.group(1)


def test_readme_layout_names_every_part_of_the_tree() -> None:
    """Every sub-package and public module of ``bitflow``, every folder of ``src/native`` and
    every script is named in the README's layout section (a new part must be placed there)."""
    block = _layout_block()
    words = set(re.findall(r"[\w.]+/?", block))
    pkg = ROOT / "src" / "bitflow"
    parts = [p.name + "/" for p in pkg.iterdir() if (p / "__init__.py").is_file()]
    parts += [
        p.name for p in pkg.glob("*.py") if not p.name.startswith("_") and p.name != "__init__.py"
    ]
    parts += [p.name + "/" for p in (ROOT / "src" / "native").iterdir() if p.is_dir()]
    parts += [p.name for p in (ROOT / "scripts").iterdir() if p.suffix in (".sh", ".py")]
    missing = sorted(x for x in parts if x not in words)
    assert not missing, f"README.md's layout section does not name {missing}"


def test_readme_layout_names_only_what_exists() -> None:
    """Every folder and file the layout section names exists (somewhere below its top-level
    folder): the section cannot describe a tree that is gone."""
    block = _layout_block()
    top = None
    for line in block.splitlines():
        head = re.match(r"^(\S+/)", line)
        if head:
            top = ROOT / head.group(1)
            assert top.is_dir(), head.group(1)
        assert top is not None
        body = line[len(head.group(1)) :] if head else line
        for tok in re.findall(r"(?<![\w.+])([a-z_][\w/]*(?:/|\.py|\.sh|\.cc|\.h))(?![\w])", body):
            first, _, rest = tok.rstrip("/").partition("/")
            if (ROOT / tok).exists():
                continue
            hits = [h for h in top.rglob(first) if not rest or (h / rest).exists()]
            assert hits, (
                f"README.md's layout names {tok} under {top.relative_to(ROOT)}, which has none"
            )


def _repo_paths() -> set[str]:
    skip = {".git", ".venv", "build", "__pycache__", ".mypy_cache", ".ruff_cache"}
    out: set[str] = set()
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT)
        if skip & set(rel.parts) or any(s.endswith(".egg-info") for s in rel.parts):
            continue
        out.add("/" + rel.as_posix() + ("/" if p.is_dir() else ""))
    return out


def test_architecture_doc_names_only_what_exists() -> None:
    """docs/architecture.md matches the tree: every path it names (``src/native/``,
    ``bitflow/ir/ops/``, ``kernels/x86/{avx2,avx512}``, ``recipes/*.toml``) exists as the
    tail of a path in the repository, and every dotted ``bitflow.x.y`` name imports."""
    import fnmatch
    import importlib

    text = (ROOT / "docs" / "architecture.md").read_text()
    tokens = set(re.findall(r"`([^`\s]+)`", text))
    paths = _repo_paths()
    checked = 0
    for tok in sorted(tokens):
        if "<" in tok or "//" in tok or "(" in tok or tok.startswith("."):
            continue  # placeholders (kernels/<isa>/), expressions, hidden CI files
        if "/" in tok or re.search(r"\.(py|h|cc|toml|md)$", tok):
            m = re.search(r"\{([\w,]+)\}", tok)
            alts = (
                [tok[: m.start()] + a + tok[m.end() :] for a in m.group(1).split(",")]
                if m
                else [tok]
            )
            for alt in alts:
                pat = "*/" + alt.lstrip("/")
                names = paths if alt.endswith("/") else {p.rstrip("/") for p in paths}
                assert any(fnmatch.fnmatch(p, pat) for p in names), (
                    f"docs/architecture.md names {alt!r}, which is not in the tree"
                )
                checked += 1
        elif re.fullmatch(r"bitflow(\.\w+)+", tok):
            parts = tok.split(".")
            for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ModuleNotFoundError:
                    continue
                for attr in parts[i:]:
                    assert hasattr(obj, attr), f"docs/architecture.md names {tok!r}: no {attr!r}"
                    obj = getattr(obj, attr)
                break
            else:
                raise AssertionError(f"docs/architecture.md names {tok!r}, which does not import")
            checked += 1
    assert checked >= 30  # the document really names the tree (it names about 40 parts)


def test_readme_command_line_shows_every_subcommand() -> None:
    """Every ``bitflow`` subcommand (the CLI's own parser) has a line in the README's command
    line block, and the export section names its one differing convention (NaN)."""
    import argparse

    from bitflow.cli import build_parser

    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Command line\n+```bash\n(.*?)```", text, re.M | re.S)
    assert m, "README.md has a '## Command line' section with a bash block"
    shown = set(re.findall(r"(?:^|\s)bitflow (\w[\w-]*)", m.group(1), re.M))
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) - shown == set()
    export = re.search(r"^### Export.*?(?=^#)", text, re.M | re.S)
    assert export and "NaN" in export.group(0) and "bitflow[onnx]" in export.group(0)


def test_survey_doc_catalogue_is_the_method_registry() -> None:
    """docs/survey.md §1 lists exactly the registered methods, each with its registry fields
    (title, source, bits, deploy form, the survey's number): a method added or changed without
    its doc row fails here."""
    from bitflow import methods

    text = (ROOT / "docs" / "survey.md").read_text()
    block = text.split("<!-- catalogue: begin -->")[1].split("<!-- catalogue: end -->")[0]
    rows = [ln for ln in block.strip().splitlines()[2:]]
    want = [
        f"| `{d['method']}` | {d['title']} | {d['source']} | {d['w_bits']}/{d['a_bits']} | "
        f"{d['deploy']} | {d['survey']} |"
        for d in methods.describe()
    ]
    assert rows == want, "\n".join(want)


#: the committed records of the full survey table (bfloat16 recipe, VGG-small chain)
SURVEY_RECORDS = (
    ROOT / "benchmarks/results/survey/bitflow_vgg_small/erecipe-nall-tall-wdefault-pbf16"
)
#: docs/survey.md's record tables: block marker -> the records directory it shows (the
#: Bi-Real ResNet-20 on the shorter recipe: 10 epochs, 10,000 training images, width 16)
SURVEY_TABLES = {
    "survey-table": SURVEY_RECORDS,
    "survey-table-resnet20": (
        ROOT / "benchmarks/results/survey/bireal_resnet20/e10-n10000-tall-w16-pbf16"
    ),
}


def survey_records_table(records: Path = SURVEY_RECORDS) -> str:
    """The Markdown table of docs/survey.md §3 recomputed from the per-run records: per method
    (twin first, then the registry's order) the seeds recorded, the mean and every seed's test
    accuracy, and from the first seed's deploy record the engine time, the speed-up over the twin
    timed back to back and the verify counts. ``python -c 'from tests.python.test_docs import
    survey_records_table as t; print(t())'`` prints it for the docs."""
    import json
    import statistics

    from bitflow import methods

    lines = [
        "| method | W/A | seeds | test acc. % (mean; per seed) | engine ms | speed-up vs twin | "
        "verify: sign / pred. mismatches |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ["fp", *methods.list_methods()]:
        recs = [json.loads(p.read_text()) for p in sorted((records / name).glob("seed*.json"))]
        if not recs:
            continue
        accs = [100 * r["test_accuracy"] for r in recs]
        bits = "32/32" if name == "fp" else "{}/{}".format(*methods.get_method(name).bits)
        dep = next((r["deploy"] for r in recs if "engine_ms" in r.get("deploy", {})), None)
        ms = f"{dep['engine_ms']:.3f}" if dep else "-"
        sp = f"{dep['torch_fp32_ms'] / dep['engine_ms']:.1f}x" if dep else "-"
        ver = f"{dep['sign_mismatches']} / {dep['prediction_mismatches']}" if dep else "-"
        lines.append(
            f"| {'full precision (twin)' if name == 'fp' else name} | {bits} | {len(recs)} | "
            f"{statistics.mean(accs):.2f}; {', '.join(f'{a:.2f}' for a in accs)} | {ms} | {sp} | "
            f"{ver} |"
        )
    return "\n".join(lines)


def test_survey_doc_table_is_the_committed_records() -> None:
    """The accuracy tables of docs/survey.md §3 are the records in benchmarks/results/survey,
    number for number: a record added, changed or lost without the docs fails here, and so does
    a records directory without its table."""
    text = (ROOT / "docs" / "survey.md").read_text()
    for marker, records in SURVEY_TABLES.items():
        if f"<!-- {marker}: begin -->" not in text:
            assert not any(records.glob("*/seed*.json")), f"{records}: records, no {marker} block"
            continue
        block = text.split(f"<!-- {marker}: begin -->")[1].split(f"<!-- {marker}: end -->")[0]
        assert block.strip() == survey_records_table(records), marker
