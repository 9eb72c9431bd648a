"""Small BERT-like text models in plain torch (no ``transformers``), for the transformer samples.

All take ``input_ids`` (int64, [B, T]) and ``attention_mask`` (int64, [B, T], 1 = token, 0 = padding), like a
Hugging Face BERT. The encoder is written the way BERT is: word + learned position (+ optional token type)
embeddings and LayerNorm, then a stack of same-shaped post-LayerNorm layers (multi-head self-attention with
q/k/v/out Linear layers, the mask turned into an additive bias of ``torch.finfo(dtype).min`` on padded keys,
softmax; GELU feed-forward). Heads:

- ``TextEmbedder``: masked mean pooling, then L2 normalisation (sentence-transformers' all-MiniLM-L6-v2 recipe),
  output [B, hidden];
- ``TextClassifier``: BERT pooler (tanh dense on the [CLS] token) and a Linear classifier, logits [B, classes];
- ``TextMaskedLM``: BERT's masked-LM head (dense, GELU, LayerNorm, decoder) whose decoder weight IS the word
  embedding (``lm_head.weight is encoder.embed.weight``: one parameter read by two layers), logits [B, T, vocab].

Factories (no arguments) are what ``--arch sample_models/text_models.py:text_classifier`` points at.
``load_bert_weights`` maps a Hugging Face ``BertModel`` state_dict (e.g. all-MiniLM-L6-v2's safetensors) onto
``TextEncoder``, so a real checkpoint runs in this code without ``transformers``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 600          # 0 = [PAD], 1 = [CLS], 2 = [SEP], 3 = [MASK], the rest are words (see make_text_samples)
MAX_POSITIONS = 64
HIDDEN = 64
LAYERS = 4
HEADS = 4
FFN = 256
CLASSES = 6


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] 1/0 mask -> [B, 1, 1, T] additive bias: 0 on tokens, the most negative float on padding (as BERT)."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


class EncoderLayer(nn.Module):
    """One BERT layer: self-attention, add & LayerNorm, GELU feed-forward, add & LayerNorm."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1, eps: float = 1e-12) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = (probs @ v).transpose(1, 2).reshape(b, t, h)
        x = self.ln1(x + self.dropout(self.o(ctx)))
        return self.ln2(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class TextEncoder(nn.Module):
    """Embeddings + LayerNorm + a stack of ``layers`` same-shaped ``EncoderLayer``s; returns [B, T, hidden]."""

    def __init__(self, vocab: int = VOCAB, hidden: int = HIDDEN, layers: int = LAYERS, heads: int = HEADS,
                 ffn: int = FFN, max_positions: int = MAX_POSITIONS, type_vocab: int = 0,
                 dropout: float = 0.1, eps: float = 1e-12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_positions, hidden)
        # BERT checkpoints carry token-type embeddings; single-segment inputs only ever read row 0.
        self.token_type = nn.Embedding(type_vocab, hidden) if type_vocab else None
        self.ln = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList([EncoderLayer(hidden, heads, ffn, dropout, eps) for _ in range(layers)])
        self.apply(_init_bert)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos(torch.arange(t, device=input_ids.device))[None]
        if self.token_type is not None:
            x = x + self.token_type.weight[0]
        x = self.dropout(self.ln(x))
        bias = extended_attention_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return x


def _init_bert(m: nn.Module) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: average of the token vectors where the mask is 1."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextEmbedder(nn.Module):
    """Sentence embedder: encoder, masked mean pooling, L2 normalisation -> [B, hidden]."""

    def __init__(self, normalize: bool = True, **encoder_kwargs) -> None:
        super().__init__()
        self.encoder = TextEncoder(**encoder_kwargs)
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = mean_pool(self.encoder(input_ids, attention_mask), attention_mask)
        return F.normalize(emb, p=2.0, dim=1) if self.normalize else emb


class TextClassifier(nn.Module):
    """Sequence classifier: encoder, BERT pooler (tanh dense on [CLS]), dropout, Linear -> [B, classes]."""

    def __init__(self, classes: int = CLASSES, **encoder_kwargs) -> None:
        super().__init__()
        self.encoder = TextEncoder(**encoder_kwargs)
        hidden = self.encoder.embed.embedding_dim
        self.pooler = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, classes)
        _init_bert(self.pooler)
        _init_bert(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return self.classifier(self.dropout(pooled))


class TextMaskedLM(nn.Module):
    """Masked LM: encoder, BERT's prediction head, decoder tied to the word embedding -> [B, T, vocab]."""

    def __init__(self, **encoder_kwargs) -> None:
        super().__init__()
        self.encoder = TextEncoder(**encoder_kwargs)
        vocab, hidden = self.encoder.embed.weight.shape
        self.transform = nn.Linear(hidden, hidden)
        self.transform_ln = nn.LayerNorm(hidden, eps=1e-12)
        self.lm_head = nn.Linear(hidden, vocab)
        _init_bert(self.transform)
        nn.init.zeros_(self.lm_head.bias)
        self.lm_head.weight = self.encoder.embed.weight  # tied: one Parameter, two layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask)
        return self.lm_head(self.transform_ln(F.gelu(self.transform(h))))


def load_bert_weights(encoder: TextEncoder, bert_state: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face ``BertModel`` state_dict (keys with or without a ``bert.`` prefix) into ``encoder``.

    The encoder must have the checkpoint's sizes (all-MiniLM-L6-v2: vocab 30522, hidden 384, layers 6, heads 12,
    ffn 1536, max_positions 512, type_vocab 2). The pooler (unused by mean-pooling embedders) is ignored.
    """
    src = {k.removeprefix("bert."): v for k, v in bert_state.items()}
    names = {"embed.weight": "embeddings.word_embeddings.weight",
             "pos.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight",
             "ln.weight": "embeddings.LayerNorm.weight", "ln.bias": "embeddings.LayerNorm.bias"}
    parts = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "ffn_in": "intermediate.dense",
             "ffn_out": "output.dense", "ln2": "output.LayerNorm"}
    for i in range(len(encoder.layers)):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    own = encoder.state_dict()
    missing = [theirs for ours, theirs in names.items() if ours in own and theirs not in src]
    if missing:
        raise KeyError(f"checkpoint lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
    encoder.load_state_dict({ours: src[theirs] for ours, theirs in names.items() if ours in own}, strict=True)


def text_classifier() -> nn.Module:
    return TextClassifier()


def text_embedder() -> nn.Module:
    return TextEmbedder()


def text_mlm() -> nn.Module:
    return TextMaskedLM()
