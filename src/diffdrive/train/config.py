"""Training configuration (APG and behaviour cloning): a frozen dataclass and presets.

Defaults follow the papers' code (``reference_implementations.md`` section 1): WTA
mixture training, detached simulator state and observation, Huber loss on the SDC's
(x, y, yaw, vel_x, vel_y), Adam (eps 1e-5) with global-norm clipping 0.5 and a one-cycle
cosine learning rate (peak 1e-3, div 25, final div 100), 80 rollout steps after Waymax's
11 warm-up steps. Presets: ``tiny`` (tests), ``default`` (2 CPU cores), ``paper``.
:meth:`TrainConfig.with_awm_recipe` applies the AWM paper's recipe.
"""

from __future__ import annotations

import dataclasses
import math

from diffdrive.models.config import ModelConfig
from diffdrive.sim.datatypes import INIT_STEPS, NUM_TIMESTEPS
from diffdrive.sim.dynamics import DYNAMICS_REGISTRY

ALGORITHMS = ("apg", "bc", "awm")
ACTION_SELECTIONS = ("wta", "sample", "mean")
BC_LOSSES = ("nll", "wta")
SETTINGS = ("planning", "multi_agent")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a policy is trained.

    Attributes:
      algorithm: ``apg`` (roll out in the differentiable simulator) or ``bc`` (behaviour
        cloning of the log's inverse-kinematics actions on log replay).
      model: the :class:`~diffdrive.models.config.ModelConfig`.
      seed: seeds the parameters, the data order and every training key.
      epochs: passes over the dataset.
      batch_size: scenarios per step (cut to the dataset size when larger).
      dynamics: registry name of the training dynamics (``smooth_bicycle``: the papers'
        gradient-friendly bicycle; ``bicycle``: Waymax's).
      dynamics_kwargs: keyword arguments of the dynamics model, as ``(name, value)`` pairs.
      init_steps: logged warm-up steps (Waymax's 11: the GRU consumes the first 10, the
        rollout starts at step ``init_steps - 1``).
      rollout_steps: simulated steps per scenario (80 after warm-up for 91-step logs).
      num_timesteps: steps every log is cut or padded to.
      detach: stop gradients of the simulator state and observation at each step
        (gradients reach earlier steps only through the GRU state); ``False`` is the
        non-detached ablation (back-propagation through the whole rollout).
      action_selection: ``wta`` (winner-take-all: each component's mean is stepped, the
        one landing nearest the next log state is executed, gets the gradient and the
        cross-entropy target), ``sample`` (a mixture sample) or ``mean`` (the most likely
        component's mean).
      sample_actions: with ``wta``, execute a reparameterised sample of the winner (else
        its mean).
      wta_weight: weight of the mixture-weight cross-entropy (WTA, APG and BC).
      entropy_weight: weight of the categorical-entropy bonus (AWM recipe; 0 disables).
      huber_delta: Huber transition point of the trajectory loss.
      state_weights: weights of the (x, y, yaw, vel_x, vel_y) Huber terms.
      incremental: snap the simulated SDC back to the log when it drifts more than the
        reset threshold (incremental training).
      reset_threshold_start: threshold (m) at the start of training.
      reset_threshold_end: threshold (m) reached at ``reset_decay_fraction`` of training
        (geometric growth, so resets become rarer); no resets after that point.
      reset_decay_fraction: fraction of the training steps with resets.
      bc_loss: ``nll`` (mixture negative log-likelihood) or ``wta`` (NLL of the component
        nearest the expert action plus the weight cross-entropy).
      peak_lr: one-cycle peak learning rate.
      pct_start: fraction of the steps spent warming the learning rate up.
      div_factor: initial learning rate is ``peak_lr / div_factor``.
      final_div_factor: final learning rate is ``initial / final_div_factor``.
      adam_eps: Adam epsilon.
      grad_clip: global-norm gradient clipping.
      checkpoint_every: steps between checkpoints (one is also written per epoch).
      keep_checkpoints: checkpoints kept on disk.
      max_objects: object slots of the training batches (``None``: the dataset's largest).
      num_roadgraph_points: roadgraph points of the batches (``None``: the dataset's
        largest); fewer keeps those nearest the SDC (:func:`diffdrive.data.select.pad_roadgraph`).
      setting: ``planning`` (the policy drives the SDC, the rest replays the log) or
        ``multi_agent`` (it drives every object valid at the last warm-up step, each in
        its own ego frame; :mod:`diffdrive.train.multi_agent`). Both agent encoders pool
        over any agent count; :func:`train_config` picks the transformer (the APG paper's
        multi-agent model) when no model is given, the per-agent MLP is the DSS paper's
        other-agents policy.
      train_agents: multi-agent training drives at most this many objects per scenario,
        those nearest the SDC (SDC included), the others replay the log (``None``: all
        controlled objects). Evaluation always drives every valid object.
      awm_head_weights: ``awm`` only: weights of the world-model head losses (odometry,
        planner, inverse state, latent next feature, reward); the heads read detached
        inputs, so these never move the policy (:mod:`diffdrive.train.awm`).
      overlap_weight: ``awm`` only: weight of the differentiable Gaussian overlap cost
        (AWM Eq. 6-9) of the SDC's next state, which does train the policy; 0 disables.
    """

    algorithm: str = "apg"
    model: ModelConfig = ModelConfig()
    seed: int = 0
    epochs: int = 20
    batch_size: int = 16
    dynamics: str = "smooth_bicycle"
    dynamics_kwargs: tuple[tuple[str, float | bool], ...] = ()
    init_steps: int = INIT_STEPS
    rollout_steps: int = NUM_TIMESTEPS - INIT_STEPS
    num_timesteps: int = NUM_TIMESTEPS
    detach: bool = True
    action_selection: str = "wta"
    sample_actions: bool = True
    wta_weight: float = 1.0
    entropy_weight: float = 0.0
    huber_delta: float = 1.0
    state_weights: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    incremental: bool = True
    reset_threshold_start: float = 1.0
    reset_threshold_end: float = 10.0
    reset_decay_fraction: float = 0.5
    bc_loss: str = "nll"
    peak_lr: float = 1e-3
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 100.0
    adam_eps: float = 1e-5
    grad_clip: float = 0.5
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_objects: int | None = None
    num_roadgraph_points: int | None = 2000
    setting: str = "planning"
    train_agents: int | None = None
    awm_head_weights: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    overlap_weight: float = 0.0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.action_selection not in ACTION_SELECTIONS:
            raise ValueError(f"action_selection must be one of {ACTION_SELECTIONS}")
        if self.bc_loss not in BC_LOSSES:
            raise ValueError(f"bc_loss must be one of {BC_LOSSES}")
        if self.dynamics not in DYNAMICS_REGISTRY:
            raise ValueError(
                f"unknown dynamics {self.dynamics!r}; one of {list(DYNAMICS_REGISTRY)}"
            )
        if self.init_steps < 1 or self.rollout_steps < 1:
            raise ValueError("init_steps and rollout_steps must be >= 1")
        if self.init_steps + self.rollout_steps > self.num_timesteps:
            raise ValueError(
                f"init_steps + rollout_steps = {self.init_steps + self.rollout_steps} exceeds "
                f"the {self.num_timesteps} logged steps"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.reset_threshold_start <= 0 or self.reset_threshold_end <= 0:
            raise ValueError("reset thresholds must be positive")
        if not 0.0 <= self.reset_decay_fraction <= 1.0:
            raise ValueError("reset_decay_fraction must be in [0, 1]")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if len(self.state_weights) != 5:
            raise ValueError("state_weights needs 5 entries (x, y, yaw, vel_x, vel_y)")
        if len(self.awm_head_weights) != 5 or min(self.awm_head_weights) < 0:
            raise ValueError(
                "awm_head_weights needs 5 non-negative entries (odometry, planner, "
                f"inverse_state, latent, reward), got {self.awm_head_weights}"
            )
        if self.overlap_weight < 0:
            raise ValueError(f"overlap_weight must be >= 0, got {self.overlap_weight}")
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        if self.train_agents is not None and self.train_agents < 1:
            raise ValueError(f"train_agents must be >= 1 or None, got {self.train_agents}")
        if self.setting == "multi_agent" and self.algorithm not in ("apg", "bc"):
            raise ValueError(f"the multi_agent setting trains apg or bc, not {self.algorithm!r}")

    def make_dynamics(self):
        """The training dynamics model."""
        from diffdrive.sim.dynamics import make_dynamics

        return make_dynamics(self.dynamics, **dict(self.dynamics_kwargs))

    def with_awm_recipe(
        self, entropy_weight: float = 0.01, log_std_floor: float = -3.0, epoch_factor: float = 0.5
    ) -> TrainConfig:
        """The AWM paper's recipe on top of this config.

        Categorical-entropy regularisation of the mixture weights, a variance floor (the
        log-std clip raised to ``log_std_floor``) and fewer epochs (``epoch_factor``). The
        paper gives no values; these defaults are this project's choice.
        """
        model = dataclasses.replace(self.model, log_std_min=log_std_floor)
        epochs = max(1, math.ceil(self.epochs * epoch_factor))
        return dataclasses.replace(self, model=model, entropy_weight=entropy_weight, epochs=epochs)

    @classmethod
    def tiny(cls, **overrides) -> TrainConfig:
        """Tests and smoke runs: tiny model, a few short epochs."""
        base = cls(
            model=ModelConfig.tiny(),
            epochs=2,
            batch_size=4,
            checkpoint_every=10,
            num_roadgraph_points=None,
            peak_lr=3e-3,
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def default(cls, **overrides) -> TrainConfig:
        """Sized for 2 CPU cores (GRU 128, 32 agents, 256 observed roadgraph points)."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def paper(cls, **overrides) -> TrainConfig:
        """The papers' settings: paper model, batch 256, 80 epochs, 128 objects."""
        base = cls(
            model=ModelConfig.paper(),
            epochs=80,
            batch_size=256,
            max_objects=128,
            num_roadgraph_points=20000,
            checkpoint_every=500,
        )
        return dataclasses.replace(base, **overrides)


PRESETS = ("tiny", "default", "paper")


def train_config(preset: str = "default", **overrides) -> TrainConfig:
    """A preset (``tiny``, ``default``, ``paper``) with field overrides.

    ``setting="multi_agent"`` without a ``model`` takes the preset's model with the agent
    transformer.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; choose one of {PRESETS}")
    if overrides.get("setting") == "multi_agent" and "model" not in overrides:
        model = getattr(ModelConfig, preset)()
        overrides["model"] = dataclasses.replace(model, agent_encoder="transformer")
    return getattr(TrainConfig, preset)(**overrides)
