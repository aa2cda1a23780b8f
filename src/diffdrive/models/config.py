"""Model configuration: one frozen dataclass and the ``tiny`` / ``default`` / ``paper`` presets.

The ``paper`` preset follows the papers' code (``reference_implementations.md`` section 1):
GRU 512, a 6-component Gaussian mixture over (acceleration, curvature) with log-std clipped
to [-5, 2], per-modality encoders fused by LayerNorm + concat + 2 x 512 Dense, a PointNet
roadgraph encoder (point width 8, max-pooled per type, 20 x 8 -> 256), 2000 roadgraph
points and 128 agents. ``default`` trains on 2 CPU cores; ``tiny`` is for tests.
"""

from __future__ import annotations

import dataclasses

from diffdrive.sim import observation

AGENT_ENCODERS = ("mlp", "transformer")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the recurrent GMM policy.

    Attributes:
      hidden_size: GRU state size.
      num_components: Gaussian mixture components.
      action_dim: action size (2: acceleration m/s^2, curvature 1/m).
      action_scale: physical size of one network unit per action dimension; means are
        ``scale * raw`` and log-stds ``raw + log(scale)`` before clipping.
      log_std_min: lower clip of the (physical) log-std; raising it is the AWM recipe's
        variance floor.
      log_std_max: upper clip of the log-std.
      agent_encoder: ``mlp`` (per-agent MLP + masked max-pool) or ``transformer``
        (agents attend to each other, learned queries pool them; any agent count).
      agent_widths: per-agent MLP widths (the last is the agent feature size).
      transformer_width: token width of the agent transformer.
      transformer_layers: self-attention blocks before the pooling block.
      transformer_heads: attention heads.
      transformer_queries: learned queries of the pooling block.
      roadgraph_point_widths: PointNet per-point MLP widths (the last is the pooled width).
      roadgraph_width: Dense width after max-pooling per road type.
      traffic_light_widths: per-light MLP widths (max-pooled over lights).
      ego_width: ego-speed encoder width.
      route_width: route encoder width.
      fusion_width: width of the two Dense layers after concatenation.
      head_width: hidden width of the mixture head.
      roadgraph_top_k: nearest roadgraph points observed (cut to the map size if larger).
      max_agents: nearest other agents observed (``None``: all object slots).
      route: route conditioning ``none``, ``heading`` or ``waypoint``.
      heading_radius: metres ahead for ``heading`` route conditioning.
    """

    hidden_size: int = 128
    num_components: int = 6
    action_dim: int = 2
    action_scale: tuple[float, ...] = (1.0, 0.05)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    agent_encoder: str = "mlp"
    agent_widths: tuple[int, ...] = (32, 128)
    transformer_width: int = 64
    transformer_layers: int = 2
    transformer_heads: int = 4
    transformer_queries: int = 4
    roadgraph_point_widths: tuple[int, ...] = (32, 8)
    roadgraph_width: int = 128
    traffic_light_widths: tuple[int, ...] = (32, 64)
    ego_width: int = 64
    route_width: int = 64
    fusion_width: int = 256
    head_width: int = 256
    roadgraph_top_k: int = 256
    max_agents: int | None = 32
    route: str = "heading"
    heading_radius: float = 10.0

    def __post_init__(self):
        if self.agent_encoder not in AGENT_ENCODERS:
            raise ValueError(f"agent_encoder must be one of {AGENT_ENCODERS}")
        if len(self.action_scale) != self.action_dim:
            raise ValueError("action_scale needs one entry per action dimension")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("log_std_min must be below log_std_max")
        if self.num_components < 1 or self.hidden_size < 1:
            raise ValueError("num_components and hidden_size must be >= 1")
        if self.transformer_width % self.transformer_heads:
            raise ValueError("transformer_width must be divisible by transformer_heads")

    @property
    def feature_config(self) -> observation.FeatureConfig:
        """The :class:`~diffdrive.sim.observation.FeatureConfig` the policy observes."""
        return observation.FeatureConfig(
            roadgraph_top_k=self.roadgraph_top_k,
            max_agents=self.max_agents,
            route=self.route,
            heading_radius=self.heading_radius,
        )

    @classmethod
    def tiny(cls) -> ModelConfig:
        """Every dimension shrunk (tests)."""
        return cls(
            hidden_size=32,
            agent_widths=(16, 32),
            transformer_width=16,
            transformer_layers=1,
            transformer_heads=2,
            transformer_queries=2,
            roadgraph_point_widths=(16, 8),
            roadgraph_width=32,
            traffic_light_widths=(16,),
            ego_width=16,
            route_width=16,
            fusion_width=64,
            head_width=64,
            roadgraph_top_k=64,
            max_agents=8,
        )

    @classmethod
    def default(cls) -> ModelConfig:
        """Sized to train on 2 CPU cores (GRU 128, 256 roadgraph points, 32 agents)."""
        return cls()

    @classmethod
    def paper(cls) -> ModelConfig:
        """The papers' sizes (GRU 512, widths 512, 2000 roadgraph points, 128 agents)."""
        return cls(
            hidden_size=512,
            agent_widths=(32, 256),
            transformer_width=128,
            transformer_layers=2,
            transformer_heads=4,
            transformer_queries=8,
            roadgraph_point_widths=(8,),
            roadgraph_width=256,
            traffic_light_widths=(128,),
            ego_width=128,
            route_width=64,
            fusion_width=512,
            head_width=512,
            roadgraph_top_k=2000,
            max_agents=128,
        )


PRESETS = ("tiny", "default", "paper")


def model_config(preset: str = "default", **overrides) -> ModelConfig:
    """A preset (``tiny``, ``default``, ``paper``) with field overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {PRESETS}")
    cfg = getattr(ModelConfig, preset)()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
