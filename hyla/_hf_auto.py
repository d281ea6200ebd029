"""``import hyla`` registers ``model_type="hyla"`` with transformers' Auto classes, lazily.

``import hyla`` must stay light (``hyla space show`` needs neither torch nor transformers), yet
``AutoModelForCausalLM.from_pretrained(export_dir)`` must work after it. So nothing is imported here: `install`
puts a finder on ``sys.meta_path`` that waits for ``transformers.models.auto.configuration_auto`` (the module
defining ``AutoConfig``, imported the first time any Auto class is touched) and, right after that module runs,
registers `hyla.proxy_train.model.hf_config.HylaConfig` in it. The model class follows when the first `HylaConfig` is
built: `_register` sets ``HylaConfig.after_build`` to `_import_model`, whose import of ``hyla.proxy_train.model.hf``
registers `HylaForCausalLM`. When transformers' Auto module is already imported, `install` registers at once.

Only the config is registered from the hook, never the model: fla imports transformers' Auto classes while it is
being imported itself, and importing hyla's mixers (fla subclasses) at that moment would re-enter a half-imported
fla.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

_TARGET = "transformers.models.auto.configuration_auto"


def _import_model() -> None:
    """Import ``hyla.proxy_train.model.hf`` (torch, fla, hyla's mixers) once; it registers `HylaForCausalLM`."""
    if "hyla.proxy_train.model.hf" not in sys.modules:
        import hyla.proxy_train.model.hf  # noqa: F401


def _register(module: ModuleType) -> None:
    from hyla.proxy_train.model.hf_config import HylaConfig

    module.AutoConfig.register("hyla", HylaConfig, exist_ok=True)
    HylaConfig.after_build = _import_model


class _AutoConfigFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of `_TARGET` so that `_register` runs after it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            _register(module)

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]  (this spec's own loader)
        return spec


def install() -> None:
    """Register now if transformers' Auto module is loaded, else when it loads (idempotent)."""
    if _TARGET in sys.modules:
        _register(sys.modules[_TARGET])
    elif not any(isinstance(f, _AutoConfigFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoConfigFinder())
