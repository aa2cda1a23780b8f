"""Simulator core: state datatypes, dynamics, environments, metrics, observations."""
