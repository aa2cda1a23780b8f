"""diffdrive: a differentiable, Waymax-compatible driving simulator in JAX."""

__version__ = "0.1.0"
