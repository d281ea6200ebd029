"""LM text for proxy trainings: document sources, a train/val split by document, tokenizers and packing.

Sources (``TextConfig.source``):

- ``"stdlib"``: the Python standard library's own ``.py`` files (``sysconfig.get_paths()["stdlib"]``, sorted by
  relative path, ``site-packages``/``dist-packages`` excluded). A real code corpus present on every machine, so a
  proxy run never needs the network.
- ``"wikitext2-sample"``: English prose shipped with hyla (``hyla/data/wikitext2_sample.txt``: the first 22
  articles of WikiText-2's validation split, ~300 KB, CC BY-SA 3.0; source and licence in ``hyla/data/README.md``),
  one document per article. For examples and tests that want prose without a download.
- a local path: a file or a directory (searched recursively, files sorted) of ``.txt``/``.jsonl``/``.json``/
  ``.parquet`` files, loaded through ``datasets.load_dataset("text"|"json"|"parquet", data_files=...)``.
  In a directory every ``.txt`` file is one document. A single ``.txt`` file is split: WikiText-style files
  (lines like `` = Title = ``) into articles at each top-level title, any other file into blank-line paragraphs.
  JSON/parquet rows are documents, their text in ``text_field``.
- anything else is a hub dataset name: ``datasets.load_dataset(name, config, split=split, streaming=True)``,
  the first ``max_docs`` documents cached as jsonl under ``cache_dir`` so later runs are offline.

``max_docs`` keeps the first documents (in the order above) before the split. The validation set is a seeded
random ``val_fraction`` of the documents (at least one), so no document is in both sets.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import socket
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from hyla.config import ConfigError
from hyla.proxy_train.train.config import LOCAL_SUFFIXES, SAMPLE, TextConfig


class HubUnreachable(ConfigError):
    """A text source or tokenizer that only the Hugging Face hub has, while the hub cannot be reached from here
    (it may be reachable where the run goes: ``hyla train --dry-run`` reports it as unchecked)."""


# A WikiText article title: " = Title = " (sub-sections use " = = Title = = " and must not split).
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


# --------------------------------------------------------------------------------------------- documents


def load_documents(cfg: TextConfig) -> tuple[list[str], list[str]]:
    """Load the documents of ``cfg`` and split them by document into (train, val), fixed by ``cfg.seed``.

    Raises:
        ConfigError: missing path, unreachable hub, a missing text field, or too few documents to split.
    """
    docs = _read_source(cfg)
    docs = [d for d in docs if d.strip()]
    if cfg.max_docs is not None:
        docs = docs[: cfg.max_docs]
    if not docs:
        raise ConfigError(f"text.source: {cfg.source!r} has no non-empty documents")
    if cfg.val_fraction == 0.0:
        return docs, []
    if len(docs) < 2:
        raise ConfigError(f"text.source: {cfg.source!r} has {len(docs)} document; a train/val split needs >= 2 "
                          "(set val_fraction: 0 or add documents)")
    n_val = min(len(docs) - 1, max(1, round(cfg.val_fraction * len(docs))))
    val_idx = set(random.Random(cfg.seed).sample(range(len(docs)), n_val))
    # Both sets keep corpus order: the split is random, the reading order stays reproducible.
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def sample_path() -> Path:
    """The prose sample shipped with hyla (text source ``wikitext2-sample``)."""
    from importlib.resources import files

    return Path(str(files("hyla") / "data" / "wikitext2_sample.txt"))


def _read_source(cfg: TextConfig) -> list[str]:
    if cfg.source == "stdlib":
        return stdlib_documents(cfg.max_docs)
    if cfg.source == SAMPLE:
        return local_documents(sample_path(), cfg.text_field)
    path = Path(cfg.source).expanduser()
    if path.exists():
        return local_documents(path, cfg.text_field)
    check_text_source(cfg)  # a missing local path: one line
    return hub_documents(cfg)


def check_text_source(cfg: TextConfig) -> None:
    """Refuse, without reading a document, a source that cannot be read here: a missing local path, a file of
    another type, a folder without text files, a hub dataset with neither a cache nor a reachable hub. `hyla train`
    and the search run it before Ray starts.

    Raises:
        ConfigError: one line naming the source and what is allowed.
    """
    path = Path(cfg.source).expanduser()
    if cfg.source in ("stdlib", SAMPLE) or (path.exists() and _local_files(path)):
        return
    if cfg.source.startswith(("/", ".", "~")) or cfg.source.endswith(LOCAL_SUFFIXES):
        raise ConfigError(f"text.source: path {cfg.source!r} does not exist; expected 'stdlib', {SAMPLE!r} (prose "
                          "shipped with hyla), an existing file or directory, or a hub dataset name")
    if not hub_cache_path(cfg).is_file() and not _hub_reachable():
        raise _offline(cfg)


def _offline(cfg: TextConfig) -> ConfigError:
    return HubUnreachable(f"text.source: {cfg.source!r} is no local path and the hub could not be reached "
                          f"(offline, no cache at {hub_cache_path(cfg)}); use a local path (file or directory of "
                          f".txt/.jsonl/.json/.parquet), 'stdlib' or {SAMPLE!r}")


def stdlib_documents(max_docs: int | None = None) -> list[str]:
    """The standard library's ``.py`` files (sorted by relative path), read as UTF-8 with replacement."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune installed packages while walking: site-packages may hold gigabytes (torch) and differs per machine
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    files.sort(key=lambda p: p.relative_to(root).parts)
    docs: list[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            docs.append(text)
            if max_docs is not None and len(docs) >= max_docs:
                break
    return docs


def _local_files(path: Path) -> list[Path]:
    """The text files of a local source (a file, or a folder's files sorted); refuses anything else."""
    if path.is_file() and path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"text.source: {str(path)!r} has suffix {path.suffix!r}; "
                          f"expected one of {', '.join(LOCAL_SUFFIXES)}")
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in LOCAL_SUFFIXES)
    if not files:
        raise ConfigError(f"text.source: directory {str(path)!r} has no {'/'.join(LOCAL_SUFFIXES)} files")
    return files


def local_documents(path: Path, text_field: str = "text") -> list[str]:
    """Documents of a local file or directory (rules in the module docstring)."""
    files = _local_files(path)
    if path.is_file():
        return split_text_file(_load_txt(files)[0]) if path.suffix == ".txt" else _load_table(files, text_field)
    txt = [f for f in files if f.suffix == ".txt"]
    tables = [f for f in files if f.suffix != ".txt"]
    return (_load_txt(txt) if txt else []) + (_load_table(tables, text_field) if tables else [])


def split_text_file(text: str) -> list[str]:
    """Split one big text into documents: WikiText articles if it has `` = Title = `` lines, else paragraphs."""
    lines = text.splitlines()
    if any(_WIKI_TITLE.match(line) for line in lines):
        articles: list[list[str]] = []
        for line in lines:
            if _WIKI_TITLE.match(line) or not articles:
                articles.append([])
            articles[-1].append(line)
        return ["\n".join(a).strip() + "\n" for a in articles if "\n".join(a).strip()]
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """``datasets`` without its progress bars (hyla has its own), restored afterwards."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if was:
            datasets.enable_progress_bars()


def _load_txt(files: Sequence[Path]) -> list[str]:
    with _quiet_datasets() as datasets:
        # sample_by="document": one row per file, in data_files order.
        ds = datasets.load_dataset("text", data_files=[str(f) for f in files], sample_by="document", split="train")
    return list(ds["text"])


def _load_table(files: Sequence[Path], text_field: str) -> list[str]:
    builder = "parquet" if all(f.suffix == ".parquet" for f in files) else "json"
    if builder == "json" and any(f.suffix == ".parquet" for f in files):
        return _load_table([f for f in files if f.suffix != ".parquet"], text_field) + _load_table(
            [f for f in files if f.suffix == ".parquet"], text_field)
    with _quiet_datasets() as datasets:
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    if text_field not in ds.column_names:
        raise ConfigError(f"text.text_field: {text_field!r} is not a column of {files[0]}; "
                          f"columns: {', '.join(ds.column_names)}")
    return [str(t) for t in ds[text_field] if t is not None]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick offline check so a missing network fails in seconds instead of hanging in retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cache_path(cfg: TextConfig) -> Path:
    """The jsonl file caching the streamed hub documents of ``cfg``."""
    from hyla.cache_dirs import cache_root

    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root() / "text"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.source}--{cfg.config or 'default'}--{cfg.split}")
    return root / f"{safe}--{cfg.max_docs or 'all'}.jsonl"


def hub_documents(cfg: TextConfig) -> list[str]:
    """Stream the first ``max_docs`` documents of a hub dataset, cached as jsonl (offline afterwards)."""
    cache = hub_cache_path(cfg)
    if cache.is_file():
        with cache.open(encoding="utf-8") as fh:
            return [json.loads(line)["text"] for line in fh if line.strip()]
    if not _hub_reachable():
        raise _offline(cfg)
    if cfg.max_docs is None:
        raise ConfigError(f"text.max_docs: null with hub dataset {cfg.source!r}; set a number of documents to stream")
    import datasets

    try:
        stream = datasets.load_dataset(cfg.source, cfg.config, split=cfg.split, streaming=True)
        docs: list[str] = []
        for row in stream:
            if cfg.text_field not in row:
                raise ConfigError(f"text.text_field: {cfg.text_field!r} is not a field of {cfg.source!r}; "
                                  f"fields: {', '.join(row)}")
            docs.append(str(row[cfg.text_field]))
            if len(docs) >= cfg.max_docs:
                break
    except ConfigError:
        raise
    except Exception as e:  # network errors, unknown dataset/config/split: all one line for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"text.source: hub dataset {cfg.source!r} could not be loaded ({first}); "
                          "use a local path or 'stdlib'") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d}) + "\n")
    tmp.replace(cache)  # atomic: a crash never leaves a half cache that later runs would trust
    return docs


# --------------------------------------------------------------------------------------------- tokenizers


class Tokenizer(Protocol):
    """What hyla needs from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0-255 plus specials eos=256, bos=257, pad=258, sep=259 (vocab_size 260)."""

    name = "byte"
    vocab_size = 260
    eos_id, bos_id, pad_id, sep_id = 256, 257, 258, 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for packing large corpora."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer behind the ``Tokenizer`` protocol (no special tokens added on encode)."""

    def __init__(self, name: str, tok: Any) -> None:
        self.name = name
        self.tok = tok
        self.vocab_size = len(tok)
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise ConfigError(f"tokenizer {name!r}: has neither an eos nor a sep token; pick another tokenizer")
        self.eos_id = int(eos)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])


@functools.lru_cache(maxsize=8)
def get_tokenizer(name: str = "byte") -> Tokenizer:
    """``"byte"`` or a transformers tokenizer name/path (local files first, then the hub if reachable)."""
    if name == "byte":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(name, AutoTokenizer.from_pretrained(name, local_files_only=True))
    except (OSError, ValueError):
        pass
    if Path(name).expanduser().exists():
        raise ConfigError(f"tokenizer {name!r}: the directory has no loadable tokenizer files")
    if not _hub_reachable():
        raise HubUnreachable(f"tokenizer {name!r}: not found locally and the hub is unreachable")
    try:
        return HFTokenizer(name, AutoTokenizer.from_pretrained(name))
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"tokenizer {name!r}: not found locally or on the hub ({first})") from None


# --------------------------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class TokenStats:
    """Counts of one packing: documents and tokens encoded, windows made, tokens left over at the end."""

    docs: int
    tokens: int
    windows: int
    dropped_tokens: int


def _encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode_array(text)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def pack_documents(docs: Sequence[str], tokenizer: Tokenizer, seq_len: int,
                   max_tokens: int | None = None) -> tuple[torch.Tensor, TokenStats]:
    """Encode ``docs`` (each followed by eos), join and cut into non-overlapping windows of ``seq_len + 1``.

    Args:
        docs: documents in reading order.
        tokenizer: any ``Tokenizer``.
        seq_len: model context; each row holds inputs ``[:, :-1]`` and targets ``[:, 1:]``.
        max_tokens: stop encoding once this many tokens are gathered (the rest of the corpus is not encoded).

    Returns:
        ``(windows, stats)``: LongTensor ``(N, seq_len + 1)`` and the counts.

    Raises:
        ConfigError: bad ``seq_len``/``max_tokens`` or fewer tokens than one window.
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len: {seq_len!r} must be >= 1")
    if max_tokens is not None and max_tokens < seq_len + 1:
        raise ConfigError(f"max_tokens: {max_tokens!r} must be >= seq_len + 1 = {seq_len + 1}")
    eos = np.asarray([tokenizer.eos_id], dtype=np.int64)
    parts: list[np.ndarray] = []
    total, used = 0, 0
    for doc in docs:
        ids = _encode(tokenizer, doc)
        parts += [ids, eos]
        total += len(ids) + 1
        used += 1
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n = len(stream) // (seq_len + 1)
    if n == 0:
        raise ConfigError(f"text: {len(stream)} tokens from {used} documents are fewer than one window of "
                          f"seq_len + 1 = {seq_len + 1}; add documents or lower seq_len")
    windows = torch.from_numpy(stream[: n * (seq_len + 1)].reshape(n, seq_len + 1).copy())
    return windows, TokenStats(docs=used, tokens=len(stream), windows=n, dropped_tokens=len(stream) - n * (seq_len + 1))


def pack_tokens(docs: Sequence[str], tokenizer: Tokenizer, seq_len: int,
                max_tokens: int | None = None) -> torch.Tensor:
    """``pack_documents`` without the counts: LongTensor ``(N, seq_len + 1)``."""
    return pack_documents(docs, tokenizer, seq_len, max_tokens)[0]


#: Per-process caches so repeated trials in one worker do not re-read or re-tokenize the corpus.
_DOCS_CACHE: dict[TextConfig, tuple[list[str], list[str]]] = {}
_PACK_CACHE: dict[tuple[Any, ...], torch.Tensor] = {}


def cached_documents(text: TextConfig) -> tuple[list[str], list[str]]:
    """`load_documents`, read once per process and text config."""
    if text not in _DOCS_CACHE:
        _DOCS_CACHE[text] = load_documents(text)
    return _DOCS_CACHE[text]


def packed_windows(text: TextConfig, split: int, tokenizer: Tokenizer, seq_len: int, max_tokens: int) -> torch.Tensor:
    """`pack_tokens` of the training (``split`` 0) or validation (1) documents of ``text``, cached per process by
    (text, split, tokenizer, seq_len, max_tokens); an empty split is a ConfigError."""
    key = (text, split, tokenizer.name, seq_len, max_tokens)
    if key not in _PACK_CACHE:
        docs = cached_documents(text)[split]
        if not docs:
            raise ConfigError(f"text: the {'validation' if split else 'training'} split of {text.source!r} is "
                              "empty; add documents or change val_fraction")
        _PACK_CACHE[key] = pack_tokens(docs, tokenizer, seq_len, max_tokens=max_tokens)
    return _PACK_CACHE[key]


def clear_text_cache() -> None:
    """Forget cached documents and packed tokens (e.g. after the corpus changed on disk)."""
    _DOCS_CACHE.clear()
    _PACK_CACHE.clear()
