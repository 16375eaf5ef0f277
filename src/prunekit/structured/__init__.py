"""Structured pruning: remove whole channels, neurons and heads, and rebuild a smaller model.

``groups`` shows what must be removed together; ``prune_channels`` removes it and rebuilds the
modules; ``count_macs_params`` measures the result. How coupling is found:
:mod:`prunekit.structured.trace`; what may shrink (``include`` / ``exclude``):
:mod:`prunekit.structured.select`; how units are scored (element criteria reduced per unit):
:mod:`prunekit.structured.scores`.
"""

from prunekit.structured.attention import HeadPrunedMultiheadAttention
from prunekit.structured.groups import Group, groups
from prunekit.structured.macs import count_macs_params
from prunekit.structured.rebuild import StructuredReport, prune_channels
from prunekit.structured.scores import CRITERIA, ChannelCriterion, UnitCriterion
from prunekit.structured.storage import load, save

__all__ = ["CRITERIA", "ChannelCriterion", "Group", "HeadPrunedMultiheadAttention", "StructuredReport", "UnitCriterion",
           "count_macs_params", "groups", "load", "prune_channels", "save"]
