"""The on-disk cache of measurements that every trial of a study shares (teacher, capacity curves).

Entries live under ``cache_dir()``: the ``root`` argument, else ``$HYLA_CACHE_DIR``, else ``~/.cache/hyla``; on a
cluster, point it at a shared file system. An entry is named by the content hash of its recipe (`content_key`:
every input that decides the result, including a code-version string), so a changed recipe never reads a stale
entry and an unchanged one is computed once. A file lock (``filelock``) per entry makes concurrent workers
wait for the one that computes it instead of computing it twice.

Public API (stable): ``ENV_VAR``, ``cache_dir(root=None)``, ``content_key(recipe)``,
``entry_path(kind, recipe, suffix, root=None)``, ``cached_json(kind, recipe, compute, root=None)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

ENV_VAR = "HYLA_CACHE_DIR"


def cache_dir(root: str | Path | None = None) -> Path:
    """The cache directory: ``root``, else ``$HYLA_CACHE_DIR``, else ``~/.cache/hyla`` (created)."""
    path = Path(root or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "hyla").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_key(recipe: Mapping[str, Any]) -> str:
    """Hash of a JSON-able recipe (key order does not matter): 16 hex digits of its SHA-256."""
    text = json.dumps(recipe, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_path(kind: str, recipe: Mapping[str, Any], suffix: str, root: str | Path | None = None) -> Path:
    """Where the entry of ``recipe`` lives: ``<cache_dir>/<kind>/<content_key><suffix>`` (folder created)."""
    folder = cache_dir(root) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{content_key(recipe)}{suffix}"


def cached_json(kind: str, recipe: Mapping[str, Any], compute: Callable[[], dict[str, Any]],
                root: str | Path | None = None) -> tuple[dict[str, Any], bool]:
    """The cached result of ``recipe``, computing and storing it first if absent (under the entry's lock).

    Returns:
        ``(result, hit)``: ``hit`` is True when the entry was already on disk.
    """
    path = entry_path(kind, recipe, ".json", root)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return json.loads(path.read_text())["result"], True
        result = compute()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"recipe": recipe, "result": result}, default=str) + "\n")
        tmp.replace(path)
        return result, False
