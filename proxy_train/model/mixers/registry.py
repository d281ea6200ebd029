"""The mixer registry: each torch mixer class registers itself with ``@register_mixer(name)``; and the kernel paths
a linear mixer can run on CUDA (`KERNELS`). No torch here: configs name these choices without importing torch.

Keys are ``attn`` (`SoftmaxAttention`), every linear kind of ``hyla.space.mixer_kinds.MIXER_KINDS`` and ``headwise``
(the wrapper of a linear layer with softmax heads). A key's class lives in the module named after it
(``hyla.proxy_train.model.mixers.<name>``; ``attn`` in ``attention``), imported on first use, so that importing the
package does not import fla.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

from hyla.space.layout import ATTN
from hyla.space.mixer_kinds import LINEAR_MIXERS

#: Which implementation a linear mixer runs on CUDA tensors (``mixers.common.kernel_path``): ``auto``/``fla`` =
#: fla's layer (Triton kernels), ``torch`` = our forward with the PyTorch scans (no Triton compilation; vmappable),
#: ``cores`` = our forward with fla's scan kernels folded over a vmapped replica axis (``mixers.scans``: stacked
#: recall probes on a GPU).
KERNELS = ("auto", "fla", "torch", "cores")
#: The kernel paths that ``torch.func.vmap`` can batch (the probe's stacked replicas, ``probe.replicas``).
STACKABLE = ("torch", "cores")
#: registry key of the head-wise hybrid (a linear layer with softmax heads beside it)
HEADWISE = "headwise"
#: every key a class may register under: the layer mixers build_mixer accepts, then the head-wise wrapper
MIXER_NAMES: tuple[str, ...] = (ATTN, *LINEAR_MIXERS)
_MODULES: dict[str, str] = {ATTN: "attention"}  # keys whose module is not named after them
_PACKAGE = __name__.rpartition(".")[0]
_CLASSES: dict[str, type] = {}

C = TypeVar("C", bound=type)


def register_mixer(name: str) -> Callable[[C], C]:
    """Class decorator: register the class as the module of mixer ``name`` and set its ``KIND`` to ``name``."""
    if name not in (*MIXER_NAMES, HEADWISE):
        raise ValueError(f"register_mixer: unknown mixer {name!r}; add its MixerKind to hyla.space.mixer_kinds first "
                         f"(known: {', '.join(MIXER_NAMES)}, {HEADWISE})")

    def register(cls: C) -> C:
        old = _CLASSES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"register_mixer: {name!r} is already {old.__module__}.{old.__qualname__}; "
                             f"refusing {cls.__module__}.{cls.__qualname__}")
        cls.KIND = name
        _CLASSES[name] = cls
        return cls

    return register


def mixer_module(name: str) -> str:
    """The module that registers mixer ``name`` (``hyla.proxy_train.model.mixers.gla`` ...)."""
    return f"{_PACKAGE}.{_MODULES.get(name, name)}"


@contextlib.contextmanager
def quiet_fla() -> Iterator[None]:
    """Import fla in this block without its "Triton is not supported on current platform, roll back to CPU" warning
    (printed once, when fla is first imported) on a machine without CUDA: hyla runs its own PyTorch path there for
    every mixer, so the line tells a user nothing. Every other warning shows, and this one too where CUDA is
    present (there it means Triton is broken)."""
    import torch

    with warnings.catch_warnings():
        if not torch.cuda.is_available():
            warnings.filterwarnings("ignore", message="Triton is not supported on current platform", category=UserWarning)
        yield


def mixer_class(name: str) -> type:
    """The class registered for ``name`` (its module is imported on first use)."""
    if name not in _CLASSES:
        if name not in (*MIXER_NAMES, HEADWISE):
            raise KeyError(f"unknown mixer {name!r}; expected one of {', '.join(MIXER_NAMES)}")
        with quiet_fla():
            importlib.import_module(mixer_module(name))
        if name not in _CLASSES:
            raise LookupError(f"{mixer_module(name)} registers no class for {name!r} "
                              f"(decorate it with @register_mixer({name!r}))")
    return _CLASSES[name]
