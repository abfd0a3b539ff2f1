"""Modules over mdrnet_fast.ops; a module's state_dict is the same whichever backend runs it."""
from .correlation import MaskedCorrelationMining
from .gated_conv import GatedConv2d
from .memory import DisentangledMemory
from .partial_conv import PartialConv2d
from .region_pool import RegionAvgPool
from .spade import SPADE

__all__ = ["PartialConv2d", "GatedConv2d", "RegionAvgPool", "DisentangledMemory", "MaskedCorrelationMining",
           "SPADE"]
