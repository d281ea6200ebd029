"""hyla.space: the Layout, presets of the paper's grid, the search space and exact cost accounting."""

from hyla.space.cost import (LayerMemory, MemoryReport, ParamCount, flops_per_token, inference_memory, layer_memory,
                             mixer_params, param_count)
from hyla.space.layout import ALL_MIXERS, ATTN, LayerSpec, Layout
from hyla.space.mixer_kinds import LINEAR_MIXERS, MIXER_KINDS, PAPER_MIXERS, MixerFormula, get_mixer_kind
from hyla.space.presets import SCALES, Scale, at_scale, attention_at, get_scale, load_layout, paper_grid, resolve_preset
from hyla.space.search_space import SearchSpace, constraint_values, layout_to_params, load_space, suggest_layout

__all__ = ["ALL_MIXERS", "ATTN", "LINEAR_MIXERS", "MIXER_KINDS", "PAPER_MIXERS", "LayerMemory", "LayerSpec", "Layout",
           "MemoryReport", "MixerFormula", "ParamCount", "flops_per_token", "get_mixer_kind", "inference_memory",
           "layer_memory", "mixer_params", "param_count", "SCALES", "Scale", "at_scale", "attention_at", "get_scale",
           "load_layout", "paper_grid", "resolve_preset", "SearchSpace", "constraint_values", "layout_to_params",
           "load_space", "suggest_layout"]
