"""Build the paper tables: the papers' numbers beside ours, as Markdown and LaTeX.

For every registered table (``diffdrive.eval.paper_tables.REGISTRY``: AWM Tables I-VII,
DSS Tables 1-6, the APG numbers) this reads the transcribed reference
(``paper_tables/reference/*.json``) and the results files the table declares (under
``--results``), and writes ``<out>/<id>.md`` and ``<out>/<id>.tex`` atomically. A table
whose results are missing is still written, with "—" in the ours columns.

    python scripts/make_tables.py [--only ID ...] [--results results] [--out paper_tables]
    python scripts/make_tables.py --list
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

try:
    from diffdrive.eval import paper_tables
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    from diffdrive.eval import paper_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", action="extend", metavar="ID", help="build only these table ids"
    )
    parser.add_argument("--results", default=str(ROOT / "results"), help="results directory")
    parser.add_argument("--out", default=str(ROOT / "paper_tables"), help="output directory")
    parser.add_argument(
        "--reference",
        default=str(paper_tables.DEFAULT_REFERENCE_DIR),
        help="directory of the transcribed reference tables",
    )
    parser.add_argument("--list", action="store_true", help="list the tables and exit")
    args = parser.parse_args(argv)

    if args.list:
        print(json.dumps(paper_tables.describe(), indent=2, ensure_ascii=False))
        return 0
    try:
        written = paper_tables.generate(
            args.only, results_dir=args.results, out_dir=args.out, reference_dir=args.reference
        )
    except KeyError as e:
        parser.error(str(e.args[0]))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
