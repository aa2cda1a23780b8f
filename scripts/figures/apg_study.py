"""Figure: the APG study (minADE vs K, noise robustness, training curves, route conditioning).

    python scripts/figures/apg_study.py [RESULTS_DIR] [OUT.png]

Drawn from the study's results files (``results/apg_*.json``, ``awm_table_{1,6}.json``);
run by the ``apg_study_figure`` stage of ``dvc.yaml``.
"""

from __future__ import annotations

import sys

from diffdrive.viz import save_png
from diffdrive.viz.apg import load_study_results, plot_apg_study

DEFAULT_OUT = "paper_tables/figures/apg_study.png"


def main(argv: list[str]) -> int:
    results_dir = argv[0] if argv else "results"
    out = argv[1] if len(argv) > 1 else DEFAULT_OUT
    save_png(plot_apg_study(load_study_results(results_dir)), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
