"""One generator per paper table: the paper's numbers beside ours, as Markdown and LaTeX.

Every table of the reproduced papers has a generator here, registered in :data:`REGISTRY`
under the table's id (the id of its entry in ``paper_tables/reference/*.json``). A
generator reads the results files it declares (under ``results/``) and returns a
:class:`Rendered` table; :func:`generate` writes ``<out>/<id>.md`` and ``<out>/<id>.tex``.

**What method stages write.** Each numeric table reads ``results/<id>.json``::

    {"table": "<id>",                                     # optional; checked if present
     "meta": {"profile": "smoke", "dataset": "synthetic", "num_scenarios": 200,
              "commit": "0123abc", "generated_by": "diffdrive.eval.<module>"},
     "rows": [{<setting keys>: ..., <metric keys>: float | null | {"mean": m, "std": s}}]}

Rows are matched to the paper's rows by their setting values; the generator docstrings
below list the setting and metric keys of each table. A row the paper lacks is appended
and marked; a paper row without ours shows "—" ("not produced yet by this pipeline").
``meta`` fills the header line that says which data and profile produced ours. Metrics
follow the evaluation protocol of the papers: ADE in metres (minimum over the rollouts of
a scenario where there are several), overlap/offroad as the fraction of scenarios with an
event at any step, except the ``*_per_step`` metrics (the AWM paper's overlap*/offroad*),
which are fractions of all individual steps.

Run ``scripts/make_tables.py`` (or :func:`generate`) to rebuild the tables.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

from diffdrive.eval import tables

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEFAULT_REFERENCE_DIR = ROOT / "paper_tables" / "reference"


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A generated table: its id and both renderings."""

    table_id: str
    markdown: str
    latex: str


@dataclasses.dataclass(frozen=True)
class Context:
    """Where generators find the reference tables and the results files."""

    results_dir: pathlib.Path
    reference_dir: pathlib.Path = DEFAULT_REFERENCE_DIR

    def reference(self, table_id: str) -> tables.ReferenceTable:
        """The transcribed paper table ``table_id``."""
        return tables.load_reference_dir(self.reference_dir)[table_id]

    def results_name(self, filename: str) -> str:
        """How headers name a results file: ``results/<filename>``."""
        return f"{pathlib.Path(self.results_dir).name}/{filename}"

    def results(self, filename: str, table_id: str | None = None) -> tables.Results | None:
        """Ours from ``<results_dir>/<filename>``, or ``None`` if it is not there yet."""
        return tables.load_results(
            pathlib.Path(self.results_dir) / filename, self.results_name(filename), table_id
        )


@dataclasses.dataclass(frozen=True)
class TableGenerator:
    """A registered generator: the table id, the reference file and the results it reads."""

    table_id: str
    reference: str
    results: tuple[str, ...]
    fn: Callable[[Context], Rendered]

    @property
    def doc(self) -> str:
        return self.fn.__doc__ or ""

    def __call__(self, ctx: Context) -> Rendered:
        return self.fn(ctx)


REGISTRY: dict[str, TableGenerator] = {}


def register(table_id: str, *, reference: str, results: Iterable[str] = ()):
    """Register ``fn(ctx) -> Rendered`` as the generator of ``table_id``."""

    def wrap(fn: Callable[[Context], Rendered]) -> Callable[[Context], Rendered]:
        if table_id in REGISTRY:
            raise ValueError(f"table {table_id} is registered twice")
        REGISTRY[table_id] = TableGenerator(table_id, reference, tuple(results), fn)
        return fn

    return wrap


def render(comp: tables.Comparison) -> Rendered:
    """Both renderings of a comparison."""
    return Rendered(comp.table.id, tables.render_markdown(comp), tables.render_latex(comp))


def _standard(ctx: Context, table_id: str) -> Rendered:
    """Paper table ``table_id`` beside ``results/<table_id>.json``."""
    filename = f"{table_id}.json"
    table = ctx.reference(table_id)
    ours = ctx.results(filename, table_id)
    return render(tables.compare(table, ours, expected=ctx.results_name(filename)))


# --------------------------------------------------------------------------- AWM


@register("awm_table_1", reference="awm.json", results=("awm_table_1.json",))
def awm_table_1(ctx: Context) -> Rendered:
    """AWM Table I, APG reactive performance against the number of rollouts.

    Reads ``results/awm_table_1.json``; rows
    ``{"setup": "apg_ours", "num_rollouts": 8, "min_ade": ..., "min_overlap": ...,
    "min_offroad": ...}``. ``setup`` is ``"apg_baseline"`` (the APG paper's training recipe,
    the paper's row "APG [39]" at 32 rollouts) or ``"apg_ours"`` (AWM's recipe: fewer
    epochs, categorical-entropy regulariser, clipped variances) at 1, 2, 4, 8, 16, 32
    rollouts. ``min_ade`` in metres; ``min_overlap``/``min_offroad`` are fractions of
    scenarios, taken from the min-ADE rollout.
    """
    return _standard(ctx, "awm_table_1")


@register("awm_table_2", reference="awm.json", results=("awm_table_2.json",))
def awm_table_2(ctx: Context) -> Rendered:
    """AWM Table II, odometry accuracy against the imagination horizon.

    Reads ``results/awm_table_2.json``; rows ``{"horizon_steps": 5, "ade": ...}`` for
    ``horizon_steps`` 5, 10, 15 (0.1 s steps): the mean distance in metres between the
    trajectory imagined by the odometry/latent heads and the executed one.
    """
    return _standard(ctx, "awm_table_2")


@register("awm_table_3", reference="awm.json", results=("awm_table_3.json",))
def awm_table_3(ctx: Context) -> Rendered:
    """AWM Table III, reactive evaluation of the (deterministic) optimal planner.

    Reads ``results/awm_table_3.json``; rows ``{"setting": "planner", "min_ade": ...,
    "min_overlap": ..., "min_offroad": ...}`` with ``setting`` ``"planner"`` (the planner
    head plus inverse kinematics, Sec. III-C) or ``"apg_baseline"`` (the APG recipe at 32
    rollouts, as in Table I).
    """
    return _standard(ctx, "awm_table_3")


@register("awm_table_4", reference="awm.json", results=("awm_table_4.json",))
def awm_table_4(ctx: Context) -> Rendered:
    """AWM Table IV, MPC planning with the inverse-state prediction as reward.

    Reads ``results/awm_table_4.json``; rows ``{"reward": "neg_norm_inv_state",
    "min_ade": ..., "min_overlap_per_step": ..., "min_offroad_per_step": ...}`` with
    ``reward`` one of ``"neg_dist_log"`` (negative distance to the next log state),
    ``"pos_dist_log"`` (positive distance: the worst case) and ``"neg_norm_inv_state"``
    (negative norm of the predicted inverse-state displacement). The two rates are
    per-step fractions (the paper's overlap*/offroad*).
    """
    return _standard(ctx, "awm_table_4")


@register("awm_table_5", reference="awm.json", results=("awm_table_5.json",))
def awm_table_5(ctx: Context) -> Rendered:
    """AWM Table V, test-time MPC with more imagined one-step trajectories.

    Reads ``results/awm_table_5.json``; rows ``{"setting": "plan_heading",
    "num_rollouts": 4, "min_ade": ..., "min_overlap_per_step": ...,
    "min_offroad_per_step": ...}``; ``setting`` ``"plan_heading"`` (1, 4, 8 rollouts) or
    ``"plan_waypoint"`` (1, 6, 12 rollouts). The rates are per-step fractions.
    """
    return _standard(ctx, "awm_table_5")


@register("awm_table_6", reference="awm.json", results=("awm_table_6.json",))
def awm_table_6(ctx: Context) -> Rendered:
    """AWM Table VI, reactive policy with different route conditioning.

    Reads ``results/awm_table_6.json``; rows ``{"conditioning": "heading",
    "num_rollouts": 8, "min_ade": ..., "min_overlap": ..., "min_offroad": ...}`` with
    ``conditioning`` ``"none"``, ``"heading"`` or ``"waypoint"`` (last expert waypoint), at
    1 and 8 rollouts. The paper's ``"wayformer"`` row is Waymax's Wayformer, quoted.
    """
    return _standard(ctx, "awm_table_6")


@register("awm_table_7", reference="awm.json", results=("awm_table_7.json",))
def awm_table_7(ctx: Context) -> Rendered:
    """AWM Table VII, training with a differentiable (Gaussian) overlap loss.

    Reads ``results/awm_table_7.json``; rows ``{"diff_overlap_loss": true,
    "num_rollouts": 1, "min_ade": ..., "min_overlap_per_step": ...,
    "min_offroad_per_step": ...}`` for ``diff_overlap_loss`` false/true at 1 and 8
    rollouts. The rates are per-step fractions.
    """
    return _standard(ctx, "awm_table_7")


# --------------------------------------------------------------------------- DSS

DIFFDRIVE_CHARACTERISTICS = {
    "method": "diffdrive (this project)",
    "policy": "L",
    "next_state": "S",
    "critic": "S + L",
    "action_selection": "Reactive / MPC / MPC + ∇",
    "note": (
        "Added by this project. diffdrive's simulator (S) is differentiable (JAX) and "
        "Waymax-compatible; the pipeline reproduces APG (learned policy trained through "
        "the simulator, reactive at test time), AWM-MPC (learned analytic world-model "
        "heads) and DSS (search over imagined rollouts in the simulator, scored by the "
        "simulator and learned collision/offroad classifiers, refined with gradients ∇ "
        "through the simulator)."
    ),
}


@register("dss_table_1", reference="dss.json")
def dss_table_1(ctx: Context) -> Rendered:
    """DSS Table 1, method characteristics, with a row for this project.

    Reads no results: the table is descriptive (L = learned net, S = simulator, ...). The
    paper's rows are followed by :data:`DIFFDRIVE_CHARACTERISTICS`, the same columns for
    diffdrive's pipeline.
    """
    table = ctx.reference("dss_table_1")
    comp = tables.compare(
        table,
        None,
        expected="",
        extra_rows=[DIFFDRIVE_CHARACTERISTICS],
        header="Descriptive table: nothing to reproduce. The last row describes this project.",
    )
    return render(comp)


@register("dss_table_2", reference="dss.json", results=("dss_table_2.json",))
def dss_table_2(ctx: Context) -> Rendered:
    """DSS Table 2, gradient step size in the reactive setting (K = 1, T = 1, mean action).

    Reads ``results/dss_table_2.json``; rows ``{"eta_accel": 1000, "eta_steer": 0.01,
    "ade": ..., "overlap": ..., "offroad": ...}`` for (eta_accel, eta_steer) in (0, 0),
    (100, 0.01), (200, 0.01), (500, 0.01), (1000, 0.01), (5000, 0.01). ``ade`` in metres;
    ``overlap``/``offroad`` are fractions of scenarios with an event at any step.
    """
    return _standard(ctx, "dss_table_2")


@register("dss_table_3", reference="dss.json", results=("dss_table_3.json",))
def dss_table_3(ctx: Context) -> Rendered:
    """DSS Table 3, search without gradients (T = 1, eta = 0, tau = 1).

    Reads ``results/dss_table_3.json``; rows ``{"K": 4, "ade": ..., "overlap": ...,
    "offroad": ...}`` for K in 1, 2, 4, 8 sampled imagined trajectories.
    """
    return _standard(ctx, "dss_table_3")


@register("dss_table_4", reference="dss.json", results=("dss_table_4.json",))
def dss_table_4(ctx: Context) -> Rendered:
    """DSS Table 4, full DSS for tracking (T = 1, tau = 0.01, eta = (1000, 0.01)).

    Reads ``results/dss_table_4.json``; rows ``{"model": "dss", "K": 8, "ade": ...,
    "overlap": ..., "offroad": ...}`` for K in 1, 2, 4, 8. The paper's baselines
    (``"decision_transformer"``, ``"bc"``, ``"pidt"``, ``"wayformer"``,
    ``"easychauffeur_il"``, ``"easychauffeur_ppo"``, with ``"K": null``) are quoted; a
    results row with one of those models (and no ``K``) fills its ours cells.
    """
    return _standard(ctx, "dss_table_4")


@register("dss_table_5", reference="dss.json", results=("dss_table_5.json",))
def dss_table_5(ctx: Context) -> Rendered:
    """DSS Table 5, planning against the classifier-guided collision/offroad cost only.

    Reads ``results/dss_table_5.json``; rows ``{"K": 8, "T": 10, "grad": true, "ade": ...,
    "overlap": ..., "offroad": ...}`` for (K, T, grad) in (1, 20, false), (1, 20, true),
    (4, 10, false), (4, 10, true), (4, 20, true), (8, 10, true); eta = (1000, 0.05), the
    ego sees only the final logged waypoint.
    """
    return _standard(ctx, "dss_table_5")


DSS_BEST_CONFIGURATION = {"K": 8, "T": 10, "grad": True}


@register("dss_table_6", reference="dss.json", results=("dss_table_6.json", "dss_table_5.json"))
def dss_table_6(ctx: Context) -> Rendered:
    """DSS Table 6, the best planning configuration against the baselines of Table 4.

    Reads ``results/dss_table_6.json`` if present, rows ``{"model": "dss_best", "ade": ...,
    "overlap": ..., "offroad": ...}`` (baseline models as in Table 4 may fill their ours
    cells). Otherwise ours is the row of ``results/dss_table_5.json`` with
    :data:`DSS_BEST_CONFIGURATION` (K = 8, T = 10, grad = true, the paper's best).
    """
    table = ctx.reference("dss_table_6")
    ours = ctx.results("dss_table_6.json", "dss_table_6")
    expected = ctx.results_name("dss_table_6.json")
    if ours is None:
        t5 = ctx.results("dss_table_5.json", "dss_table_5")
        if t5 is not None:
            ours = _derive_best(ctx.reference("dss_table_5"), t5)
    return render(tables.compare(table, ours, expected=expected))


def _derive_best(table5: tables.ReferenceTable, t5: tables.Results) -> tables.Results:
    key = table5.row_key(DSS_BEST_CONFIGURATION)
    rows = [r for r in t5.rows if table5.row_key(r) == key]
    metrics = ("ade", "overlap", "offroad")
    derived = [{"model": "dss_best", **{m: rows[0].get(m) for m in metrics}}] if rows else []
    where = ", ".join(f"{k}={tables.value_text(v)}" for k, v in DSS_BEST_CONFIGURATION.items())
    return tables.Results(path=f"{t5.path} (row {where})", meta=t5.meta, rows=tuple(derived))


# --------------------------------------------------------------------------- APG


@register("apg_single_agent", reference="apg.json", results=("apg_single_agent.json",))
def apg_single_agent(ctx: Context) -> Rendered:
    """APG single-agent (planning) setting: APG against behaviour cloning (secondary numbers).

    Reads ``results/apg_single_agent.json``; rows ``{"method": "apg", "min_ade": ...,
    "overlap": ..., "offroad": ...}`` with ``method`` ``"apg"`` or ``"bc"``.
    """
    return _standard(ctx, "apg_single_agent")


@register("apg_multi_agent", reference="apg.json", results=("apg_multi_agent.json",))
def apg_multi_agent(ctx: Context) -> Rendered:
    """APG multi-agent setting: ADE of APG against behaviour cloning (unverified numbers).

    Reads ``results/apg_multi_agent.json``; rows ``{"method": "apg", "ade": ...}`` with
    ``method`` ``"apg"`` or ``"bc"``.
    """
    return _standard(ctx, "apg_multi_agent")


@register("apg_noise_robustness", reference="apg.json", results=("apg_noise_robustness.json",))
def apg_noise_robustness(ctx: Context) -> Rendered:
    """APG against BC under test-time position noise (the paper states the claim only).

    Reads ``results/apg_noise_robustness.json``; rows ``{"method": "apg", "noise_std": 0.2,
    "ade": ..., "overlap": ..., "offroad": ...}`` (one deterministic rollout; noise std in
    metres per axis and step).
    """
    return _standard(ctx, "apg_noise_robustness")


@register("apg_num_modes", reference="apg.json", results=("apg_num_modes.json",))
def apg_num_modes(ctx: Context) -> Rendered:
    """APG and BC minADE against the number of sampled rollouts K.

    Reads ``results/apg_num_modes.json``; rows ``{"method": "apg", "K": 8, "min_ade": ...,
    "min_overlap": ..., "min_offroad": ...}``.
    """
    return _standard(ctx, "apg_num_modes")


@register("apg_sequence_length", reference="apg.json", results=("apg_sequence_length.json",))
def apg_sequence_length(ctx: Context) -> Rendered:
    """APG trained on shorter rollouts, evaluated on the full 80 steps.

    Reads ``results/apg_sequence_length.json``; rows ``{"training_steps": 40, "ade": ...,
    "overlap": ..., "offroad": ...}``.
    """
    return _standard(ctx, "apg_sequence_length")


@register("apg_detach", reference="apg.json", results=("apg_detach.json",))
def apg_detach(ctx: Context) -> Rendered:
    """APG with detached (per-step) against full gradients through the simulator state.

    Reads ``results/apg_detach.json``; rows ``{"gradients": "detached" | "full", "ade": ...,
    "overlap": ..., "offroad": ..., "train_wall_s": ...}``.
    """
    return _standard(ctx, "apg_detach")


# --------------------------------------------------------------------------- driver


def generate(
    ids: Iterable[str] | None = None,
    *,
    results_dir: str | os.PathLike = ROOT / "results",
    out_dir: str | os.PathLike = ROOT / "paper_tables",
    reference_dir: str | os.PathLike = DEFAULT_REFERENCE_DIR,
) -> list[pathlib.Path]:
    """Build the tables ``ids`` (all when ``None``); write ``<id>.md`` and ``<id>.tex``.

    Every table is rendered before anything is written, so a bad results file leaves the
    previous outputs in place. Returns the written paths.
    """
    ids = list(REGISTRY) if ids is None else list(ids)
    unknown = [i for i in ids if i not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown table ids {unknown}; known: {sorted(REGISTRY)}")
    ctx = Context(pathlib.Path(results_dir), pathlib.Path(reference_dir))
    rendered = [REGISTRY[i](ctx) for i in ids]
    out = pathlib.Path(out_dir)
    written = []
    for r in rendered:
        written.append(tables.write_atomic(out / f"{r.table_id}.md", r.markdown))
        written.append(tables.write_atomic(out / f"{r.table_id}.tex", r.latex))
    return written


def describe() -> list[dict[str, Any]]:
    """The registry as plain data: id, reference file, results files, first docstring line."""
    return [
        {
            "id": g.table_id,
            "reference": g.reference,
            "results": list(g.results),
            "summary": g.doc.strip().splitlines()[0] if g.doc.strip() else "",
        }
        for g in REGISTRY.values()
    ]
