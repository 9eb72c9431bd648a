"""The recurrent-parameter-generator ring: index map, hashed signs, closed-form projection, and the ring module.

Wang, Chen, Yu et al., "Compact and Optimal Deep Learning with Recurrent Parameter Generators", WACV 2023
(docs/ALGORITHMS.md §3). One ring A of N free values generates every selected layer's weight:

    W_l = reshape( c_l * s(k) * A[slot(k)] , shape_l )      for the global indices k in [offset_l, offset_l + n_l)

with our index map slot(k) = (a*k + b) mod N, gcd(a, N) = 1 (every slot is read floor(T/N) or ceil(T/N) times
over T consecutive k: the paper's "even sampling"), the hashed sign s(k) = 1 - 2*(fmix32((k+o) mod 2^32) >> 31)
(murmur3's finaliser, `compressor.algorithms.rpg.sign_hash`) with a seeded offset o (the affine map's groups do
not depend on the seed, so the signs carry it)
and a per-layer scale c_l. The same integer arithmetic is written as ONNX nodes by `compressor.algorithms.rpg.onnx_graph`,
so the ONNX file holds only the ring.

`RingModel` wraps a model (eager or a `.pt2` GraphModule) and runs it through `torch.func.functional_call` with the
generated weights substituted; the ring is one `nn.Parameter`, stored once, and the generated weights are neither
parameters nor state. Its state_dict keys are the original model's (minus the generated weights) plus `rpg_ring`
(and `rpg_mask` after pruning).
"""
from __future__ import annotations

import hashlib
import inspect
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.algorithms.rpg.sign_hash import SIGN_HASH, hashed_signs
from compressor.errors import ArtifactError
from compressor.runtime.calls import takes_keywords

RING_NAME = "rpg_ring"
SLOTS_NAME = "rpg_slots"
SIGNS_NAME = "rpg_signs"
MASK_NAME = "rpg_mask"
# The exported index constants are at least this long, so the exporter's constant folder (onnxscript folds ops
# whose inputs all have <= 8192 elements) cannot fold the ring gather of a small model into dense weights.
MIN_INDEX_LENGTH = 1 << 16


def affine_map_params(seed: int, n: int) -> tuple[int, int]:
    """(a, b) of slot(k) = (a*k + b) mod N, drawn from the seed with gcd(a, N) = 1 (a != 1 when N > 2)."""
    if n < 1:
        raise ValueError("the ring needs at least one slot")
    rng = random.Random(f"rpg-affine-map:{int(seed)}:{int(n)}")
    b = rng.randrange(n)
    if n <= 2:
        return 1, b
    while True:
        a = rng.randrange(2, n)
        if math.gcd(a, n) == 1:
            return a, b


def slot_indices(k: torch.Tensor, a: int, b: int, n: int) -> torch.Tensor:
    """slot(k) = (a*k + b) mod N in int64 (k < 2^31 and a < N < 2^31 keep a*k below 2^62)."""
    return (k.to(torch.int64) * a + b) % n


@dataclass
class RingLayer:
    """One generated weight: its parameter name, shape, first global index, and scale c_l."""

    name: str
    shape: tuple[int, ...]
    offset: int
    scale: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class RingLayout:
    """Everything needed to regenerate the weights from the ring (saved with it)."""

    n: int
    seed: int
    a: int
    b: int
    layers: list[RingLayer] = field(default_factory=list)

    @property
    def total(self) -> int:
        """T: the number of generated weights."""
        return sum(layer.numel for layer in self.layers)

    @property
    def sign_offset(self) -> int:
        """Seeded offset of the sign hash, s(k) = hash(k + offset). The affine map's groups {k : k = r mod N} do
        not depend on the seed (gcd(a, N) = 1 only relabels slots), so the signs carry the seed's randomness."""
        return int.from_bytes(hashlib.sha256(f"compressor-rpg-sign-{self.seed}".encode()).digest()[:4], "little")

    @property
    def index_length(self) -> int:
        """Length of the index map computed in the forward pass: max(T, MIN_INDEX_LENGTH) (k >= T unused)."""
        return max(self.total, MIN_INDEX_LENGTH)

    def as_dict(self) -> dict[str, Any]:
        return {"N": self.n, "seed": self.seed, "a": self.a, "b": self.b, "index_length": self.index_length,
                "sign_offset": self.sign_offset, "sign_hash": SIGN_HASH,
                "layout": [{"name": l.name, "shape": list(l.shape), "offset": l.offset, "scale": l.scale}
                           for l in self.layers]}

    @classmethod
    def from_dict(cls, entry: dict[str, Any], where: str = "rpg") -> "RingLayout":
        """Parse and check a saved layout; any inconsistency is a one-line ArtifactError."""
        sign_hash = entry.get("sign_hash", "golden-ratio multiplicative") if isinstance(entry, dict) else None
        if sign_hash != SIGN_HASH:
            raise ArtifactError(f"{where}: this ring was saved with the {sign_hash} sign hash; this version "
                                f"generates signs with {SIGN_HASH} and would rebuild different weights; "
                                "compress the source model again")
        try:
            layers = [RingLayer(str(d["name"]), tuple(int(s) for s in d["shape"]), int(d["offset"]),
                                float(d["scale"])) for d in entry["layout"]]
            layout = cls(int(entry["N"]), int(entry["seed"]), int(entry["a"]), int(entry["b"]), layers)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed ring layout in the metadata ({type(exc).__name__}: {exc})")
        if layout.n < 1 or not layers:
            raise ArtifactError(f"{where}: ring layout has N={layout.n} and {len(layers)} layers")
        if int(entry.get("index_length", layout.index_length)) != layout.index_length:
            raise ArtifactError(f"{where}: index length {entry.get('index_length')} differs from this version's "
                                f"{layout.index_length}")
        if int(entry.get("sign_offset", layout.sign_offset)) != layout.sign_offset:
            raise ArtifactError(f"{where}: sign offset does not follow from seed {layout.seed}; the seed or layout "
                                "was tampered with")
        if (layout.a, layout.b) != affine_map_params(layout.seed, layout.n):
            raise ArtifactError(f"{where}: index map (a={layout.a}, b={layout.b}) does not follow from seed "
                                f"{layout.seed} and N={layout.n}; the seed or layout was tampered with")
        offset = 0
        for layer in layers:
            if layer.offset != offset or layer.numel < 1:
                raise ArtifactError(f"{where}: layer {layer.name} has offset {layer.offset}, expected {offset}; "
                                    "the layout was tampered with")
            offset += layer.numel
        return layout


def index_map(layout: RingLayout, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots, signs) for k = 0..length-1 (default T)."""
    k = torch.arange(layout.total if length is None else length, dtype=torch.int64)
    return slot_indices(k, layout.a, layout.b, layout.n), hashed_signs(k + layout.sign_offset)


def scale_vector(layout: RingLayout) -> torch.Tensor:
    """c_k: each generated weight's layer scale (T values)."""
    return torch.cat([torch.full((l.numel,), l.scale, dtype=torch.float32) for l in layout.layers])


@torch.no_grad()
def project(weights: list[torch.Tensor], layout: RingLayout, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The least-squares ring for fixed (slot, s, c) in closed form (docs/ALGORITHMS.md §3):

        A_r = sum_{k: slot(k)=r} s_k c_k w_k  /  sum_{k: slot(k)=r} c_k^2

    Pruned weights (keep[k] False) are left out of both sums (they are zeroed after generation anyway);
    a slot that no kept weight reads gets 0.
    """
    slots, signs = index_map(layout)
    w = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in weights])
    c = scale_vector(layout).to(torch.float64)
    if keep is not None:
        c = c * keep.reshape(-1).to(torch.float64)
    num = torch.zeros(layout.n, dtype=torch.float64).index_add_(0, slots, signs.double() * c * w)
    den = torch.zeros(layout.n, dtype=torch.float64).index_add_(0, slots, c * c)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).to(torch.float32)


def weights_checksum(generated: dict[str, torch.Tensor]) -> str:
    """sha256 of the regenerated weights (float32 bytes, in layout order)."""
    digest = hashlib.sha256()
    for name, t in generated.items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def ring_model(base: nn.Module, layout: RingLayout, ring: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> "RingModel":
    """A `RingModel` whose `forward` has the wrapped model's signature (torch.export matches inputs against it)."""
    sig = inspect.signature(base.forward)
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *sig.parameters.values()]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return RingModel.forward(self, *args, **kwargs)

    forward.__signature__ = sig.replace(parameters=params)
    cls = type("RingModel", (RingModel,), {"forward": forward, "__module__": __name__})
    return cls(base, layout, ring, mask)


class RingModel(nn.Module):
    """A model whose selected weights are generated from one ring in the forward pass.

    The wrapped model is not a registered submodule: its children, parameters and buffers are registered on the
    wrapper under their own names (so state_dict keys and mask names do not change), and the generated weights are
    removed from it. `forward` regenerates them from `rpg_ring` and calls the wrapped model with
    `torch.func.functional_call`, which works on eager modules and `.pt2` GraphModules alike.
    """

    def __init__(self, base: nn.Module, layout: RingLayout, ring: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_base", base)
        self.layout = layout
        owners = []
        for layer in layout.layers:
            owner, attr = _owner(base, layer.name)
            param = owner._parameters.get(attr)
            if param is None:
                raise ArtifactError(f"rpg: the model has no parameter {layer.name} to generate")
            if tuple(param.shape) != layer.shape:
                raise ArtifactError(f"rpg: {layer.name} has shape {tuple(param.shape)}, the ring layout says "
                                    f"{layer.shape}")
            owners.append((owner, attr))
        for owner, attr in owners:  # only once every layer checked out
            del owner._parameters[attr]
        reserved = {RING_NAME, SLOTS_NAME, SIGNS_NAME, MASK_NAME}
        for name, child in base.named_children():
            if name in reserved:
                raise ArtifactError(f"rpg: the model already has a member named {name}")
            self.add_module(name, child)
        for name, p in base._parameters.items():
            if p is not None:
                self.register_parameter(name, p)
        for name, buf in base._buffers.items():
            if buf is not None:
                self.register_buffer(name, buf, persistent=name not in base._non_persistent_buffers_set)
        self._direct = [n for n, v in base._parameters.items() if v is not None] + \
                       [n for n, v in base._buffers.items() if v is not None]
        self.rpg_ring = nn.Parameter(ring.detach().clone() if ring is not None else torch.zeros(layout.n))
        slots, signs = index_map(layout, layout.index_length)
        self.register_buffer(SLOTS_NAME, slots, persistent=False)
        self.register_buffer(SIGNS_NAME, signs, persistent=False)
        if mask is not None:
            # padded with False to the index length, so the exporter cannot fold it (see MIN_INDEX_LENGTH)
            mask = mask.reshape(-1).to(torch.bool)
            if mask.numel() == layout.total:
                mask = torch.cat([mask, torch.zeros(layout.index_length - layout.total, dtype=torch.bool)])
            if mask.numel() != layout.index_length:
                raise ArtifactError(f"rpg: the prune mask has {mask.numel()} values, expected {layout.index_length}")
            self.register_buffer(MASK_NAME, mask.clone())
        else:
            self.register_buffer(MASK_NAME, None)
        self.training = base.training

    @property
    def base(self) -> nn.Module:
        return self._base

    def generate(self) -> dict[str, torch.Tensor]:
        """W_l = reshape(c_l * s * A[slot], shape_l) (then the prune mask, so pruned weights stay zero)."""
        signed = torch.index_select(self.rpg_ring, 0, self.rpg_slots) * self.rpg_signs
        if self.rpg_mask is not None:
            signed = signed * self.rpg_mask.to(signed.dtype)
        out = {}
        for layer in self.layout.layers:
            piece = signed[layer.offset:layer.offset + layer.numel] * layer.scale
            out[layer.name] = piece.reshape(layer.shape)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tensors = {name: getattr(self, name) for name in self._direct}
        tensors.update(self.generate())
        if kwargs and not takes_keywords(self._base, list(kwargs)):
            # torch.export binds inputs to this wrapper's signature by name; a program exported positionally
            # (e.g. nn.Sequential's `input`) refuses keywords, so pass them on in signature order
            args, kwargs = (*args, *kwargs.values()), {}
        return torch.func.functional_call(self._base, tensors, args, kwargs, strict=False)

    def train(self, mode: bool = True) -> "RingModel":
        try:
            self._base.train(mode)
        except NotImplementedError:  # a .pt2 GraphModule refuses: its batch norm stays frozen, as it was exported
            pass
        self.training = mode
        return self

    @torch.no_grad()
    def checksum(self) -> str:
        return weights_checksum(self.generate())
