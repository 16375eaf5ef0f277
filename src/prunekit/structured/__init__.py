"""Structured pruning: remove whole channels, neurons and heads, and rebuild a smaller model.

``groups`` shows what must be removed together; ``prune_channels`` removes it and rebuilds the
modules; ``drop_blocks`` removes whole repeated blocks (depth); ``count_macs_params`` measures the result. How coupling is found:
:mod:`prunekit.structured.trace`; what may shrink (``include`` / ``exclude``):
:mod:`prunekit.structured.select`; how units are scored (element criteria reduced per unit):
:mod:`prunekit.structured.scores`.
"""

from prunekit.structured.attention import HeadPrunedMultiheadAttention
from prunekit.structured.depth import DepthReport, block_influence, drop_blocks
from prunekit.structured.groups import Group, groups
from prunekit.structured.macs import count_macs_params
from prunekit.structured.rebuild import StructuredReport, prune_channels
from prunekit.structured.scores import CRITERIA, ChannelCriterion, UnitCriterion
from prunekit.structured.storage import load, save

__all__ = ["CRITERIA", "ChannelCriterion", "DepthReport", "Group", "HeadPrunedMultiheadAttention", "StructuredReport", "UnitCriterion",
           "block_influence", "count_macs_params", "drop_blocks", "groups", "load", "prune_channels", "save"]
