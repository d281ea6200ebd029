"""hyla.space: the Layout, presets of the paper's grid, the search space and exact cost accounting."""

from hyla.space.layout import ALL_MIXERS, ATTN, LayerSpec, Layout
from hyla.space.mixers import LINEAR_MIXERS, MIXER_KINDS, PAPER_MIXERS, get_mixer_kind

__all__ = ["ALL_MIXERS", "ATTN", "LINEAR_MIXERS", "MIXER_KINDS", "PAPER_MIXERS", "LayerSpec", "Layout",
           "get_mixer_kind"]
