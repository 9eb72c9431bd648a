"""The ring's hashed sign s(k): murmur3's 32-bit finaliser (fmix32), in int64 torch and in ONNX nodes alike.

Wang et al. (WACV 2023, docs/ALGORITHMS.md §3) give every generated weight an i.i.d. random sign so that weights
sharing a ring slot (N apart in our affine index map) are decorrelated. A single multiplicative hash
((k * 2654435761) mod 2^32) >> 31 is a golden-ratio sequence: its signs at lag N correlate +0.6 to +1.0 for some N
(measured at N = 8645 and 4181), which undoes the flips. fmix32 (Appleby, MurmurHash3) is a bijection of 32-bit
integers with full avalanche:

    h ^= h >> 16;  h = h * 0x85EBCA6B mod 2^32;  h ^= h >> 13;  h = h * 0xC2B2AE35 mod 2^32;  h ^= h >> 16
    s(k) = 1 - 2 * (fmix32((k + o) mod 2^32) >> 31)        (o: the seeded sign offset)

Measured: max |sign correlation| over lags 1,000..100,000 on 2^21 signs < 0.01 (tests/test_rpg.py).

Integer arithmetic that runs identically in int64 torch and ONNX (opset >= 18 for BitwiseXor): values stay in
[0, 2^32), so shifts are exact integer divisions by 2^s, and each product mod 2^32 is split over the 16-bit halves
of the multiplier, h*M = h*M_lo + ((h*M_hi) mod 2^16) * 2^16 (mod 2^32), so no intermediate exceeds 2^48.
`SIGN_HASH` is recorded in every saved ring layout: an artifact made with another hash is refused on load.
"""
from __future__ import annotations

import torch

SIGN_HASH = "fmix32"
BITWISE_XOR_OPSET = 18  # the first ai.onnx opset with BitwiseXor
FMIX_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)
FMIX_SHIFTS = (16, 13, 16)
_TWO16, _TWO31, _TWO32 = 1 << 16, 1 << 31, 1 << 32

# integer constants the ONNX nodes read, by name
CONSTANTS = {"two32": _TWO32, "two31": _TWO31, "two16": _TWO16, "two13": 1 << 13, "one": 1, "two": 2,
             **{f"m{i}_{half}": v for i, m in enumerate(FMIX_MULTIPLIERS)
                for half, v in zip(("hi", "lo"), divmod(m, _TWO16))}}


def _mul_mod32(h: torch.Tensor, m: int) -> torch.Tensor:
    m_hi, m_lo = divmod(m, _TWO16)
    return (h * m_lo + ((h * m_hi) % _TWO16) * _TWO16) % _TWO32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's finaliser of int64 values in [0, 2^32), returned in [0, 2^32)."""
    h = torch.bitwise_xor(h, h // (1 << FMIX_SHIFTS[0]))
    h = _mul_mod32(h, FMIX_MULTIPLIERS[0])
    h = torch.bitwise_xor(h, h // (1 << FMIX_SHIFTS[1]))
    h = _mul_mod32(h, FMIX_MULTIPLIERS[1])
    return torch.bitwise_xor(h, h // (1 << FMIX_SHIFTS[2]))


def hashed_signs(k: torch.Tensor) -> torch.Tensor:
    """s(k) = 1 - 2*(fmix32(k mod 2^32) >> 31), as float32 +-1 (k already carries the seeded offset)."""
    h = fmix32(k.to(torch.int64) % _TWO32)
    return (1 - 2 * (h // _TWO31)).to(torch.float32)


def onnx_sign_spec(k: str, offset: str, c: dict[str, str]) -> list[tuple[str, list[str], str, dict]]:
    """(op, inputs, output, attributes) computing the int64 sign 1 - 2*(fmix32((k + offset) mod 2^32) >> 31) into
    "sign_int"; `c` maps the names of `CONSTANTS` to their initializers. Intermediate names are bare."""
    spec: list[tuple[str, list[str], str, dict]] = [
        ("Add", [k, offset], "ks", {}), ("Mod", ["ks", c["two32"]], "h0", {"fmod": 0})]

    def xorshift(src: str, shift: int, out: str) -> None:
        spec.extend([("Div", [src, c[f"two{shift}"]], f"{out}_shifted", {}),
                     ("BitwiseXor", [src, f"{out}_shifted"], out, {})])

    def mul_mod32(src: str, i: int, out: str) -> None:
        spec.extend([("Mul", [src, c[f"m{i}_lo"]], f"{out}_lo", {}), ("Mul", [src, c[f"m{i}_hi"]], f"{out}_hi", {}),
                     ("Mod", [f"{out}_hi", c["two16"]], f"{out}_hi16", {"fmod": 0}),
                     ("Mul", [f"{out}_hi16", c["two16"]], f"{out}_hi_shift", {}),
                     ("Add", [f"{out}_lo", f"{out}_hi_shift"], f"{out}_sum", {}),
                     ("Mod", [f"{out}_sum", c["two32"]], out, {"fmod": 0})])

    xorshift("h0", FMIX_SHIFTS[0], "h1")
    mul_mod32("h1", 0, "h2")
    xorshift("h2", FMIX_SHIFTS[1], "h3")
    mul_mod32("h3", 1, "h4")
    xorshift("h4", FMIX_SHIFTS[2], "h")
    spec.extend([("Div", ["h", c["two31"]], "bit", {}), ("Mul", ["bit", c["two"]], "bit2", {}),
                 ("Sub", [c["one"], "bit2"], "sign_int", {})])
    return spec
