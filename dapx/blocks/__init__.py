"""Prefect block types of DAPX (``prefect block register -m dapx.blocks`` registers them)."""

from dapx.blocks.node import ORCHESTRATOR_KEY_BLOCK, ProxmoxNode
from dapx.blocks.notifications import Notifications

__all__ = ["ORCHESTRATOR_KEY_BLOCK", "Notifications", "ProxmoxNode"]
