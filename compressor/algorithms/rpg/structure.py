"""The rpg structure record: rebuild the ring form on load, and its ONNX / int8 rewrites, registered by kind."""
from __future__ import annotations

import torch

from compressor.algorithms.rpg.onnx_graph import generate_index_map_in_graph, ring_to_int8
from compressor.algorithms.rpg.ring import MASK_NAME, RING_NAME, RingLayout, ring_model
from compressor.errors import ArtifactError
from compressor.registry import StructureHandler, register_structure

ONNX_SLACK_BYTES = 16 * 1024


def rebuild_ring_model(model: torch.nn.Module, entry: dict, state: dict) -> torch.nn.Module:
    """`compressor.load`: rebuild the ring form on a fresh source model and check the regenerated weights."""
    layout = RingLayout.from_dict(entry)
    ring = state.get(RING_NAME)
    if ring is None or ring.numel() != layout.n:
        raise ArtifactError(f"rpg: the weights file holds no ring of {layout.n} values ({RING_NAME})")
    mask = state.get(MASK_NAME) if entry.get("masked") else None
    if entry.get("masked") and (mask is None or mask.numel() != layout.index_length):
        raise ArtifactError(f"rpg: the weights file holds no mask of {layout.index_length} values ({MASK_NAME})")
    rebuilt = ring_model(model, layout, ring, mask)
    if rebuilt.checksum() != entry.get("checksum"):
        raise ArtifactError("rpg: the weights regenerated from the ring do not match the saved checksum; the seed, "
                            "layout or ring was tampered with or does not belong to this model")
    return rebuilt


def onnx_rewrite(proto, entry: dict, model):
    """Keep only the ring in the graph; the index map and signs are generated in-graph."""
    return generate_index_map_in_graph(proto, RingLayout.from_dict(entry))


def int8_rewrite(proto, entry: dict, model):
    return ring_to_int8(proto)


def describe_check(check: dict, metrics: dict) -> str:
    """The ONNX check against the size bound 1.1 * 4 * DoF + 16 KB."""
    bound = 1.1 * 4 * metrics["dof"] + ONNX_SLACK_BYTES
    metrics["onnx_size_bound"] = int(bound)
    return (f"ONNX (ring only, index map in-graph): {check['onnx_fp32_bytes']:,} bytes "
            f"(bound 1.1*4*DoF+16KB = {int(bound):,}); ONNX Runtime vs torch max abs diff "
            f"{check['onnx_max_abs_diff']:.2e}")


HANDLER = register_structure(StructureHandler("rpg", rebuild_ring_model, onnx_rewrite, int8_rewrite, describe_check))
