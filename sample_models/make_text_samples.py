"""Make the synthetic text data and train the small transformer samples (seeded; run from the repository root).

    python -m sample_models.make_text_samples

Data: a seeded synthetic language (``generate``) of 600 token ids: 0 = [PAD], 1 = [CLS], 2 = [SEP],
3 = [MASK]; 84 function words, 3 topics of 120 words each, 148 generic words and 4 question markers. A sentence is ``[CLS] words [SEP]`` padded to 32 (8 to 32 tokens in all): each word is drawn
(Zipf-like) from its topic, the function words, the generic words or, as noise, another topic; half the
sentences are questions, opened by a marker word. Label ``y`` = 2 * topic + question (6 classes). (Labels that
only word order decides, e.g. a marker that counts only as the first word, stayed at chance on that bit within
this script's few minutes of CPU training, so the label is decidable from the bag of words.) Splits: ``text_{train,val,heldout}.npz`` (``input_ids``, ``attention_mask``, ``y``; int64) and the
same sentences without labels as ``embed_{train,val,heldout}.npz`` for the embedder and the masked LM.

Models (``sample_models/text_models.py``; trained on train only, selected on val only, saved in eval mode as a
state_dict ``.pt`` and a ``torch.export`` program ``.pt2`` with dynamic batch and sequence length):
- ``text_classifier``: cross-entropy on ``y``;
- ``text_embedder``: label-free contrastive training (SimCSE-like InfoNCE between two augmented views of a
  sentence: dropout, word dropout, a neighbour swap), selected on nearest-neighbour agreement of val views;
  evaluated by nearest-neighbour class retrieval on the held-out set (labels from ``text_heldout.npz``);
- ``text_mlm``: masked LM (15% of words) whose decoder is tied to the word embedding.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sample_models import text_models

HERE = Path(__file__).resolve().parent
SEED = 0
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SEQ = 32
MARKERS = np.arange(64, 68)
FUNCTION = np.r_[4:64, 68:92]
TOPICS = [np.arange(92 + 120 * i, 92 + 120 * (i + 1)) for i in range(3)]
GENERIC = np.arange(452, text_models.VOCAB)
SIZES = {"train": 8000, "val": 1000, "heldout": 1000}


def _zipf(n: int, s: float = 1.0) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def generate(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` sentences of the synthetic language: (input_ids, attention_mask, y), int64, [n, 32]."""
    pools = [(FUNCTION, _zipf(len(FUNCTION))), (GENERIC, _zipf(len(GENERIC), 0.7))]
    topic_p = _zipf(120, 0.8)
    ids = np.zeros((n, SEQ), np.int64)
    y = np.zeros(n, np.int64)
    for i in range(n):
        topic = rng.integers(3)
        length = rng.integers(6, SEQ - 1)          # words, the marker included
        question = rng.random() < 0.5
        words = []
        for _ in range(length - int(question)):
            r = rng.random()
            if r < 0.40:
                words.append(rng.choice(TOPICS[topic], p=topic_p))
            elif r < 0.48:
                other = (topic + rng.integers(1, 3)) % 3
                words.append(rng.choice(TOPICS[other], p=topic_p))
            elif r < 0.80:
                words.append(rng.choice(pools[0][0], p=pools[0][1]))
            else:
                words.append(rng.choice(pools[1][0], p=pools[1][1]))
        if question:
            words.insert(0, rng.choice(MARKERS))   # a marker opens a question
        seq = [CLS, *words, SEP]
        ids[i, : len(seq)] = seq
        y[i] = 2 * topic + int(question)
    mask = (ids != PAD).astype(np.int64)
    return ids, mask, y


def make_splits(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    splits = {name: generate(n, rng) for name, n in SIZES.items()}
    for name, (ids, mask, y) in splits.items():
        np.savez_compressed(out / f"text_{name}.npz", input_ids=ids, attention_mask=mask, y=y)
        np.savez_compressed(out / f"embed_{name}.npz", input_ids=ids, attention_mask=mask)
    return splits


def _tensors(split):
    return tuple(torch.from_numpy(a) for a in split)


@torch.no_grad()
def predict(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(ids), batch)])


def accuracy(model: nn.Module, split) -> float:
    ids, mask, y = _tensors(split)
    return float((predict(model, ids, mask).argmax(1) == y).float().mean())


def _schedule(opt, steps: int, warmup: float = 0.06):
    w = max(1, int(warmup * steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / w, max(0.0, (steps - s) / (steps - w))))


def train_classifier(splits, epochs: int = 8, lr: float = 1e-3) -> nn.Module:
    torch.manual_seed(SEED)
    model = text_models.text_classifier()
    ids, mask, y = _tensors(splits["train"])
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = _schedule(opt, epochs * ((len(ids) + 63) // 64))
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ids), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(ids[idx], mask[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        acc = accuracy(model, splits["val"])
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval()


def augment(ids: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, p_drop: float = 0.1):
    """A view of each sentence: drop ~10% of the words (never [CLS]/[SEP]) and swap one random neighbour pair."""
    words = (ids > SEP)
    drop = (torch.rand(ids.shape, generator=gen) < p_drop) & words
    out = torch.full_like(ids, PAD)
    for i in range(len(ids)):
        kept = ids[i][(mask[i] > 0) & ~drop[i]]
        n_words = len(kept) - 2
        if n_words >= 2:
            j = 1 + int(torch.randint(n_words - 1, (1,), generator=gen))
            kept = kept.clone()
            kept[j], kept[j + 1] = kept[j + 1].clone(), kept[j].clone()
        out[i, : len(kept)] = kept
    return out, (out != PAD).long()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def neighbour_agreement(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of items whose nearest other item (cosine) has the same label."""
    sim = emb @ emb.T
    sim.fill_diagonal_(-2.0)
    return float((labels[sim.argmax(1)] == labels).float().mean())


def view_retrieval(model: nn.Module, split, gen_seed: int) -> float:
    """Label-free selection score: a view's nearest neighbour among the other views is its own sentence."""
    ids, mask, _ = _tensors(split)
    gen = torch.Generator().manual_seed(gen_seed)
    a, b = predict(model, *augment(ids, mask, gen)), predict(model, *augment(ids, mask, gen))
    return float(((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean())


def train_embedder(splits, epochs: int = 4, lr: float = 1e-3) -> nn.Module:
    torch.manual_seed(SEED)
    model = text_models.text_embedder()
    ids, mask, _ = _tensors(splits["train"])      # labels are not used
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = _schedule(opt, epochs * (len(ids) // 128))
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ids), generator=gen).split(128):
            if len(idx) < 128:
                continue
            va, vb = augment(ids[idx], mask[idx], gen), augment(ids[idx], mask[idx], gen)
            opt.zero_grad()
            info_nce(model(*va), model(*vb)).backward()
            opt.step()
            sched.step()
        score = view_retrieval(model, splits["val"], SEED + 1)
        if score >= best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval()


def mask_tokens(ids: torch.Tensor, gen: torch.Generator, p: float = 0.15):
    """BERT masking of 15% of the words: 80% [MASK], 10% a random word, 10% kept; targets -100 elsewhere."""
    chosen = (torch.rand(ids.shape, generator=gen) < p) & (ids > SEP)
    target = torch.where(chosen, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    out = ids.clone()
    out[chosen & (r < 0.8)] = MASK
    rand = chosen & (r >= 0.8) & (r < 0.9)
    out[rand] = torch.randint(4, text_models.VOCAB, (int(rand.sum()),), generator=gen)
    return out, target


def mlm_loss(model: nn.Module, split, seed: int) -> float:
    ids, mask, _ = _tensors(split)
    inp, target = mask_tokens(ids, torch.Generator().manual_seed(seed))
    logits = predict(model, inp, mask)
    return float(F.cross_entropy(logits.flatten(0, 1), target.flatten()))


def train_mlm(splits, epochs: int = 3, lr: float = 1e-3) -> nn.Module:
    torch.manual_seed(SEED)
    model = text_models.text_mlm()
    ids, mask, _ = _tensors(splits["train"])
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = _schedule(opt, epochs * ((len(ids) + 63) // 64))
    best, best_state = float("inf"), None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ids), generator=gen).split(64):
            inp, target = mask_tokens(ids[idx], gen)
            opt.zero_grad()
            F.cross_entropy(model(inp, mask[idx]).flatten(0, 1), target.flatten()).backward()
            opt.step()
            sched.step()
        loss = mlm_loss(model, splits["val"], SEED + 1)
        if loss <= best:
            best, best_state = loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval()


def save(model: nn.Module, name: str, out: Path) -> None:
    """State_dict ``.pt`` and a ``.pt2`` program with dynamic batch and sequence length (up to 64 tokens)."""
    model.eval()
    torch.save(model.state_dict(), out / f"{name}.pt")
    batch = torch.export.Dim("batch", min=1, max=65536)
    seq = torch.export.Dim("seq", min=2, max=text_models.MAX_POSITIONS)
    ids = torch.full((3, 16), 5, dtype=torch.int64)
    mask = torch.ones(3, 16, dtype=torch.int64)
    ep = torch.export.export(model, (), {"input_ids": ids, "attention_mask": mask},
                             dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    torch.export.save(ep, out / f"{name}.pt2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", choices=["classifier", "embedder", "mlm"], action="append")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = make_splits(args.out)
    only = set(args.only or ["classifier", "embedder", "mlm"])
    held_ids, held_mask, held_y = _tensors(splits["heldout"])

    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    if "classifier" in only:
        t0 = time.perf_counter()
        model = train_classifier(splits)
        print(f"text_classifier: {params(model)} params, held-out accuracy {accuracy(model, splits['heldout']):.4f}"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        save(model, "text_classifier", args.out)
    if "embedder" in only:
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        untrained = text_models.text_embedder().eval()
        model = train_embedder(splits)
        emb, emb0 = predict(model, held_ids, held_mask), predict(untrained, held_ids, held_mask)
        print(f"text_embedder: {params(model)} params, held-out nearest-neighbour class retrieval "
              f"{neighbour_agreement(emb, held_y):.4f} (topic {neighbour_agreement(emb, held_y // 2):.4f}; "
              f"untrained {neighbour_agreement(emb0, held_y):.4f}; chance ~0.17) "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        save(model, "text_embedder", args.out)
    if "mlm" in only:
        t0 = time.perf_counter()
        model = train_mlm(splits)
        inp, target = mask_tokens(held_ids, torch.Generator().manual_seed(SEED + 2))
        pred = predict(model, inp, held_mask).argmax(-1)
        sel = target >= 0
        print(f"text_mlm: {params(model)} params (decoder tied to the word embedding), held-out masked-word "
              f"accuracy {float((pred[sel] == target[sel]).float().mean()):.4f}, loss "
              f"{mlm_loss(model, splits['heldout'], SEED + 2):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        save(model, "text_mlm", args.out)


if __name__ == "__main__":
    main()
