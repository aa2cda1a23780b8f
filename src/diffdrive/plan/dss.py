"""DSS: test-time search through the differentiable simulator (Nachkov et al., arXiv 2511.11043).

Algorithm 1 (:func:`plan`). From the real state at step ``t``, the ego imagines ``K``
futures of ``T`` steps in which *every* agent is driven by a policy (the ego by its
waypoint-conditioned policy, the others by the "others" actor; nothing replays the log),
stepped by the simulator's dynamics. A planning loss scores the ego's imagined positions
(:data:`PLANNING_LOSSES`); its gradient with respect to each rollout's ego actions
(through the differentiable dynamics, the other agents' imagined motion held fixed) gives
one descent step with a per-element step size ``eta = (eta_accel, eta_steer)``; the
rollouts are averaged with weights ``softmax(-loss / tau)`` and the first ``M`` actions are
returned.

Algorithm 2 (:func:`make_dss_actor`, :func:`control_loop`). The ego executes the ``M``
planned actions in the *real* simulator (:class:`~diffdrive.sim.env.PlanningAgentEnvironment`:
the ego follows the plan, the others replay the log), then replans. The planner is an
ordinary actor whose state holds the plan and both policies' recurrent states; it replans
when ``step % M == 0`` (a ``lax.cond`` on a scalar, so only one branch runs), which keeps the
physical trajectory exactly ``L`` steps long and lets it run through the same rollout and
metric code as every other evaluation. Between replans both policies still observe every
real step, so their recurrent states track the physical history.

The four settings of the paper's ablation tree are parameters of :class:`DSSConfig`:
reactive (``K=1, eta=0``), reactive with gradients (``K=1, eta>0``), simulator as critic
(``K>1, eta=0``) and full DSS (``K>1, eta>0``). With ``K = 1`` the imagined ego takes the
mean of its most likely mixture component (the paper's deterministic reactive rows); with
``K > 1`` it samples the mixture.

Cost: ``ceil(L / M)`` plans of ``K T`` imagined steps of ``N`` agents, i.e. ``O(L K T N / M)``
policy calls per scenario (``benchmarks/dss_latency.py``).

Nothing here is jitted; wrap :func:`control_loop` (or the evaluation that runs the actor)
in ``jax.jit`` at the top.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from diffdrive.models import policy as policy_lib
from diffdrive.sim import dynamics as dynamics_lib
from diffdrive.sim import env as env_lib
from diffdrive.sim import metrics as metrics_lib
from diffdrive.sim.datatypes import (
    Action,
    Array,
    RoadgraphPoints,
    SimulatorState,
    Trajectory,
    select_by_onehot,
)
from diffdrive.sim.observation import filter_topk_roadgraph_points

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

SETTINGS = ("reactive", "reactive_gradients", "simulator_critic", "dss")


@dataclasses.dataclass(frozen=True)
class DSSConfig:
    """Attributes:
    K: imagined rollouts per plan.
    T: imagination horizon (steps of 0.1 s).
    M: planned actions executed before replanning (``1 <= M <= T``).
    eta_accel: gradient step size on the acceleration (m/s^2 per unit loss gradient).
    eta_steer: gradient step size on the steering curvature (1/m per unit gradient).
    tau: softmax temperature of the rollout weights; 0 takes the best rollout.
    loss: planning loss name (:data:`PLANNING_LOSSES`).
    sample_ego: sample the ego's imagined actions from its mixture; ``None``: sample when
      ``K > 1``, else take the deterministic action (the paper's reactive rows).
    mean_action: the deterministic action: ``mixture_mean`` (the weighted mean of the
      components' means) or ``most_likely`` (the most likely component's mean, a poor
      driver when the WTA-trained weights are spread).
    dynamics: registry name of the imagination dynamics (the gradient-friendly bicycle the
      policies are trained with; the real simulator keeps its own).
    imagination_roadgraph_points: the imagination sees the roadgraph points nearest the ego
      at planning time, this many (the training pipeline cuts maps to 2000 points nearest
      the SDC the same way); ``None`` keeps the whole map.
    collision_weight, offroad_weight: weights of the classifier loss terms (Eq. 3).
    """

    K: int = 4
    T: int = 10
    M: int = 3
    eta_accel: float = 1000.0
    eta_steer: float = 0.01
    tau: float = 1.0
    loss: str = "tracking"
    sample_ego: bool | None = None
    mean_action: str = "mixture_mean"
    dynamics: str = "smooth_bicycle"
    imagination_roadgraph_points: int | None = 2000
    collision_weight: float = 1.0
    offroad_weight: float = 1.0

    def __post_init__(self):
        if self.K < 1 or self.T < 1:
            raise ValueError(f"DSSConfig: K and T must be >= 1, got K={self.K}, T={self.T}")
        if not 1 <= self.M <= self.T:
            raise ValueError(
                f"DSSConfig: M={self.M} actions cannot be taken from a T={self.T}-step "
                "imagination; need 1 <= M <= T"
            )
        if self.eta_accel < 0 or self.eta_steer < 0:
            raise ValueError("DSSConfig: step sizes eta must be >= 0")
        if self.tau < 0:
            raise ValueError(f"DSSConfig: tau must be >= 0, got {self.tau}")
        if self.loss not in PLANNING_LOSSES:
            raise ValueError(
                f"DSSConfig: unknown planning loss {self.loss!r}; one of {sorted(PLANNING_LOSSES)}"
            )
        if self.uses_gradients and not PLANNING_LOSSES[self.loss].differentiable:
            raise ValueError(
                f"DSSConfig: loss {self.loss!r} is not differentiable; use eta = 0 (search only)"
            )
        if self.mean_action not in ("mixture_mean", "most_likely"):
            raise ValueError(
                f"DSSConfig: mean_action must be 'mixture_mean' or 'most_likely', got "
                f"{self.mean_action!r}"
            )
        points = self.imagination_roadgraph_points
        if points is not None and points < 1:
            raise ValueError("DSSConfig: imagination_roadgraph_points must be >= 1 or None")

    @property
    def eta(self) -> tuple[float, float]:
        return (self.eta_accel, self.eta_steer)

    @property
    def uses_gradients(self) -> bool:
        return self.eta_accel > 0 or self.eta_steer > 0

    @property
    def samples_ego(self) -> bool:
        return self.K > 1 if self.sample_ego is None else self.sample_ego

    @property
    def ego_mode(self) -> str | None:
        """The ``mode`` of :func:`~diffdrive.models.policy.select_action` for the ego."""
        return policy_lib.MIXTURE_MEAN if self.mean_action == "mixture_mean" else None

    @property
    def setting(self) -> str:
        """The ablation-tree leaf: reactive, reactive_gradients, simulator_critic or dss."""
        search, grad = self.K > 1, self.uses_gradients
        return SETTINGS[2 * search + grad]


# --------------------------------------------------------------------------------------
# Planning losses
# --------------------------------------------------------------------------------------


@struct.dataclass
class LossContext:
    """What a planning loss may read besides the ego's imagined states.

    Attributes:
      log: the logged trajectories ``(B, N, L)`` (the tracking loss reads the ego's).
      start: scalar step of the real state the imagination starts from.
      is_sdc: ``(B, N)``.
      imagined: every agent's imagined states ``(B, K, N, T)`` (steps ``start+1 ..
        start+T``); the ego's row is replaced by the differentiable ego replay.
      roadgraph: the map the imagination sees ``(B, P)``.
    """

    log: Trajectory
    start: Array
    is_sdc: Array
    imagined: Trajectory
    roadgraph: RoadgraphPoints


LossFn = Callable[[Trajectory, LossContext], Array]
"""``loss(ego (B, K, T), context) -> (B, K)``."""


@dataclasses.dataclass(frozen=True)
class PlanningLoss:
    """A registered loss: ``fn(ego, context, classifier) -> (B, K)``.

    ``differentiable``: whether its gradient means anything (else search only, eta = 0).
    ``needs_classifier``: it reads a trained event classifier.
    """

    name: str
    fn: Callable[..., Array]
    differentiable: bool
    needs_classifier: bool = False


PLANNING_LOSSES: dict[str, PlanningLoss] = {}


def register_loss(name: str, differentiable: bool, needs_classifier: bool = False):
    def wrap(fn):
        if name in PLANNING_LOSSES:
            raise ValueError(f"planning loss {name!r} registered twice")
        PLANNING_LOSSES[name] = PlanningLoss(name, fn, differentiable, needs_classifier)
        return fn

    return wrap


def _ego_log_window(ctx: LossContext, T: int) -> tuple[Array, Array, Array]:
    """The ego's logged x, y, valid at steps ``start+1 .. start+T``: ``(B, T)`` each."""
    sdc = ctx.is_sdc[..., None]
    lx = jnp.sum(ctx.log.x * sdc, axis=-2)
    ly = jnp.sum(ctx.log.y * sdc, axis=-2)
    lv = jnp.any(ctx.log.valid & sdc, axis=-2)
    window = lambda a: jax.lax.dynamic_slice_in_dim(a, ctx.start + 1, T, axis=-1)
    return window(lx), window(ly), window(lv)


@register_loss("tracking", differentiable=True)
def tracking_loss(ego: Trajectory, ctx: LossContext, classifier=None) -> Array:
    """Eq. 4: mean squared distance (m^2) of the imagined ego positions to the log."""
    T = ego.x.shape[-1]
    lx, ly, lv = _ego_log_window(ctx, T)
    d2 = (ego.x - lx[:, None]) ** 2 + (ego.y - ly[:, None]) ** 2
    mask = jnp.broadcast_to(lv[:, None], d2.shape).astype(d2.dtype)
    return jnp.sum(d2 * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)


def _scene_with_ego(ego: Trajectory, ctx: LossContext) -> Trajectory:
    """Every agent's imagined states ``(B, K, T, N)`` with the ego row from ``ego``."""
    sdc = ctx.is_sdc[:, None, :, None]  # (B, 1, N, 1)

    def put(field):
        return jnp.where(sdc, getattr(ego, field)[:, :, None, :], getattr(ctx.imagined, field))

    scene = ctx.imagined.replace(
        x=put("x"), y=put("y"), yaw=put("yaw"), vel_x=put("vel_x"), vel_y=put("vel_y")
    )
    return jax.tree.map(lambda a: jnp.moveaxis(a, -1, -2), scene)


@register_loss("classifier", differentiable=True, needs_classifier=True)
def classifier_loss(ego: Trajectory, ctx: LossContext, classifier=None) -> Array:
    """Eq. 3: mean over imagined steps of ``w_c p(collision) + w_o p(offroad)``.

    ``classifier`` is an :class:`~diffdrive.models.classifier.EventClassifierBundle` (frozen);
    the weights come with it. No logged future is read.
    """
    from diffdrive.models import classifier as classifier_lib

    scene = _scene_with_ego(ego, ctx)  # (B, K, T, N)
    rg = jax.tree.map(lambda a: a[:, None, None], ctx.roadgraph)  # (B, 1, 1, P)
    is_sdc = ctx.is_sdc[:, None, None, :]
    probs = classifier_lib.event_probabilities(classifier, scene, is_sdc, rg)  # (B, K, T, 2)
    weights = jnp.asarray(classifier.loss_weights, probs.dtype)
    return jnp.mean(jnp.sum(probs * weights, -1), axis=-1)


@register_loss("overlap", differentiable=False)
def overlap_loss(ego: Trajectory, ctx: LossContext, classifier=None) -> Array:
    """Fraction of imagined steps where the ego's box overlaps another's (exact, search only)."""
    scene = _scene_with_ego(ego, ctx)
    hits = metrics_lib.overlap(scene).value  # (B, K, T, N)
    return jnp.mean(select_by_onehot(hits, ctx.is_sdc[:, None, None, :]), axis=-1)


@register_loss("events", differentiable=False)
def events_loss(ego: Trajectory, ctx: LossContext, classifier=None) -> Array:
    """Exact overlap plus exact offroad of the ego, fractions of imagined steps (search only)."""
    b, k, t = ego.x.shape
    flat = jax.tree.map(lambda a: a.reshape(b, k * t), ego)
    off = metrics_lib.offroad(flat, ctx.roadgraph).value.reshape(b, k, t)
    return overlap_loss(ego, ctx) + jnp.mean(off, axis=-1)


# --------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EgoPolicy:
    """The ego's planning policy (route-conditioned GMM policy) and its parameters."""

    model: policy_lib.Policy
    params: Any

    @property
    def config(self):
        return self.model.config

    def step(self, view: env_lib.StepView, carry: Array):
        """One policy call: ``(carry, GaussianMixture)``."""
        return self.model.apply(self.params, policy_lib.observe(view, self.config), carry)

    def init(self, state: SimulatorState) -> Array:
        """GRU state warmed up on the logged history ``(..., H)``."""
        return policy_lib.warm_up(self.model, self.params, state)


@dataclasses.dataclass(frozen=True, eq=False)
class OthersActor:
    """The policy of the other agents.

    Attributes:
      actor: ``actor(view, carry (..., N, H), key) -> (Action (..., N, 2), carry)``.
      init: ``init(state) -> carry`` (warmed up on the log).
      name: ``policy`` or ``constant_velocity``.
      select_roadgraph: optional ``select_roadgraph(roadgraph (..., P), current (..., N))
        -> RoadgraphPoints (..., N, k)``: each agent's nearest map points, chosen once per
        plan (see :func:`agent_roadgraph`).
      act_local: optional ``act_local(view, roadgraph (..., N, k), carry, key) -> (Action,
        carry)``: :attr:`actor` observing the preselected points instead of choosing its
        nearest points from ``view.roadgraph`` at every step.
    """

    actor: env_lib.Actor
    init: Callable[[SimulatorState], Any]
    name: str = "others"
    select_roadgraph: Callable[[RoadgraphPoints, Trajectory], RoadgraphPoints] | None = None
    act_local: Callable[..., tuple[Action, Any]] | None = None

    def act(self, view: env_lib.StepView, roadgraph, carry, key):
        """One step of the others: :attr:`act_local` with ``roadgraph`` when both exist."""
        if self.act_local is not None and roadgraph is not None:
            return self.act_local(view, roadgraph, carry, key)
        return self.actor(view, carry, key)

    def local_points(self, roadgraph: RoadgraphPoints, current: Trajectory):
        """Each agent's preselected points ``(..., N, k)``, or ``None`` without a selector."""
        return None if self.select_roadgraph is None else self.select_roadgraph(roadgraph, current)


def constant_velocity_others(dynamics: dynamics_lib.DynamicsModel | None = None) -> OthersActor:
    """Stand-in others policy: every agent keeps its velocity (no recurrent state)."""
    dynamics = dynamics or dynamics_lib.InvertibleBicycleModel()
    act = env_lib.constant_velocity_actor(dynamics)
    return OthersActor(
        actor=act, init=lambda state: jnp.zeros(state.shape + (0,)), name="constant_velocity"
    )


def agent_roadgraph(roadgraph: RoadgraphPoints, current: Trajectory, k: int) -> RoadgraphPoints:
    """Each object's ``k`` nearest valid roadgraph points, nearest first.

    Args:
      roadgraph: ``(..., P)``.
      current: ``(..., N)`` (positions in metres).
      k: points per object (``<= P``).

    Returns:
      ``(..., N, k)``; with ``k = P`` every object gets the whole map (unsorted).
    """
    p = roadgraph.num_points
    n = current.x.shape[-1]
    if k > p:
        raise ValueError(f"agent_roadgraph: k={k} exceeds the {p} roadgraph points")
    batch = current.x.shape[:-1]
    if k == p:
        return jax.tree.map(lambda a: jnp.broadcast_to(a[..., None, :], batch + (n, p)), roadgraph)
    d2 = (roadgraph.x[..., None, :] - current.x[..., :, None]) ** 2 + (
        roadgraph.y[..., None, :] - current.y[..., :, None]
    ) ** 2  # (..., N, P)
    d2 = jnp.where(roadgraph.valid[..., None, :], d2, jnp.inf)
    _, idx = jax.lax.top_k(-d2, k)  # (..., N, k)
    return jax.tree.map(
        lambda a: jnp.take_along_axis(jnp.broadcast_to(a[..., None, :], batch + (n, p)), idx, -1),
        roadgraph,
    )


def features_with_agent_roadgraph(
    view: env_lib.StepView, roadgraph: RoadgraphPoints, config
) -> dict[str, Array]:
    """:func:`diffdrive.models.policy.observe_all` with preselected per-agent map points.

    Args:
      view: the step ``(..., N)``.
      roadgraph: ``(..., N, k)`` each object's points (:func:`agent_roadgraph`); all ``k``
        are observed (no nearest-point search).
      config: the policy's :class:`~diffdrive.models.config.ModelConfig`.

    Returns:
      The feature dict with batch shape ``(..., N)`` (object ``i`` observing in its frame).
      Equal to ``observe_all`` when ``roadgraph`` holds each object's current nearest
      ``config.roadgraph_top_k`` points.
    """
    from diffdrive.sim import observation

    batch_ndim = view.current.x.ndim - 1
    n = view.current.x.shape[-1]
    fc = dataclasses.replace(config.feature_config, roadgraph_top_k=roadgraph.num_points)
    egos = jnp.broadcast_to(jnp.eye(n, dtype=bool), view.current.x.shape[:-1] + (n, n))

    def one(ego, rg):
        return observation.policy_features(
            view.current,
            view.metadata,
            rg,
            view.traffic_lights,
            view.log,
            view.timestep,
            fc,
            ego=ego,
        )

    return jax.vmap(one, in_axes=batch_ndim, out_axes=batch_ndim)(egos, roadgraph)


def policy_others(model, params, config=None, sample: bool = True) -> OthersActor:
    """Others driven by a trained multi-agent policy
    (:func:`diffdrive.models.policy.make_multi_agent_actor`).

    In the imagination (and between replans) each agent observes the
    ``config.roadgraph_top_k`` map points nearest to where it stood when the plan began
    (:attr:`OthersActor.act_local`): one nearest-point search per plan instead of one per
    agent and imagined step. Agents move a few tens of metres at most in a ``T``-step
    imagination, so the set differs from the per-step nearest points only at its far edge.
    """
    make = getattr(policy_lib, "make_multi_agent_actor", None)
    if make is None:
        raise RuntimeError(
            "diffdrive.models.policy.make_multi_agent_actor is not available; use "
            "constant_velocity_others() as the others policy"
        )
    cfg = config or model.config
    actor, init = make(model, params, config, sample=sample)

    def select(roadgraph: RoadgraphPoints, current: Trajectory) -> RoadgraphPoints:
        return agent_roadgraph(roadgraph, current, min(cfg.roadgraph_top_k, roadgraph.num_points))

    def act_local(view: env_lib.StepView, roadgraph: RoadgraphPoints, carry, key):
        feats = features_with_agent_roadgraph(view, roadgraph, cfg)
        carry, gmm = model.apply(params, feats, carry)
        action = policy_lib.select_action(gmm, key, sample, None)
        return Action(data=action, valid=view.current.valid[..., None]), carry

    return OthersActor(
        actor=actor, init=init, name="policy", select_roadgraph=select, act_local=act_local
    )


# --------------------------------------------------------------------------------------
# Algorithm 1
# --------------------------------------------------------------------------------------


@struct.dataclass
class PlanOutput:
    """One plan for a batch of ``B`` scenarios.

    Attributes:
      actions: ``(B, M, 2)`` the weighted, optimised first ``M`` ego actions.
      weights: ``(B, K)`` rollout weights ``softmax(-loss / tau)``.
      loss: ``(B, K)`` planning loss of the sampled rollouts.
      loss_after: ``(B, K)`` loss of the ego's optimised actions (others' imagined motion
        held fixed); equals ``loss`` when ``eta = 0``.
      sampled_actions: ``(B, K, T, 2)`` the policy's imagined ego actions.
      optimised_actions: ``(B, K, T, 2)`` after the gradient step.
      gradient: ``(B, K, T, 2)`` ``d loss / d actions``.
      imagined: every agent's imagined states ``(B, K, N, T)``.
      ego_optimised: the ego's states under the optimised actions ``(B, K, T)``.
      ego_carry, others_carry: the policies' recurrent states after observing the real
        state the plan started from.
    """

    actions: Array
    weights: Array
    loss: Array
    loss_after: Array
    sampled_actions: Array
    optimised_actions: Array
    gradient: Array
    imagined: Trajectory
    ego_optimised: Trajectory
    ego_carry: Array
    others_carry: Any


@dataclasses.dataclass(frozen=True, eq=False)
class Planner:
    """Everything Algorithm 1 needs besides the state: config, policies, loss, dynamics.

    ``classifier``: an :class:`~diffdrive.models.classifier.EventClassifierBundle` for the
    ``classifier`` loss (frozen at test time).
    """

    config: DSSConfig
    ego: EgoPolicy
    others: OthersActor
    classifier: Any = None

    def __post_init__(self):
        loss = PLANNING_LOSSES[self.config.loss]
        if loss.needs_classifier and self.classifier is None:
            raise ValueError(f"planning loss {loss.name!r} needs a trained classifier")
        if self.ego.config.route != "waypoint":
            # The paper's ego sees only its final logged waypoint; other conditionings leak
            # the logged route into planning (allowed, but say so).
            pass

    @property
    def dynamics(self) -> dynamics_lib.DynamicsModel:
        return dynamics_lib.make_dynamics(self.config.dynamics)

    @property
    def loss(self) -> PlanningLoss:
        return PLANNING_LOSSES[self.config.loss]


def local_roadgraph(roadgraph: RoadgraphPoints, xy: Array, points: int | None) -> RoadgraphPoints:
    """The ``points`` valid roadgraph points nearest ``xy`` ``(B, 2)`` (all when fewer)."""
    if points is None or points >= roadgraph.num_points:
        return roadgraph
    return filter_topk_roadgraph_points(roadgraph, xy, points)


def _ego_xy(current: Trajectory, is_sdc: Array) -> Array:
    """The ego's position ``(..., 2)`` (m) from ``current`` ``(..., N)``."""
    return jnp.stack([select_by_onehot(current.x, is_sdc), select_by_onehot(current.y, is_sdc)], -1)


def ego_state(current: Trajectory, is_sdc: Array) -> Trajectory:
    """The ego's row of ``current`` ``(..., N) -> (...)``."""
    return jax.tree.map(lambda a: select_by_onehot(a, is_sdc).astype(a.dtype), current)


def replay_ego(dynamics, start: Trajectory, actions: Array) -> Trajectory:
    """The ego's states under ``actions`` ``(..., T, 2)`` from ``start`` ``(...)``: ``(..., T)``.

    Differentiable in ``actions`` (a ``lax.scan`` of the dynamics).
    """

    def body(cur, a):
        update = dynamics.compute_update(
            Action(data=a, valid=jnp.ones(a.shape[:-1] + (1,), bool)), cur
        )
        nxt = cur.replace(
            x=update.x, y=update.y, yaw=update.yaw, vel_x=update.vel_x, vel_y=update.vel_y
        )
        return nxt, nxt

    _, traj = jax.lax.scan(body, start, jnp.moveaxis(actions, -2, 0))
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), traj)


def _tile_k(tree, k: int):
    """Inserts a K axis after the batch axis of every array leaf ``(B, ...) -> (B, K, ...)``."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], k) + a.shape[1:]), tree)


def _combine(ego_action: Array, others: Action, is_sdc: Array) -> Action:
    """All agents' actions ``(..., N, 2)`` with the ego's row set to ``ego_action``."""
    data = jnp.where(is_sdc[..., None], ego_action[..., None, :], others.data)
    return Action(data=data, valid=jnp.ones(data.shape[:-1] + (1,), bool))


def plan(
    planner: Planner,
    view: env_lib.StepView,
    ego_carry: Array,
    others_carry: Any,
    key: Array,
    eta: Array | None = None,
    tau: Array | None = None,
    others_roadgraph: RoadgraphPoints | None = None,
) -> PlanOutput:
    """Algorithm 1 on a batch of real states.

    Nearest-point searches happen once per plan, at the real state: the imagined ego
    observes the ``roadgraph_top_k`` points nearest its start pose, each other agent those
    nearest its own start pose (:attr:`OthersActor.select_roadgraph`), for all ``T``
    imagined steps (exact at the first step; at 0.1 s steps an agent moves at most a few
    tens of metres within ``T``, which only changes the far edge of its point set).

    Args:
      planner: the :class:`Planner`.
      view: the real step ``(B, N)`` (``timestep`` scalar); its roadgraph is what the
        imagination sees (cut it with :func:`local_roadgraph` first).
      ego_carry: the ego policy's GRU state ``(B, H)`` before observing ``view``.
      others_carry: the others actor's state ``(B, N, ...)`` before observing ``view``.
      key: PRNG key.
      eta: ``(2,)`` step sizes overriding the config's (traced, so a sweep over step sizes
        shares one compilation; only used when the config's ``uses_gradients``).
      tau: scalar temperature overriding the config's (traced; 0 takes the argmin).
      others_roadgraph: ``(B, N, k)`` the others' preselected points (default: chosen
        here from ``view``).

    Returns:
      :class:`PlanOutput`.
    """
    cfg = planner.config
    dyn = planner.dynamics
    K, T, M = cfg.K, cfg.T, cfg.M
    meta = view.metadata
    is_sdc = meta.is_sdc
    # Only agents present now are imagined; the rest stay invalid (no log leakage).
    controlled = _tile_k(view.current.valid, K)
    base = view.replace(
        current=_tile_k(view.current, K),
        previous=_tile_k(view.previous, K),
        log=_tile_k(view.log, K),
        metadata=_tile_k(meta, K),
        roadgraph=_tile_k(view.roadgraph, K),
        traffic_lights=_tile_k(view.traffic_lights, K),
        road_edge_index=None,
    )
    sdc_k = base.metadata.is_sdc
    ego_rg = _tile_k(
        local_roadgraph(
            view.roadgraph, _ego_xy(view.current, is_sdc), planner.ego.config.roadgraph_top_k
        ),
        K,
    )
    if others_roadgraph is None:
        others_roadgraph = planner.others.local_points(view.roadgraph, view.current)
    others_rg = None if others_roadgraph is None else _tile_k(others_roadgraph, K)

    def body(carry, step_key):
        current, previous, t, h_ego, h_others = carry
        v = base.replace(current=current, previous=previous, timestep=t)
        k_ego, k_others = jax.random.split(step_key)
        h_ego, gmm = planner.ego.step(v.replace(roadgraph=ego_rg), h_ego)
        a_ego = policy_lib.select_action(gmm, k_ego, cfg.samples_ego, cfg.ego_mode)
        a_others, h_others = planner.others.act(v, others_rg, h_others, k_others)
        action = _combine(a_ego, a_others, sdc_k)
        nxt = dynamics_lib.step_objects(
            dyn, action, current, v.log_next, controlled, allow_object_injection=False
        )
        return (nxt, current, t + 1, h_ego, h_others), (nxt, a_ego, h_ego, h_others)

    init = (
        base.current,
        base.previous,
        view.timestep,
        _tile_k(ego_carry, K),
        _tile_k(others_carry, K),
    )
    _, (states, ego_actions, ego_hist, others_hist) = jax.lax.scan(
        body, init, jax.random.split(key, T)
    )
    imagined = jax.tree.map(lambda a: jnp.moveaxis(a, 0, -1), states)  # (B, K, N, T)
    sampled = jnp.moveaxis(ego_actions, 0, 2)  # (B, K, T, 2)
    ego_carry_next = ego_hist[0][:, 0]
    others_carry_next = jax.tree.map(lambda a: a[0][:, 0], others_hist)

    ctx = LossContext(
        log=view.log,
        start=view.timestep,
        is_sdc=is_sdc,
        imagined=imagined,
        roadgraph=view.roadgraph,
    )
    start = _tile_k(ego_state(view.current, is_sdc), K)  # (B, K)
    loss_spec = planner.loss

    def total_loss(actions):
        per_rollout = loss_spec.fn(replay_ego(dyn, start, actions), ctx, planner.classifier)
        return jnp.sum(per_rollout), per_rollout

    actions = jax.lax.stop_gradient(sampled)
    if cfg.uses_gradients:
        (_, loss), grad = jax.value_and_grad(total_loss, has_aux=True)(actions)
        grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
        step = jnp.asarray(cfg.eta if eta is None else eta, actions.dtype)
        optimised = actions - step * grad
        _, loss_after = total_loss(optimised)
    else:
        _, loss = total_loss(actions)
        grad = jnp.zeros_like(actions)
        optimised, loss_after = actions, loss
    loss = jax.lax.stop_gradient(loss)
    weights = rollout_weights(loss, cfg.tau if tau is None else tau)
    chosen = jnp.einsum("bk,bkmd->bmd", weights, optimised[:, :, :M])
    return PlanOutput(
        actions=chosen,
        weights=weights,
        loss=loss,
        loss_after=jax.lax.stop_gradient(loss_after),
        sampled_actions=actions,
        optimised_actions=optimised,
        gradient=grad,
        imagined=imagined,
        ego_optimised=replay_ego(dyn, start, optimised),
        ego_carry=ego_carry_next,
        others_carry=others_carry_next,
    )


def rollout_weights(loss: Array, tau: float | Array) -> Array:
    """``softmax(-loss / tau)`` over the last axis; ``tau = 0`` puts all weight on the argmin.

    ``tau`` may be traced. Non-finite losses get zero weight (unless every rollout's is
    non-finite, then the weights are uniform).
    """
    loss = jnp.where(jnp.isfinite(loss), loss, jnp.inf)
    tau = jnp.asarray(tau, jnp.float32)
    hard = jax.nn.one_hot(jnp.argmin(loss, axis=-1), loss.shape[-1], dtype=jnp.float32)
    logits = -loss / jnp.where(tau > 0, tau, 1.0)
    all_bad = jnp.all(~jnp.isfinite(logits), axis=-1, keepdims=True)
    soft = jax.nn.softmax(jnp.where(all_bad, 0.0, logits), axis=-1)
    return jnp.where(tau > 0, soft, hard)


# --------------------------------------------------------------------------------------
# Algorithm 2
# --------------------------------------------------------------------------------------


@struct.dataclass
class DSSActorState:
    """The control loop's actor state: the plan being executed and both recurrent states.

    ``plan`` ``(B, M, 2)``; ``step`` scalar count of executed steps (replan when
    ``step % M == 0``); ``ego_carry`` ``(B, H)``; ``others_carry`` ``(B, N, ...)``;
    ``eta`` ``(2,)`` and ``tau`` scalar: the step sizes and temperature in use (state, not
    configuration, so sweeps over them share one compilation); ``roadgraph`` ``(B, P)``
    the map cut around the ego at the last replan and ``others_roadgraph`` ``(B, N, k)``
    (or ``None``) the others' points chosen then, which the policies observe until the
    next replan.
    """

    plan: Array
    step: Array
    ego_carry: Array
    others_carry: Any
    eta: Array
    tau: Array
    roadgraph: RoadgraphPoints
    others_roadgraph: Any = None


def make_dss_actor(planner: Planner) -> tuple[env_lib.Actor, Callable]:
    """Algorithm 2 as an actor of :class:`~diffdrive.sim.env.PlanningAgentEnvironment`.

    At a replan the map is cut to the ``imagination_roadgraph_points`` points nearest the
    ego and the others' points are chosen from it; the ``M - 1`` steps until the next
    replan reuse both (no nearest-point search between replans).

    Returns:
      ``(actor, init_actor_state)``: ``actor(view, DSSActorState, key) -> (Action (B, 2),
      DSSActorState)``; ``init_actor_state(state, eta=None, tau=None)`` warms both
      policies up on the logged history of a reset state ``(B, ...)`` (``eta``/``tau``
      override the config's). The view must have one batch axis.
    """
    cfg = planner.config

    def cut(roadgraph: RoadgraphPoints, current: Trajectory, is_sdc: Array):
        rg = local_roadgraph(roadgraph, _ego_xy(current, is_sdc), cfg.imagination_roadgraph_points)
        return rg, planner.others.local_points(rg, current)

    def actor(view: env_lib.StepView, s: DSSActorState, key: Array):
        if view.current.x.ndim != 2:
            raise ValueError(
                f"DSS actor: views need exactly one batch axis (B, N), got {view.current.x.shape}"
            )

        def replan(operand):
            s, key = operand
            rg, others_rg = cut(view.roadgraph, view.current, view.metadata.is_sdc)
            local = view.replace(roadgraph=rg, road_edge_index=None)
            out = plan(planner, local, s.ego_carry, s.others_carry, key, s.eta, s.tau, others_rg)
            return out.actions, out.ego_carry, out.others_carry, rg, others_rg

        def follow(operand):
            s, key = operand
            # The policies still observe every real step between replans.
            local = view.replace(roadgraph=s.roadgraph, road_edge_index=None)
            h_ego, _ = planner.ego.step(local, s.ego_carry)
            _, h_others = planner.others.act(local, s.others_roadgraph, s.others_carry, key)
            return s.plan, h_ego, h_others, s.roadgraph, s.others_roadgraph

        index = s.step % cfg.M
        actions, h_ego, h_others, rg, others_rg = jax.lax.cond(index == 0, replan, follow, (s, key))
        action = jnp.take(actions, index, axis=1)
        new = s.replace(
            plan=actions,
            step=s.step + 1,
            ego_carry=h_ego,
            others_carry=h_others,
            roadgraph=rg,
            others_roadgraph=others_rg,
        )
        return Action(data=action, valid=jnp.ones(action.shape[:-1] + (1,), bool)), new

    def init_actor_state(state: SimulatorState, eta=None, tau=None) -> DSSActorState:
        b = state.shape[0]
        current = state.log_trajectory.at(state.timestep)
        rg, others_rg = cut(state.roadgraph_points, current, state.object_metadata.is_sdc)
        local = state.replace(roadgraph_points=rg)
        dtype = state.log_trajectory.x.dtype
        return DSSActorState(
            plan=jnp.zeros((b, cfg.M, 2), dtype),
            step=jnp.zeros((), jnp.int32),
            ego_carry=planner.ego.init(local),
            others_carry=planner.others.init(local),
            eta=jnp.asarray(cfg.eta if eta is None else eta, jnp.float32),
            tau=jnp.asarray(cfg.tau if tau is None else tau, jnp.float32),
            roadgraph=rg,
            others_roadgraph=others_rg,
        )

    return actor, init_actor_state


def make_real_environment(
    dynamics: dynamics_lib.DynamicsModel | None = None,
) -> env_lib.PlanningAgentEnvironment:
    """The real simulator of Algorithm 2: the ego follows the plan, the others replay the log."""
    return env_lib.PlanningAgentEnvironment(
        dynamics or dynamics_lib.InvertibleBicycleModel(),
        env_lib.EnvironmentConfig(metrics=("log_divergence", "overlap", "offroad")),
    )


def control_loop(
    planner: Planner,
    state: SimulatorState,
    key: Array,
    num_steps: int | None = None,
    environment: env_lib.PlanningAgentEnvironment | None = None,
    eta: Array | None = None,
    tau: Array | None = None,
) -> dict[str, Array]:
    """Algorithm 2 on a batch of un-reset scenarios ``(B, ...)``: the physical trajectory.

    Resets (11 logged warm-up steps), warms both policies up, then drives ``num_steps``
    steps (default to the end of the log: 80) replanning every ``M`` steps, in one scan.
    ``eta`` ``(2,)`` and ``tau`` override the config's (traced).

    Returns:
      Per-step records of the SDC, ``(B, S)``: ``log_divergence`` (m), ``overlap``,
      ``offroad`` (bool), ``valid``, as :func:`diffdrive.eval.aggregate.step_stats` takes
      them (add a leading mode axis); ``trajectory`` the ego's physical states
      ``(B, S + 1)``; ``actions`` ``(B, S, 2)``.
    """
    env = environment or make_real_environment()
    state = env.reset(state)
    steps = num_steps or state.num_timesteps - env.config.init_steps
    actor, init = make_dss_actor(planner)
    out = env.rollout(
        state,
        actor,
        steps,
        key=key,
        actor_state=init(state, eta, tau),
        metric_names=("log_divergence", "overlap", "offroad"),
        with_rewards=False,
    )
    ld = out.metrics["log_divergence"]
    sdc = state.object_metadata.is_sdc[..., None]
    return {
        "log_divergence": ld.value[..., 1:],
        "overlap": out.metrics["overlap"].value[..., 1:] > 0,
        "offroad": out.metrics["offroad"].value[..., 1:] > 0,
        "valid": ld.valid[..., 1:],
        "trajectory": jax.tree.map(lambda a: jnp.sum(a * sdc, axis=-2), out.trajectory),
        "actions": jnp.moveaxis(out.actions.data, -1, -2),
    }
