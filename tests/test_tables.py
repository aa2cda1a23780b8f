"""Paper tables: transcription against the seed texts, rendering, registry, script."""

from __future__ import annotations

import collections
import json
import pathlib
import re
import subprocess
import sys

import pytest

from diffdrive.eval import paper_tables, tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "paper_tables" / "reference"
SEEDS = ROOT.parent / "shared" / "seeds"
NUMBER = re.compile(r"(?<![\w.])\d+\.\d{4}(?![\d])")

REFS = tables.load_reference_dir(REFERENCE)
SEEDED = [t for t in REFS.values() if t.source["file"].endswith(".txt")]


def _seed_text(name: str) -> str:
    path = SEEDS / name
    if not path.exists():
        pytest.skip(f"{path} not found: the paper texts live in ../shared/seeds")
    return path.read_text(encoding="utf-8")


def _caption_prefix(table: tables.ReferenceTable) -> str:
    word = "TABLE" if table.paper["id"] == "awm" else "Table"
    return f"{word} {table.source['table']}: "


def _table_block(text: str, table: tables.ReferenceTable) -> list[str]:
    """The tab-separated lines right above the table's caption in the seed text."""
    lines = text.splitlines()
    prefix = _caption_prefix(table)
    idx = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(idx) == 1, f"caption {prefix!r} found {len(idx)} times"
    i = idx[0] - 1
    while not lines[i].strip():
        i -= 1
    block = []
    while "\t" in lines[i]:
        block.append(lines[i].rstrip("\t "))
        i -= 1
    return block[::-1]


def _expected_line(table: tables.ReferenceTable, row, prev) -> str:
    """The row as the seed text prints it (tab-separated)."""
    if table.id in ("dss_table_4",):
        label = table.settings[0].display(row["model"])
        first = [f"{label} ($K = {row['K']}$)" if row["K"] is not None else label]
    else:
        first = [s.display(row[s.key]) for s in table.settings]
        if (
            table.id == "awm_table_6"
            and prev is not None
            and prev["conditioning"] == row["conditioning"]
        ):
            first[0] = ""  # the paper merges repeated conditioning cells
    cells = [
        row[c.key] if c.kind == "text" else tables.format_number(row[c.key], c.decimals)
        for c in table.columns
    ]
    return "\t".join(first + cells)


@pytest.mark.parametrize("table", SEEDED, ids=lambda t: t.id)
def test_caption_is_verbatim(table):
    text = _seed_text(table.source["file"])
    assert _caption_prefix(table) + table.source["caption"] + "\n" in text


@pytest.mark.parametrize("table", SEEDED, ids=lambda t: t.id)
def test_every_metric_value_matches_seed_text(table):
    block = _table_block(_seed_text(table.source["file"]), table)
    in_text = [float(x) for line in block for x in NUMBER.findall(line)]
    ours = [v for v in tables.iter_numbers(table) if v is not None]
    if table.text_layout == "garbled":  # cells merged column-wise: compare as multisets
        assert collections.Counter(in_text) == collections.Counter(ours)
    else:
        assert in_text == ours


@pytest.mark.parametrize(
    "table", [t for t in SEEDED if t.text_layout != "garbled"], ids=lambda t: t.id
)
def test_every_row_matches_seed_text_line(table):
    block = set(_table_block(_seed_text(table.source["file"]), table))
    prev = None
    for row in table.rows:
        line = _expected_line(table, row, prev)
        assert line in block, f"{table.id}: {line!r} not in the seed text"
        prev = row


def test_spot_cells_straight_from_seed_text():
    awm = _seed_text("003_4f059a150ae53536.txt")
    dss = _seed_text("004_27fb66565b04143b.txt")
    row = re.search(r"^APG \(ours\)\t16\t(\S+)\t(\S+)\t(\S+)$", awm, re.M)
    t1 = REFS["awm_table_1"].find_row(setup="apg_ours", num_rollouts=16)
    assert [float(g) for g in row.groups()] == [t1["min_ade"], t1["min_overlap"], t1["min_offroad"]]
    row = re.search(r"^Plan \+ waypoint\t12\t(\S+)\t", awm, re.M)
    assert (
        float(row.group(1))
        == REFS["awm_table_5"].find_row(setting="plan_waypoint", num_rollouts=12)["min_ade"]
        == 0.598
    )
    row = re.search(r"^4\t20\t✓\t(\S+)\t(\S+)\t(\S+)$", dss, re.M)
    t5 = REFS["dss_table_5"].find_row(K=4, T=20, grad=True)
    assert [float(g) for g in row.groups()] == [t5["ade"], t5["overlap"], t5["offroad"]]
    assert re.search(r"^EasyChaffeur-IL\t—\t0\.0293\t0\.0280$", dss, re.M)
    assert REFS["dss_table_4"].find_row(model="easychauffeur_il", K=None)["ade"] is None
    # Table VII's ADE cells: the text has exactly three, in reading order.
    assert re.search(r"^X\t1 8 1\t1\.7992 1\.7261\t", awm, re.M)
    t7 = REFS["awm_table_7"]
    assert [r["min_ade"] for r in t7.rows] == [1.7992, 1.7261, None, 1.7456]
    # overlap* / offroad* are per-step metrics wherever the paper stars them.
    for tid in ("awm_table_4", "awm_table_5", "awm_table_7"):
        cols = {c.label: c for c in REFS[tid].columns}
        assert cols["min overlap*"].unit == cols["min offroad*"].unit == "fraction of steps"


def test_shared_rows_agree_across_tables():
    """Rows the papers repeat in several tables hold the same numbers."""
    t2, t3 = REFS["dss_table_2"], REFS["dss_table_3"]
    assert t2.find_row(eta_accel=0, eta_steer=0)["ade"] == t3.find_row(K=1)["ade"] == 2.9792
    assert (
        t2.find_row(eta_accel=1000, eta_steer=0.01)["ade"]
        == REFS["dss_table_4"].find_row(model="dss", K=1)["ade"]
    )
    best = REFS["dss_table_6"].find_row(model="dss_best")
    t5 = REFS["dss_table_5"].find_row(**paper_tables.DSS_BEST_CONFIGURATION)
    assert [best[k] for k in ("ade", "overlap", "offroad")] == [
        t5[k] for k in ("ade", "overlap", "offroad")
    ]
    apg = REFS["apg_single_agent"].find_row(method="apg")
    base = REFS["awm_table_1"].find_row(setup="apg_baseline", num_rollouts=32)
    assert (apg["min_ade"], apg["overlap"], apg["offroad"]) == (
        base["min_ade"],
        base["min_overlap"],
        base["min_offroad"],
    )


def test_apg_numbers_carry_their_confidence_tags():
    assert REFS["apg_single_agent"].confidence == "secondary"
    assert REFS["apg_multi_agent"].confidence == "secondary / unverified"
    assert REFS["apg_single_agent"].find_row(method="bc")["confidence"] == "secondary / unverified"
    assert REFS["apg_multi_agent"].find_row(method="bc")["ade"] == 4.1123
    assert all(t.confidence == "primary" for t in SEEDED)


def test_reference_validation_rejects_bad_rows(tmp_path):
    bad = {
        "paper": {},
        "tables": [
            {
                "id": "x",
                "source": {},
                "settings": [{"key": "k"}],
                "columns": [{"key": "ade", "direction": "lower"}],
                "rows": [{"k": 1, "ade": 1.0}, {"k": 1.0, "ade": 2.0}],
            }
        ],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="repeats settings"):
        tables.load_reference(path)
    bad["tables"][0]["rows"] = [{"k": 1, "adee": 1.0}]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="unknown keys"):
        tables.load_reference(path)


# --------------------------------------------------------------------------- rendering


def _toy_table() -> tables.ReferenceTable:
    return tables.ReferenceTable(
        id="toy_table",
        title="Toy table",
        source={"file": "toy.txt", "table": "9", "caption": "**Toy.** 50% of $x_1$."},
        confidence="primary",
        settings=(tables.Setting("method", "Method", {"a_b": "A_B"}), tables.Setting("K", "K")),
        columns=(
            tables.Column("ade", "ADE", "m", "lower"),
            tables.Column("overlap", "overlap", "fraction of scenarios", "lower"),
        ),
        rows=(
            {"method": "a_b", "K": 1, "ade": 1.5, "overlap": 0.08},
            {"method": "a_b", "K": 8, "ade": None, "overlap": 0.0612, "note": "no ADE here"},
        ),
        paper={"title": "Toy paper", "arxiv": "0000.00000"},
        reference_file="toy.json",
    )


def _toy_results() -> tables.Results:
    meta = {
        "profile": "smoke",
        "dataset": "synthetic",
        "num_scenarios": 12,
        "commit": "abc1234",
        "generated_by": "tests",
    }
    return tables.Results(
        "results/toy_table.json",
        meta,
        (
            {"method": "a_b", "K": 1.0, "ade": 1.234567, "overlap": {"mean": 0.1, "std": 0.00004}},
            {"method": "new", "K": 2, "ade": -0.00001},
        ),
    )


def test_markdown_rendering_with_missing_cell():
    comp = tables.compare(_toy_table(), _toy_results(), expected="results/toy_table.json")
    md = tables.render_markdown(comp)
    assert (
        "| Method | K | ADE (m) ↓ paper | ADE (m) ↓ ours | overlap ↓ paper | overlap ↓ ours |" in md
    )
    assert (
        "| A\\_B | 1 | 1.5000 | 1.2346 | 0.0800 | 0.1000 ± 0.0000 |" not in md
    )  # no _ escaping in md
    assert "| A_B | 1 | 1.5000 | 1.2346 | 0.0800 | 0.1000 ± 0.0000 |" in md
    assert "| A_B<sup>a</sup> | 8 | — | — | 0.0612 | — |" in md
    assert "| new<sup>‡</sup> | 2 |  | 0.0000 |  | — |" in md  # ours only, -0.0000 printed 0.0000
    assert "- — in an *ours* column: not produced yet by this pipeline." in md
    assert "- (a) no ADE here" in md
    assert tables.NOTE_OURS_ONLY in md
    assert (
        "Ours: profile `smoke`, dataset `synthetic` (12 scenarios), commit `abc1234`, "
        "generated by `tests`; from `results/toy_table.json`."
    ) in md
    assert "> **Toy.** 50% of $x_1$." in md


def test_latex_rendering_with_missing_cell():
    comp = tables.compare(_toy_table(), _toy_results(), expected="results/toy_table.json")
    tex = tables.render_latex(comp)
    assert r"\begin{tabular}{llrrrr}" in tex
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\multicolumn{2}{c}{ADE (m) $\downarrow$}" in tex
    assert r"\cmidrule(lr){3-4} \cmidrule(lr){5-6}" in tex
    assert r"A\_B & 1 & 1.5000 & 1.2346 & 0.0800 & 0.1000 $\pm$ 0.0000 \\" in tex
    assert r"A\_B\textsuperscript{a} & 8 & --- & --- & 0.0612 & --- \\" in tex
    assert r"--- in an \emph{ours} column: not produced yet by this pipeline.\par" in tex
    assert r"generated by \texttt{tests}; from \texttt{results/toy\_table.json}." in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 3 and all(line.count("&") == 5 for line in body)  # 6 cells per row


def test_missing_results_file_header_and_all_ours_missing():
    comp = tables.compare(_toy_table(), None, expected="results/toy_table.json")
    assert (
        comp.header_line == "Ours: not produced yet by this pipeline (no `results/toy_table.json`)."
    )
    assert all(c == tables.MISSING for r in comp.rows for c in r.ours)
    assert tables.NOTE_OURS_MISSING in comp.footnotes


def test_results_validation():
    table = _toy_table()
    dup = tables.Results("r.json", {}, ({"method": "a_b", "K": 1}, {"method": "a_b", "K": 1.0}))
    with pytest.raises(ValueError, match="repeats settings"):
        tables.compare(table, dup, expected="r.json")
    with pytest.raises(ValueError, match="expected 'toy_table'"):
        tables.results_from_json({"table": "other", "rows": []}, "r.json", "toy_table")
    with pytest.raises(ValueError, match="'rows' list"):
        tables.results_from_json({"meta": {}}, "r.json")
    bad = tables.Results("r.json", {}, ({"method": "a_b", "K": 1, "ade": "1.2"},))
    with pytest.raises(ValueError, match="must be numbers"):
        tables.compare(table, bad, expected="r.json")


def test_number_formatting_and_tex_escape():
    assert tables.format_number(0.08) == "0.0800"
    assert tables.format_number(2) == "2.0000"
    assert tables.format_number(1.23456789, 2) == "1.23"
    assert tables.format_number(float("nan")) == "NaN"
    assert tables.format_number(None) == "—"
    assert tables.value_text(8.0) == "8" and tables.value_text(0.01) == "0.01"
    assert tables.value_text(True) == "true" and tables.value_text(None) == ""
    assert tables.tex_escape("**b** *i* $x_1$ 50% a_b `c_d` η↓", markup=True) == (
        r"\textbf{b} \emph{i} $x_1$ 50\% a\_b \texttt{c\_d} $\eta$$\downarrow$"
    )
    assert tables.tex_escape("overlap* and offroad* of *steps*", markup=True) == (
        r"overlap* and offroad* of \emph{steps}"
    )


# --------------------------------------------------------------------------- registry


def test_registry_covers_every_reference_table():
    assert set(paper_tables.REGISTRY) == set(REFS)
    expected = {f"awm_table_{i}" for i in range(1, 8)} | {f"dss_table_{i}" for i in range(1, 7)}
    assert expected <= set(paper_tables.REGISTRY)
    for gen in paper_tables.REGISTRY.values():
        assert REFS[gen.table_id].reference_file == gen.reference


@pytest.mark.parametrize("gen", list(paper_tables.REGISTRY.values()), ids=lambda g: g.table_id)
def test_generator_docstring_documents_its_schema(gen):
    """Method engineers read the docstring: it names the files and every key of the rows."""
    doc = gen.doc
    for name in gen.results:
        assert f"results/{name}" in doc
    table = REFS[gen.table_id]
    if table.kind != "text":
        for key in (*table.setting_keys, *table.column_keys):
            assert f'"{key}"' in doc, f"{gen.table_id}: key {key!r} not documented"


def _write_results(directory: pathlib.Path, table_id: str, rows, meta=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    meta = meta or {
        "profile": "smoke",
        "dataset": "synthetic",
        "num_scenarios": 7,
        "commit": "feedbee",
        "generated_by": "tests.test_tables",
    }
    (directory / f"{table_id}.json").write_text(
        json.dumps({"table": table_id, "meta": meta, "rows": rows})
    )


def test_generate_fills_ours_from_results(tmp_path):
    res, out = tmp_path / "results", tmp_path / "out"
    _write_results(
        res,
        "awm_table_1",
        [
            {
                "setup": "apg_ours",
                "num_rollouts": 4,
                "min_ade": 1.9,
                "min_overlap": 0.07,
                "min_offroad": 0.031,
            }
        ],
    )
    written = paper_tables.generate(["awm_table_1", "awm_table_2"], results_dir=res, out_dir=out)
    assert sorted(p.name for p in written) == [
        "awm_table_1.md",
        "awm_table_1.tex",
        "awm_table_2.md",
        "awm_table_2.tex",
    ]
    md = (out / "awm_table_1.md").read_text()
    assert "| APG (ours) | 4 | 1.7765 | 1.9000 | 0.0658 | 0.0700 | 0.0256 | 0.0310 |" in md
    assert "| APG (ours) | 8 | 1.7629 | — | 0.0653 | — | 0.0252 | — |" in md
    assert (
        "Ours: profile `smoke`, dataset `synthetic` (7 scenarios), commit `feedbee`, "
        "generated by `tests.test_tables`; from `results/awm_table_1.json`."
    ) in md
    assert (
        "Ours: not produced yet by this pipeline (no `results/awm_table_2.json`)."
        in (out / "awm_table_2.md").read_text()
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_dss_table_6_derives_ours_from_table_5(tmp_path):
    res = tmp_path / "results"
    _write_results(
        res,
        "dss_table_5",
        [
            {"K": 4, "T": 10, "grad": True, "ade": 9.0, "overlap": 0.9, "offroad": 0.9},
            {"K": 8, "T": 10, "grad": True, "ade": 1.5, "overlap": 0.05, "offroad": 0.07},
        ],
    )
    md = paper_tables.dss_table_6(paper_tables.Context(res)).markdown
    assert (
        "| Ours (best configuration)<sup>b</sup> | 1.2759 | 1.5000 | 0.0442 | 0.0500 | 0.0762 | 0.0700 |"
        in md
    )
    assert "from `results/dss_table_5.json (row K=8, T=10, grad=true)`" in md


def test_dss_table_1_adds_diffdrive_row(tmp_path):
    rendered = paper_tables.dss_table_1(paper_tables.Context(tmp_path))
    assert "| DSS (ours) | L | S | S + L | MPC + ∇ |" in rendered.markdown
    assert (
        "| diffdrive (this project)<sup>a</sup> | L | S | S + L | Reactive / MPC / MPC + ∇ |"
        in rendered.markdown
    )
    assert (
        "paper" not in rendered.markdown.split("| Method |")[1].splitlines()[0]
    )  # no ours columns
    assert r"MPC + $\nabla$ \\" in rendered.latex


def test_generate_is_deterministic_and_rejects_unknown_ids(tmp_path):
    a = paper_tables.generate(results_dir=tmp_path / "none", out_dir=tmp_path / "a")
    b = paper_tables.generate(results_dir=tmp_path / "none", out_dir=tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert len(a) == 2 * len(paper_tables.REGISTRY)
    with pytest.raises(KeyError, match="unknown table ids"):
        paper_tables.generate(["awm_table_99"], out_dir=tmp_path / "c")


def test_script_end_to_end(tmp_path):
    res, out = tmp_path / "results", tmp_path / "tables"
    _write_results(res, "dss_table_3", [{"K": 2, "ade": 1.25, "overlap": 0.04, "offroad": 0.06}])
    script = ROOT / "scripts" / "make_tables.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--only",
            "dss_table_3",
            "awm_table_7",
            "--results",
            str(res),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "awm_table_7.md",
        "awm_table_7.tex",
        "dss_table_3.md",
        "dss_table_3.tex",
    ]
    assert str(out / "dss_table_3.md") in proc.stdout
    assert (
        "| 2 | 1.1954 | 1.2500 | 0.0381 | 0.0400 | 0.0663 | 0.0600 |"
        in (out / "dss_table_3.md").read_text()
    )
    bad = subprocess.run(
        [sys.executable, str(script), "--only", "nope", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown table ids" in bad.stderr
