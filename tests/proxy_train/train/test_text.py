"""Text sources, the document split, tokenizers and packing (no downloads: local files and the stdlib only)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.train.config import TextConfig
from hyla.proxy_train.train.text import (
    ByteTokenizer, get_tokenizer, hub_cache_path, load_documents, pack_documents, pack_tokens, sample_path,
    split_text_file,
)

WIKI_DIR = Path(os.environ.get("HYLA_TEST_DATA", sample_path()))  # default: the WikiText-2 sample shipped with hyla
WIKI = WIKI_DIR / "valid.txt" if WIKI_DIR.is_dir() else WIKI_DIR
needs_wiki = pytest.mark.skipif(not WIKI.is_file(), reason=f"HYLA_TEST_DATA={WIKI} does not exist")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_stdlib_corpus_loads_capped() -> None:
    train, val = load_documents(TextConfig(max_docs=20, val_fraction=0.1))
    assert len(train) + len(val) == 20 and len(val) == 2
    assert all(isinstance(d, str) and d.strip() for d in train + val)
    assert any("def " in d or "import " in d for d in train)  # it is Python source


@needs_wiki
def test_wikitext_split_by_article() -> None:
    text = WIKI.read_text(encoding="utf-8")
    titles = [line for line in text.splitlines() if re.match(r"^ = [^=].* = $", line)]
    train, val = load_documents(TextConfig(source=str(WIKI), val_fraction=0.1))
    docs = train + val
    assert len(docs) == len(titles) > 10
    assert all(d.startswith("= ") for d in docs)  # every document begins with its article title
    assert sum("= = " in d for d in docs) > 0  # sub-section headings stay inside their article


def test_the_shipped_prose_sample_is_a_text_source() -> None:
    train, val = load_documents(TextConfig(source="wikitext2-sample", val_fraction=0.1))
    assert (len(train), len(val)) == (20, 2)  # 22 WikiText-2 articles, split by article
    assert train[0].startswith("= Homarus gammarus =") and sum(map(len, train + val)) > 250_000
    assert (sample_path().parent / "README.md").read_text().count("CC BY-SA 3.0") >= 1  # its licence beside it


def test_plain_text_file_splits_into_paragraphs(tmp_path: Path) -> None:
    assert split_text_file("one\ntwo\n\n\nthree\n  \nfour") == ["one\ntwo", "three", "four"]
    f = tmp_path / "plain.txt"
    f.write_text("first para\n\nsecond para\n\nthird\n")
    train, val = load_documents(TextConfig(source=str(f), val_fraction=0.0))
    assert train == ["first para", "second para", "third"] and val == []


def test_val_split_is_deterministic_disjoint_and_seeded() -> None:
    cfg = TextConfig(max_docs=40, val_fraction=0.25, seed=3)
    a_train, a_val = load_documents(cfg)
    b_train, b_val = load_documents(cfg)
    assert (a_train, a_val) == (b_train, b_val)
    assert len(a_val) == 10 and not set(a_val) & set(a_train)
    _, c_val = load_documents(TextConfig(max_docs=40, val_fraction=0.25, seed=4))
    assert set(c_val) != set(a_val)


def _rows(n: int) -> list[dict[str, object]]:
    return [{"text": f"document number {i} " * 3, "id": i} for i in range(n)]


def test_jsonl_loading_and_text_field(tmp_path: Path) -> None:
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _rows(10)))
    train, val = load_documents(TextConfig(source=str(f), val_fraction=0.2))
    assert sorted(train + val) == sorted(r["text"] for r in _rows(10)) and len(val) == 2
    with pytest.raises(ConfigError, match="text_field: 'body'.*columns: "):
        load_documents(TextConfig(source=str(f), text_field="body"))


def test_parquet_loading(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(_rows(6)).to_parquet(str(tmp_path / "docs.parquet"))
    train, val = load_documents(TextConfig(source=str(tmp_path / "docs.parquet"), val_fraction=0.0))
    assert train == [r["text"] for r in _rows(6)]


def test_directory_loading(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("file b\n\nstill file b\n")
    (tmp_path / "a.txt").write_text("file a\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    (tmp_path / "ignored.csv").write_text("x,y\n")
    train, _ = load_documents(TextConfig(source=str(tmp_path), val_fraction=0.0))
    # .txt files in a directory are one document each (sorted), then the table rows
    assert train == ["file a\n", "file b\n\nstill file b\n", _rows(2)[0]["text"], _rows(2)[1]["text"]]


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "data.jsonl")
    with pytest.raises(ConfigError, match=re.escape(missing)):
        load_documents(TextConfig(source=missing))


def test_unreachable_hub_is_a_quick_config_error(offline: None, tmp_path: Path) -> None:
    cfg = TextConfig(source="someone/some-dataset", max_docs=5, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="could not be reached.*local path"):
        load_documents(cfg)
    # a cached stream is used offline
    cache = hub_cache_path(cfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps({"text": f"cached {i}"}) + "\n" for i in range(5)))
    train, val = load_documents(cfg)
    assert sorted(train + val) == [f"cached {i}" for i in range(5)]


def test_text_config_validation() -> None:
    assert TextConfig.from_dict({"source": "stdlib", "max_docs": 3}).max_docs == 3
    with pytest.raises(ConfigError, match="did you mean 'max_docs'"):
        TextConfig.from_dict({"max_doc": 3})
    with pytest.raises(ConfigError, match="val_fraction: 1.5"):
        TextConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="max_docs: 0"):
        TextConfig(max_docs=0)
    with pytest.raises(ConfigError, match="needs >= 2"):
        load_documents(TextConfig(max_docs=1))


def test_byte_tokenizer() -> None:
    tok = get_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 260 and tok.eos_id == 256 and tok.name == "byte"
    text = "héllo, wörld"
    ids = tok.encode(text)
    assert max(ids) < 256 and len(ids) == len(text.encode()) and tok.decode(ids + [256, 258]) == text


def test_unknown_tokenizer_offline(offline: None) -> None:
    with pytest.raises(ConfigError, match="tokenizer 'no-such-org/no-such-tokenizer': not found locally and the "
                                          "hub is unreachable"):
        get_tokenizer("no-such-org/no-such-tokenizer")


def test_local_transformers_tokenizer(tmp_path: Path, offline: None) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, "hello": 2, "world": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="</s>").save_pretrained(tmp_path)
    tok = get_tokenizer(str(tmp_path))
    assert tok.vocab_size == 4 and tok.eos_id == 1
    assert tok.encode("hello world zzz") == [2, 3, 0]
    packed = pack_tokens(["hello world", "world"], tok, seq_len=4)
    assert packed.tolist() == [[2, 3, 1, 3, 1]]


def test_pack_shapes_and_counts() -> None:
    tok = get_tokenizer("byte")
    windows, stats = pack_documents(["ab", "cde"], tok, seq_len=2)
    assert windows.dtype == torch.long and windows.shape == (2, 3)
    assert windows.tolist() == [[97, 98, 256], [99, 100, 101]]  # docs joined with eos, non-overlapping
    assert (stats.docs, stats.tokens, stats.windows, stats.dropped_tokens) == (2, 7, 2, 1)
    docs = ["x" * 100] * 50
    capped, st = pack_documents(docs, tok, seq_len=31, max_tokens=500)
    assert capped.shape == (15, 32) and st.tokens == 500 and st.docs == 5  # stops encoding once enough
    assert pack_tokens(docs, tok, seq_len=31).shape == ((101 * 50) // 32, 32)
    with pytest.raises(ConfigError, match="fewer than one window"):
        pack_tokens(["ab"], tok, seq_len=8)
    with pytest.raises(ConfigError, match="seq_len: 0"):
        pack_tokens(["ab"], tok, seq_len=0)


def test_shard_stream_is_one_seeded_order_for_proxies_and_full_runs() -> None:
    """Sample i is row perm(epoch)[i % n], whatever the draw sizes; a restored cursor resumes the exact stream."""
    import torch
    from hyla.proxy_train.train.stream import ShardStream

    windows = torch.arange(7 * 3).view(7, 3)

    def expected(seed: int, rank: int, count: int) -> list[int]:
        perms = [torch.randperm(7, generator=torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + e))
                 for e in range(count // 7 + 1)]
        return [int(perms[i // 7][i % 7]) for i in range(count)]

    full = ShardStream(windows, micro_batch=4, seed=3, rank=1)
    drawn = [full.next_batch() for _ in range(5)]  # 20 samples: crosses two epoch boundaries
    assert all(b.dtype == torch.int64 for b in drawn)
    assert [int(r[0]) // 3 for b in drawn for r in b] == expected(3, 1, 20) and full.cursor == 5
    proxy = ShardStream(windows, micro_batch=4, seed=3)
    uneven = torch.cat([proxy.take(k) for k in (4, 3, 4, 1, 8)])  # fewer LM rows while recall rows mix in
    assert [int(r[0]) // 3 for r in uneven] == expected(3, 0, 20)
    resumed = ShardStream(windows, micro_batch=4, seed=3, rank=1)
    resumed.cursor = 3
    assert torch.equal(torch.cat([resumed.next_batch(), resumed.next_batch()]), torch.cat(drawn[3:]))
