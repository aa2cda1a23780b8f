"""Paper tables beside ours: reference tables, results files, Markdown and LaTeX rendering.

Two kinds of JSON meet here.

A **reference table** is one entry of ``paper_tables/reference/<paper>.json`` (``tables``
list): the paper's numbers, transcribed cell by cell, with

* ``id`` (``awm_table_1``), ``title``, ``source`` (``file``, ``table``, ``caption``),
  ``confidence`` (``primary``, ``secondary``, ...), optional ``protocol`` and ``kind``
  (``"text"`` for descriptive tables with no numbers to reproduce);
* ``settings``: the keys that identify a row, each ``{"key", "label", "values"?}`` where
  ``values`` maps a value (as text: ``"apg_ours"``, ``"8"``, ``"true"``) to the paper's label;
* ``columns``: ``{"key", "label", "unit", "direction": "lower"|"higher", "kind"?,
  "decimals"?}``;
* ``rows``: setting keys and column keys (``null`` where the paper has no value), plus
  optional ``external`` (a prior method the paper quotes), ``confidence`` and ``note``.

A **results file** (``results/<table id>.json``, written by a method stage) holds ours::

    {"table": "awm_table_1",                       # optional, checked when present
     "meta": {"profile": "smoke", "dataset": "synthetic", "num_scenarios": 200,
              "commit": "0123abc", "generated_by": "diffdrive.eval.awm"},
     "rows": [{"setup": "apg_ours", "num_rollouts": 1,
               "min_ade": 1.93, "min_overlap": 0.071, "min_offroad": 0.030}]}

Rows are matched to the paper's by their setting values (``1`` and ``1.0`` are the same
value; an absent setting key reads as ``null``). A metric may be a number, ``null``, or
``{"mean": m, "std": s}`` (shown ``m ± s``); other keys are ignored. Rows of ours that the
paper lacks are appended and marked.

:func:`compare` lines both up in a :class:`Comparison`; :func:`render_markdown` and
:func:`render_latex` (booktabs) print it. Output depends only on the inputs: numbers have
a fixed number of decimals (4, like the papers), rows keep the paper's order and then the
results file's, and no timestamps are written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MISSING = "—"
META_KEYS = ("profile", "dataset", "num_scenarios", "commit", "generated_by")
EXTERNAL_MARK = "†"
OURS_ONLY_MARK = "‡"
NOTE_OURS_MISSING = "— in an *ours* column: not produced yet by this pipeline."
NOTE_PAPER_MISSING = "— in a *paper* column: no value in the paper's table (see the row's note)."
NOTE_EXTERNAL = f"{EXTERNAL_MARK} prior method; the paper quotes its numbers from other work."
NOTE_OURS_ONLY = f"{OURS_ONLY_MARK} produced by this pipeline; the paper has no such row."
_ROW_EXTRA_KEYS = frozenset({"note", "external", "confidence"})
_ARROWS = {"lower": "↓", "higher": "↑", "": ""}


@dataclasses.dataclass(frozen=True)
class Setting:
    """A key that identifies a row (``num_rollouts``), with the paper's labels for values."""

    key: str
    label: str
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def display(self, value: Any) -> str:
        """The paper's label for ``value`` (from ``values``), else the value itself."""
        text = value_text(value)
        return self.values.get(text, text)


@dataclasses.dataclass(frozen=True)
class Column:
    """A metric (or, in a descriptive table, a text column)."""

    key: str
    label: str
    unit: str = ""
    direction: str = ""
    kind: str = "number"
    decimals: int = 4

    @property
    def header(self) -> str:
        """Label, a short unit in parentheses and the better direction: ``min ADE (m) ↓``."""
        unit = f" ({self.unit})" if self.unit and len(self.unit) <= 4 else ""
        arrow = _ARROWS[self.direction]
        return f"{self.label}{unit}{' ' + arrow if arrow else ''}"

    @property
    def description(self) -> str:
        """``min overlap: fraction of scenarios, lower is better``."""
        parts = [self.unit, f"{self.direction} is better" if self.direction else ""]
        return f"{self.label}: {', '.join(p for p in parts if p)}"


@dataclasses.dataclass(frozen=True)
class ReferenceTable:
    """One of a paper's tables, transcribed (see the module docstring for the JSON)."""

    id: str
    title: str
    source: Mapping[str, str]
    confidence: str
    settings: tuple[Setting, ...]
    columns: tuple[Column, ...]
    rows: tuple[Mapping[str, Any], ...]
    protocol: str = ""
    kind: str = "numeric"
    text_layout: str = ""
    paper: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reference_file: str = ""

    @property
    def setting_keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.settings)

    @property
    def column_keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.columns)

    def row_key(self, row: Mapping[str, Any]) -> tuple:
        """The canonical identity of a row: its setting values (absent reads as ``None``)."""
        return tuple(_canonical(row.get(k)) for k in self.setting_keys)

    def find_row(self, **settings: Any) -> Mapping[str, Any]:
        """The paper row with these setting values (``KeyError`` if there is none)."""
        key = self.row_key(settings)
        for row in self.rows:
            if self.row_key(row) == key:
                return row
        raise KeyError(f"{self.id}: no row with {settings}")


@dataclasses.dataclass(frozen=True)
class Results:
    """Ours: the rows and ``meta`` of a results file; ``path`` is how headers name it."""

    path: str
    meta: Mapping[str, Any]
    rows: tuple[Mapping[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One printed row: setting cells, marks on the first cell, paper and ours cells."""

    settings: tuple[str, ...]
    marks: tuple[str, ...]
    paper: tuple[str, ...]
    ours: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Everything a renderer prints; all cells are already formatted text."""

    table: ReferenceTable
    header_line: str
    show_ours: bool
    rows: tuple[ComparisonRow, ...]
    footnotes: tuple[str, ...]
    sources: tuple[str, ...]


# --------------------------------------------------------------------------- loading


def _canonical(value: Any) -> tuple:
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    if isinstance(value, str):
        return ("str", value)
    raise ValueError(f"setting values must be null, bool, number or string, got {value!r}")


def value_text(value: Any) -> str:
    """Setting value as text: ``None`` → ``""``, ``True`` → ``"true"``, ``8.0`` → ``"8"``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return format(value, "g")
    return str(value)


def _table_from_json(entry: Mapping[str, Any], paper: Mapping[str, Any], origin: str):
    tid = entry["id"]
    settings = tuple(
        Setting(s["key"], s.get("label", s["key"]), dict(s.get("values", {})))
        for s in entry["settings"]
    )
    columns = tuple(
        Column(
            c["key"],
            c.get("label", c["key"]),
            c.get("unit", ""),
            c.get("direction", ""),
            c.get("kind", "number"),
            int(c.get("decimals", 4)),
        )
        for c in entry["columns"]
    )
    for col in columns:
        if col.direction not in _ARROWS:
            raise ValueError(f"{origin}:{tid}: column {col.key} has direction {col.direction!r}")
    keys = [s.key for s in settings] + [c.key for c in columns]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{origin}:{tid}: duplicate setting/column keys {keys}")
    table = ReferenceTable(
        id=tid,
        title=entry.get("title", tid),
        source=dict(entry["source"]),
        confidence=entry.get("confidence", paper.get("confidence", "")),
        settings=settings,
        columns=columns,
        rows=tuple(dict(r) for r in entry["rows"]),
        protocol=entry.get("protocol", ""),
        kind=entry.get("kind", "numeric"),
        text_layout=entry.get("text_layout", ""),
        paper=dict(paper),
        reference_file=origin,
    )
    seen = set()
    for i, row in enumerate(table.rows):
        unknown = set(row) - set(keys) - _ROW_EXTRA_KEYS
        missing = set(table.setting_keys) - set(row)
        if unknown or missing:
            raise ValueError(
                f"{origin}:{tid}: row {i} has unknown keys {sorted(unknown)} "
                f"or lacks settings {sorted(missing)}"
            )
        for col in columns:
            v = row.get(col.key)
            ok = isinstance(v, str) if col.kind == "text" else _is_number(v)
            if v is not None and not ok:
                raise ValueError(f"{origin}:{tid}: row {i} column {col.key} has {v!r}")
        key = table.row_key(row)
        if key in seen:
            raise ValueError(f"{origin}:{tid}: row {i} repeats settings {_settings_of(table, row)}")
        seen.add(key)
    return table


def _settings_of(table: ReferenceTable, row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in table.setting_keys}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_reference(path: str | os.PathLike) -> dict[str, ReferenceTable]:
    """The tables of one ``paper_tables/reference/<paper>.json`` file, by id, validated."""
    path = pathlib.Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    paper = data.get("paper", {})
    out: dict[str, ReferenceTable] = {}
    for entry in data["tables"]:
        table = _table_from_json(entry, paper, path.name)
        if table.id in out:
            raise ValueError(f"{path.name}: table id {table.id} appears twice")
        out[table.id] = table
    return out


def load_reference_dir(directory: str | os.PathLike) -> dict[str, ReferenceTable]:
    """All reference tables of every ``*.json`` in ``directory``, by id (ids are unique)."""
    out: dict[str, ReferenceTable] = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        for tid, table in load_reference(path).items():
            if tid in out:
                raise ValueError(f"table id {tid} is in {path.name} and another file")
            out[tid] = table
    return out


def results_from_json(data: Mapping[str, Any], path: str, table_id: str | None = None) -> Results:
    """Validate a parsed results file (see the module docstring) into :class:`Results`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: a results file is an object with a 'rows' list")
    if table_id is not None and data.get("table", table_id) != table_id:
        raise ValueError(f"{path}: holds table {data['table']!r}, expected {table_id!r}")
    meta = data.get("meta", {})
    if not isinstance(meta, Mapping):
        raise ValueError(f"{path}: 'meta' must be an object")
    rows = data["rows"]
    if not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"{path}: every row must be an object")
    return Results(path=path, meta=dict(meta), rows=tuple(dict(r) for r in rows))


def load_results(
    path: str | os.PathLike, display_path: str | None = None, table_id: str | None = None
) -> Results | None:
    """Ours from a results file, or ``None`` when the file does not exist (yet)."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return results_from_json(data, display_path or str(path), table_id)


# --------------------------------------------------------------------------- formatting


def format_number(value: Any, decimals: int = 4) -> str:
    """A metric cell: fixed decimals, ``m ± s`` for ``{"mean", "std"}``, ``—`` for ``None``."""
    if value is None:
        return MISSING
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise ValueError(f"a metric object needs 'mean' (and optionally 'std'): {value!r}")
        mean = format_number(value["mean"], decimals)
        if value.get("std") is None:
            return mean
        return f"{mean} ± {format_number(value['std'], decimals)}"
    if not _is_number(value):
        raise ValueError(f"metric values must be numbers, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def header_line(results: Results | None, expected: str) -> str:
    """``Ours: profile `smoke`, dataset `synthetic` (200 scenarios), ...`` from ``meta``."""
    if results is None:
        return f"Ours: not produced yet by this pipeline (no `{expected}`)."
    meta = results.meta

    def get(key: str) -> str:
        v = meta.get(key)
        return "unknown" if v is None or v == "" else str(v)

    n = meta.get("num_scenarios")
    n_text = f"{n} scenarios" if n is not None else "unknown number of scenarios"
    return (
        f"Ours: profile `{get('profile')}`, dataset `{get('dataset')}` ({n_text}), "
        f"commit `{get('commit')}`, generated by `{get('generated_by')}`; "
        f"from `{results.path}`."
    )


# --------------------------------------------------------------------------- comparison


def compare(
    table: ReferenceTable,
    ours: Results | None,
    *,
    expected: str,
    extra_rows: Sequence[Mapping[str, Any]] = (),
    header: str | None = None,
) -> Comparison:
    """Line up the paper's rows with ours.

    ``expected`` names the results file ours should come from (for the header when it is
    missing). ``extra_rows`` are rows this project adds to the paper's own (same keys as
    reference rows, e.g. diffdrive's line in a descriptive table). ``header`` replaces the
    generated header line. Descriptive tables (``kind == "text"``) have no ours columns.
    """
    show_ours = table.kind != "text"
    ours_rows: dict[tuple, Mapping[str, Any]] = {}
    if ours is not None:
        for i, row in enumerate(ours.rows):
            key = table.row_key(row)
            if key in ours_rows:
                raise ValueError(
                    f"{ours.path}: row {i} repeats settings {_settings_of(table, row)}"
                )
            ours_rows[key] = row

    notes: list[str] = []  # lettered row notes, in order of appearance
    flags = {"ours_missing": False, "paper_missing": False, "external": False, "ours_only": False}

    def note_mark(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return chr(ord("a") + notes.index(text))

    def cells(row: Mapping[str, Any] | None, which: str) -> tuple[str, ...]:
        out = []
        for col in table.columns:
            v = None if row is None else row.get(col.key)
            if col.kind == "text":
                out.append(MISSING if v is None else str(v))
            else:
                out.append(format_number(v, col.decimals))
            if v is None and row is not None and which == "paper":
                flags["paper_missing"] = True
        if which == "ours" and show_ours and MISSING in out:
            flags["ours_missing"] = True
        return tuple(out)

    rows: list[ComparisonRow] = []
    for row in (*table.rows, *extra_rows):
        marks = []
        if row.get("external"):
            marks.append(EXTERNAL_MARK)
            flags["external"] = True
        if row.get("note"):
            marks.append(note_mark(row["note"]))
        ours_row = ours_rows.pop(table.row_key(row), None)
        rows.append(
            ComparisonRow(
                settings=tuple(s.display(row.get(s.key)) for s in table.settings),
                marks=tuple(marks),
                paper=cells(row, "paper"),
                ours=cells(ours_row, "ours") if show_ours else (),
            )
        )
    if show_ours:
        for row in ours_rows.values():  # ours-only rows, in the results file's order
            flags["ours_only"] = True
            rows.append(
                ComparisonRow(
                    settings=tuple(s.display(row.get(s.key)) for s in table.settings),
                    marks=(OURS_ONLY_MARK,),
                    paper=tuple("" for _ in table.columns),
                    ours=cells(row, "ours"),
                )
            )

    footnotes = []
    if flags["ours_missing"]:
        footnotes.append(NOTE_OURS_MISSING)
    if flags["paper_missing"]:
        footnotes.append(NOTE_PAPER_MISSING)
    if flags["external"]:
        footnotes.append(NOTE_EXTERNAL)
    if flags["ours_only"]:
        footnotes.append(NOTE_OURS_ONLY)
    footnotes.extend(f"({chr(ord('a') + i)}) {text}" for i, text in enumerate(notes))

    sources = [f"paper_tables/reference/{table.reference_file}"]
    if ours is not None:
        sources.append(ours.path)
    return Comparison(
        table=table,
        header_line=header if header is not None else header_line(ours, expected),
        show_ours=show_ours,
        rows=tuple(rows),
        footnotes=tuple(footnotes),
        sources=tuple(sources),
    )


def _source_line(table: ReferenceTable) -> tuple[str, str]:
    """(paper title, ``Table I of ..., [confidence]`` details) for both renderers."""
    paper = table.paper
    title = paper.get("title", "")
    arxiv = f" (arXiv {paper['arxiv']})" if paper.get("arxiv") else ""
    where = f"Table {table.source.get('table', '?')}"
    if table.source.get("table", "").startswith("section"):
        where = table.source["table"]
    details = f"{where}{arxiv}, transcribed from `{table.source.get('file', '?')}`"
    return title, f"{details}; confidence: {table.confidence or 'unknown'}."


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def render_markdown(comp: Comparison) -> str:
    """A Markdown document: title, source, caption, header line, table, notes."""
    t = comp.table
    title, details = _source_line(t)
    lines = [
        f"<!-- Generated by scripts/make_tables.py from {' and '.join(comp.sources)}; "
        "do not edit. -->",
        f"## {t.title}",
        "",
        f"Paper: *{title}*, {details}" if title else f"Paper: {details}",
        "",
    ]
    if t.source.get("caption"):
        lines += [f"> {t.source['caption']}", ""]
    lines += [comp.header_line, ""]

    head = [_md_cell(s.label) for s in t.settings]
    align = ["---"] * len(t.settings)
    for col in t.columns:
        if comp.show_ours:
            head += [_md_cell(f"{col.header} paper"), _md_cell(f"{col.header} ours")]
            align += ["---:", "---:"]
        else:
            head.append(_md_cell(col.header))
            align.append("---" if col.kind == "text" else "---:")
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for row in comp.rows:
        body = [_md_cell(c) for c in row.settings]
        if row.marks and body:
            body[0] += f"<sup>{','.join(row.marks)}</sup>"
        for i, _ in enumerate(t.columns):
            body.append(_md_cell(row.paper[i]))
            if comp.show_ours:
                body.append(_md_cell(row.ours[i]))
        lines.append("| " + " | ".join(body) + " |")
    lines.append("")
    numeric = [c for c in t.columns if c.kind != "text"]
    if numeric:
        lines += ["Columns: " + "; ".join(c.description for c in numeric) + ".", ""]
    if t.protocol:
        lines += [f"Protocol (paper): {t.protocol}", ""]
    if comp.footnotes:
        lines += ["Notes:", ""] + [f"- {f}" for f in comp.footnotes] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- LaTeX

_TEX_ESCAPE = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "✓": r"\checkmark{}",
    "✗": r"$\times$",
    "∇": r"$\nabla$",
    "—": "---",
    "–": "--",
    "±": r"$\pm$",
    "η": r"$\eta$",
    "τ": r"$\tau$",
    "†": r"\dag{}",
    "‡": r"\ddag{}",
    "’": "'",
    "“": "``",
    "”": "''",
}
_EMPHASIS = re.compile(r"\*\*(.+?)\*\*|\*(\S(?:[^*]*?\S)?)\*|`([^`]+)`")
_MATH = re.compile(r"(\$[^$]+\$)")


def _tex_plain(text: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in text)


def tex_escape(text: str, markup: bool = False) -> str:
    """Escape text for LaTeX; with ``markup``, keep ``$math$`` and turn ``**b**``,
    ``*i*`` and ```code``` into ``\\textbf``, ``\\emph`` and ``\\texttt``."""
    if not markup:
        return _tex_plain(text)
    out = []
    for part in _MATH.split(text):
        if _MATH.fullmatch(part):
            out.append(part)
            continue
        pos = 0
        for m in _EMPHASIS.finditer(part):
            out.append(_tex_plain(part[pos : m.start()]))
            bold, italic, code = m.groups()
            if bold is not None:
                out.append(r"\textbf{" + tex_escape(bold, True) + "}")
            elif italic is not None:
                out.append(r"\emph{" + tex_escape(italic, True) + "}")
            else:
                out.append(r"\texttt{" + _tex_plain(code) + "}")
            pos = m.end()
        out.append(_tex_plain(part[pos:]))
    return "".join(out)


def render_latex(comp: Comparison) -> str:
    """A booktabs ``table`` float (needs ``booktabs`` and ``amssymb``)."""
    t = comp.table
    title, details = _source_line(t)
    n_set = len(t.settings)
    spec = "l" * n_set
    for col in t.columns:
        a = "l" if col.kind == "text" else "r"
        spec += a * (2 if comp.show_ours else 1)
    lines = [
        f"% Generated by scripts/make_tables.py from {' and '.join(comp.sources)}; do not edit.",
        r"% Needs \usepackage{booktabs} and \usepackage{amssymb}.",
        r"\begin{table}[htbp]",
        r"  \centering",
        r"  \caption{" + tex_escape(t.title, True) + "}",
        r"  \label{tab:" + t.id + "}",
        r"  \begin{tabular}{" + spec + "}",
        r"    \toprule",
    ]
    if comp.show_ours:
        top = [tex_escape(s.label) for s in t.settings]
        rules = []
        for i, col in enumerate(t.columns):
            top.append(r"\multicolumn{2}{c}{" + tex_escape(col.header) + "}")
            first = n_set + 2 * i + 1
            rules.append(rf"\cmidrule(lr){{{first}-{first + 1}}}")
        lines.append("    " + " & ".join(top) + r" \\")
        lines.append("    " + " ".join(rules))
        sub = [""] * n_set + ["paper", "ours"] * len(t.columns)
        lines.append("    " + " & ".join(sub) + r" \\")
    else:
        head = [tex_escape(s.label) for s in t.settings] + [tex_escape(c.header) for c in t.columns]
        lines.append("    " + " & ".join(head) + r" \\")
    lines.append(r"    \midrule")
    for row in comp.rows:
        cells = [tex_escape(c) for c in row.settings]
        if row.marks and cells:
            cells[0] += r"\textsuperscript{" + ",".join(tex_escape(m) for m in row.marks) + "}"
        for i, _ in enumerate(t.columns):
            cells.append(tex_escape(row.paper[i]))
            if comp.show_ours:
                cells.append(tex_escape(row.ours[i]))
        lines.append("    " + " & ".join(cells) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"  \par\smallskip"]
    paper = f"Paper: \\emph{{{tex_escape(title)}}}, " if title else "Paper: "
    notes = [paper + tex_escape(details, True), tex_escape(comp.header_line, True)]
    notes += [tex_escape(f, True) for f in comp.footnotes]
    lines.append(r"  {\footnotesize\raggedright")
    lines += [f"  {n}\\par" for n in notes]
    lines += ["  }", r"\end{table}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def write_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` via a temporary file and rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def iter_numbers(table: ReferenceTable) -> Iterable[float | None]:
    """The paper's numeric cells in reading order (rows, then columns); ``None`` for gaps."""
    for row in table.rows:
        for col in table.columns:
            if col.kind != "text":
                yield row.get(col.key)
