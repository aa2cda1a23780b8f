"""Evaluation: closed-loop rollouts, metric aggregation, baselines and result tables."""
