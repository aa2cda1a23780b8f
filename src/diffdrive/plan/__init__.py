"""Test-time planners over the simulator and learned models: MPC with world-model heads
(AWM, :mod:`diffdrive.plan.mpc`) and differentiable simulator search (DSS,
:mod:`diffdrive.plan.dss`)."""
