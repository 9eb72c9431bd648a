"""A transformers model as the working model: an `nn.Module` whose forward takes the tokenizer's (or image
processor's) tensors by name and returns the task's one output tensor.

Why a wrapper: every stage, metric and the ONNX export read one tensor from a forward whose argument names are the
data's array names; a transformers model takes many optional arguments and returns a `ModelOutput`. The wrapper
fixes the arguments (`input_ids`, `attention_mask`, and `token_type_ids` where the model and tokenizer use them;
`pixel_values` for images) and the output: logits, or for feature-extraction the sentence embedding as
sentence-transformers computes it (pooled over the tokens the attention mask keeps, then L2-normalised when the
directory has a Normalize module). `onnx_output_names` and `dynamic_dims` tell the exporter what to call the output
and that the sequence length, not only the batch, is free in model.onnx.
"""
from __future__ import annotations

import torch
from torch import nn

OUTPUT_NAMES = {"feature-extraction": "sentence_embedding"}  # every other task: logits
PER_SEQUENCE = {"feature-extraction", "text-classification"}  # one output a text: its padding can be left out
# encoders whose tokens meet only through masked attention, so a padded column changes no real token's output (not,
# e.g., ConvBERT's convolution, Funnel's pooling or Nystromformer's landmarks)
MASKED_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "albert", "camembert",
               "deberta", "deberta-v2", "modernbert", "nomic_bert", "xlm-roberta-xl", "ernie"}


class HFWrapper(nn.Module):
    """The shared part: the transformers model, the task, and sentence-transformers' pooling."""

    def __init__(self, model: nn.Module, task: str, pooling: list[str] | None = None, normalize: bool = False):
        super().__init__()
        self.model = model
        self.task = task
        self.pooling = list(pooling or ["mean"])
        self.normalize = normalize
        self.onnx_output_names = [OUTPUT_NAMES.get(task, "logits")]
        self.masked_only = getattr(getattr(model, "config", None), "model_type", None) in MASKED_ONLY

    def run(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.task in PER_SEQUENCE and self.masked_only and "attention_mask" in inputs and not tracing():
            inputs = without_trailing_padding(inputs)
        out = self.model(**inputs)
        if self.task != "feature-extraction":
            return out.logits
        hidden = out.last_hidden_state
        mask = inputs["attention_mask"].to(hidden.dtype)
        emb = torch.cat([pool(hidden, mask, mode) for mode in self.pooling], dim=1)
        return nn.functional.normalize(emb, p=2.0, dim=1) if self.normalize else emb


def tracing() -> bool:
    """Whether the forward is being traced (ONNX export, torch.export, TorchScript): the graph keeps every column."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch 2.4 has only is_compiling
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing()


def without_trailing_padding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without the trailing columns that no row's attention mask keeps. Why: a text file is tokenized
    once, padded to its longest text, and every batch would run (and fine-tune) at that length; a key the mask
    removes gets zero attention weight and the pooled output reads only kept tokens, so the output is the same, with
    right padding. Leading or inner padding is left alone (removing it would shift the positions of real tokens)."""
    kept = inputs["attention_mask"].ne(0).any(dim=0)
    if bool(kept[-1]) or not bool(kept.any()):
        return inputs
    length = int(kept.nonzero().max()) + 1
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == kept.numel() else v for k, v in inputs.items()}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One sentence-transformers pooling mode over the tokens the mask keeps (its formulas, its 1e-9 floor)."""
    if mode == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1)
    if mode == "max":
        return torch.where(keep > 0, hidden, torch.full_like(hidden, -1e9)).max(dim=1).values
    total = (hidden * keep).sum(dim=1)
    count = keep.sum(dim=1).clamp(min=1e-9)
    return total / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)


class TextModel(HFWrapper):
    """Token ids and their attention mask."""

    dynamic_dims = {"input_ids": (0, 1), "attention_mask": (0, 1)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.run(input_ids=input_ids, attention_mask=attention_mask)


class TextModelWithTypes(HFWrapper):
    """Token ids, attention mask and segment ids (BERT-style models whose tokenizer returns them)."""

    dynamic_dims = {"input_ids": (0, 1), "attention_mask": (0, 1), "token_type_ids": (0, 1)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


class ImageModel(HFWrapper):
    """Pixel values as the model's image processor makes them (batch, channels, height, width)."""

    dynamic_dims = {"pixel_values": (0,)}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.run(pixel_values=pixel_values)


def wrap(model: nn.Module, task: str, inputs: list[str], pooling: list[str] | None = None,
         normalize: bool = False) -> HFWrapper:
    """The wrapper whose forward takes exactly `inputs` (one of the three signatures above)."""
    for cls in (TextModel, TextModelWithTypes, ImageModel):
        if list(cls.dynamic_dims) == list(inputs):
            return cls(model, task, pooling, normalize).eval()
    raise ValueError(f"no wrapper takes the inputs {inputs}")

