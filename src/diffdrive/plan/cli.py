"""``diffdrive plan mpc|dss``: test-time planning with a trained policy.

Each planner module contributes its subcommand through ``add_parser(sub)``; the group
plugs into :mod:`diffdrive.cli` with ``register_group("plan", GROUP_HELP, register)``.
"""

from __future__ import annotations

import argparse

GROUP_HELP = "test-time planning: world-model MPC (mpc) or differentiable simulator search (dss)"


def register(sub: argparse._SubParsersAction) -> None:
    """Adds ``mpc`` and ``dss`` to the ``plan`` group's subparsers."""
    from diffdrive.plan import dss_cli, mpc_cli

    mpc_cli.add_parser(sub)
    dss_cli.add_parser(sub)
