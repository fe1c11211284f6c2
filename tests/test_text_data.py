"""WikiText through datasets: vocabulary, tokenisation cache, chunks, errors."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from sslens.data.text import TextTask, Vocab, chunks, default_wikitext_dir, load_text, tokenize
from sslens.errors import SslensError

DATA = Path(__file__).parent / "data"


def files():
    d = default_wikitext_dir()
    if d is not None:  # the full shared WikiText-2 files when present, else the shipped slices
        return {"train": d / "valid.txt", "valid": d / "test.txt"}
    return {"train": DATA / "wikitext-2-valid-slice.txt", "valid": DATA / "wikitext-2-test-slice.txt"}


def independent_words(path):
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.split():
            out += line.split() + ["<eos>"]
    return out


def test_vocab_and_ids_match_an_independent_count(tmp_path):
    f = {"train": DATA / "wikitext-2-valid-slice.txt", "valid": DATA / "wikitext-2-test-slice.txt"}
    vocab, ids = tokenize(f, "train", max_vocab=500, cache_dir=tmp_path)
    ws = independent_words(f["train"])
    counts = Counter(w for w in ws if w not in ("<unk>", "<eos>"))
    top = [w for w, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:498]
    assert vocab.itos[:2] == ["<unk>", "<eos>"] and len(vocab) == 500
    assert set(vocab.itos[2:]) == set(top) or counts[vocab.itos[-1]] == counts[top[-1]]  # ties at the cut
    assert ids["train"].numel() == len(ws)
    dec = vocab.decode(ids["train"][:200])
    assert dec == [w if w in vocab.stoi else "<unk>" for w in ws[:200]]
    # the cache: a second call reads the files written by the first, same result
    assert len(list((tmp_path / "text").iterdir())) == 2
    vocab2, ids2 = tokenize(f, "train", max_vocab=500, cache_dir=tmp_path)
    assert vocab2.itos == vocab.itos and torch.equal(ids2["valid"], ids["valid"])


def test_full_or_shipped_wikitext_loads_through_datasets():
    ds = load_text(files())
    assert set(ds) == {"train", "valid"} and ds["train"].num_rows > 100
    assert " = Homarus gammarus = " in ds["train"]["text"][:5] or ds["train"]["text"][1].strip().startswith("=")


def test_chunks_and_task(tmp_path):
    ids = torch.arange(10)
    assert torch.equal(chunks(ids, 3), torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]]))
    task = TextTask({k: str(v) for k, v in files().items()}, seq_len=16, max_vocab=1000, cache_dir=str(tmp_path))
    x, y = task.batch(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and torch.equal(x, y) and x.max() < 1000
    last = TextTask({k: str(v) for k, v in files().items()}, seq_len=16, max_vocab=1000, loss="last_ce", cache_dir=str(tmp_path))
    x, y = last.batch(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and y.shape == (4,)


def test_errors(tmp_path):
    with pytest.raises(SslensError, match=r"^data_files.train: no such file"):
        load_text({"train": tmp_path / "missing.txt"})
    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(SslensError, match=r"^data_files.train: the split has no non-empty line"):
        load_text({"train": tmp_path / "blank.txt"})
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SslensError, match=r"^data_files.train: .* is empty"):
        load_text({"train": tmp_path / "empty.txt"})
    with pytest.raises(SslensError, match="^max_vocab"):
        Vocab.build(["a"], max_vocab=1)
