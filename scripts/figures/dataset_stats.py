"""Figure: dataset statistics, the scenario set vs. real data, from the stats JSON.

    python scripts/figures/dataset_stats.py [results/dataset_stats.json] [OUT.png]

Run by the ``dataset_stats_figure`` stage of ``dvc.yaml``.
"""

from __future__ import annotations

import json
import sys

from diffdrive import config
from diffdrive.viz import plot_dataset_stats, save_png


def main(argv: list[str]) -> int:
    src = argv[0] if argv else config.DATASET_STATS_JSON
    out = argv[1] if len(argv) > 1 else config.DATASET_STATS_FIGURE
    with open(src) as f:
        report = json.load(f)
    save_png(plot_dataset_stats(report), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
