"""hyla: search hybrid linear-attention LM layouts (space -> proxy_train -> search -> analysis).

Importing hyla is cheap (no torch, no transformers) and makes transformers' Auto classes know ``model_type="hyla"``
once they load: ``import hyla`` then ``AutoModelForCausalLM.from_pretrained(export_dir)`` (see `hyla._hf_auto`).
"""

from __future__ import annotations

from hyla import _hf_auto

_hf_auto.install()
