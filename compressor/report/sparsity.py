"""Sparsity accounting for the report: per-layer sparsity (table and plot), bits per non-zero, entropy bound.

Sparsity is measured over the prunable weights (those with masks). The entropy bound is the Shannon limit of
storing each sparse tensor (binary entropy of its zero mask + empirical entropy of its non-zero values) plus the
raw bytes of the dense tensors: it says how far the measured bytes are from the best any coder could do.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from compressor.io.encodings import entropy_bound_bytes


def sparsity_section(model: torch.nn.Module, masked: list[str], artifacts: list[dict], encodings: dict[str, str],
                     plot_path: Path | None) -> dict[str, Any]:
    params = dict(model.named_parameters())
    layers = []
    for name in masked:
        if name not in params:  # generated from a ring after rpg: not a stored weight any more
            continue
        p = params[name].detach().cpu()
        nnz = int((p != 0).sum())
        layers.append({"name": name, "numel": p.numel(), "nonzeros": nnz, "sparsity": round(1 - nnz / p.numel(), 6)})
    numel = sum(l["numel"] for l in layers)
    nnz = sum(l["nonzeros"] for l in layers)
    total_nnz = sum(int((p.detach() != 0).sum()) for p in model.parameters())
    bound = 0.0
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if encodings.get(name, "dense") != "dense":
            bound += entropy_bound_bytes(t)
        else:
            bound += t.numel() * t.element_size()
    section = {
        "prunable_weights": numel, "prunable_nonzeros": nnz, "sparsity": round(1 - nnz / numel, 6) if numel else 0.0,
        "model_nonzeros": total_nnz, "per_layer": layers, "entropy_bound_bytes": int(round(bound)),
        "bits_per_nonzero": {a["path"]: round(a["size"] * 8 / max(total_nnz, 1), 3) for a in artifacts},
    }
    if plot_path is not None and layers:
        section["plot"] = plot_path.name if _plot(layers, plot_path) else None
    return section


def _plot(layers: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(layers) + 2), 3), dpi=100)
    ax.bar(range(len(layers)), [100 * l["sparsity"] for l in layers], color="#4C72B0")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([l["name"] for l in layers], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("sparsity %")
    ax.set_ylim(0, 100)
    ax.set_title("per-layer sparsity")
    with warnings.catch_warnings():  # long layer names can leave no room to lay out: matplotlib warns, and plots
        warnings.simplefilter("ignore")
        fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def markdown_lines(section: dict[str, Any]) -> list[str]:
    lines = [f"Sparsity over {section['prunable_weights']:,} prunable weights: **{section['sparsity']:.2%}** "
             f"({section['prunable_nonzeros']:,} non-zeros). Entropy bound of the weights: "
             f"{section['entropy_bound_bytes']:,} bytes; bits per non-zero: "
             + ", ".join(f"{k} {v}" for k, v in section["bits_per_nonzero"].items()) + ".", "",
             "| layer | weights | non-zeros | sparsity |", "|---|---|---|---|"]
    lines += [f"| {l['name']} | {l['numel']:,} | {l['nonzeros']:,} | {l['sparsity']:.2%} |" for l in section["per_layer"]]
    if section.get("plot"):
        lines += ["", f"![per-layer sparsity]({section['plot']})"]
    return lines + [""]
