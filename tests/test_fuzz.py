"""Fuzzing the two file formats compressor reads, through its public surface only.

- model.safetensors (`compressor.load`): >= 300 mutants of a codebook-encoded artifact (a fast prune run on
  digits_mlp with its k-means codebook) plus mutants of a dense one (a quantize run): byte flips, truncations,
  header-length damage, edits of the `compressor` metadata JSON (shapes, bits, nnz, encodings, dtypes, aliases,
  structures, source, format version) and of the stored tensors (dropped, shortened, retyped, re-valued,
  out-of-range codebook indices). Each mutant must either raise the ONE documented exception type,
  `ArtifactError` (`compressor.ArtifactError`, falling back to `compressor.errors.ArtifactError`; a
  `CompressorError`, so CLI code paths print it as one line with exit 1), whose message is one line naming the
  file, or load a module whose outputs equal the original's exactly. Anything else - another exception type, a
  module that computes something else or cannot run - fails.
- `.pt2` inputs (`compress inspect MUTANT`, in-process): >= 100 mutants (byte flips anywhere / inside a zip
  member / in zip headers, truncations, trailing garbage, zeroed ranges, a member removed). Each must be a clean
  error (exit 1, one stderr line naming the file, no traceback or third-party log) or an identical load: exit 0,
  the same inspect output, and the archive holding exactly the original program (weights and outputs).

Reproducible: `derandomize=True`, no example database, no shrinking (each failure message describes its mutant).
Set COMPRESSOR_FUZZ_TALLY=path.jsonl to record every outcome instead of failing at the first (for diagnosis).
"""
from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import HELDOUT, SAMPLES, TRAIN
from tests.test_bad_inputs import DYN, FAST_PRUNE, artifact_error, cli, sha

PT2 = SAMPLES / "digits_mlp.pt2"
SAFETENSORS_CODEBOOK_EXAMPLES = 300
SAFETENSORS_DENSE_EXAMPLES = 40
PT2_EXAMPLES = 110
FUZZ = dict(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck))
TALLY = os.environ.get("COMPRESSOR_FUZZ_TALLY")


def record(target: str, mutation: str, problem: str | None) -> None:
    """Fail on a problem, or (tally mode) append the outcome for the diagnosis."""
    if TALLY:
        with open(TALLY, "a") as fh:
            fh.write(json.dumps({"target": target, "mutation": mutation, "problem": problem}) + "\n")
        return
    assert problem is None, f"{target} mutant {mutation}: {problem}"


# ----------------------------------------------------------------------------------------------- artifacts

def _x() -> torch.Tensor:
    return torch.from_numpy(np.load(HELDOUT)["x"][:96])


@pytest.fixture(scope="session")
def codebook_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-cb") / "out"
    res = cli(PT2, *FAST_PRUNE, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet")
    assert res.code == 0, res
    meta = _split(out / "model.safetensors")[1]
    assert {r["encoding"] for r in meta["encodings"].values()} == {"codebook", "dense"}, meta["encodings"]
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def dense_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-dense") / "out"
    res = cli(PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet")
    assert res.code == 0, res
    return out / "model.safetensors"


def _split(path: Path) -> tuple[bytes, dict, dict]:
    """(raw bytes, compressor metadata, safetensors header)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8: 8 + n])
    return raw, json.loads(header["__metadata__"]["compressor"]), header


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _save(tensors: dict[str, torch.Tensor], meta_text: str | None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()},
                metadata=None if meta_text is None else {"compressor": meta_text})


# ----------------------------------------------------------------------------------------------- safetensors mutants

ODD = st.one_of(
    st.integers(-3, 20), st.sampled_from([2 ** 31, 2 ** 63, 2 ** 70, -2 ** 70]), st.none(), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(-2, 400), max_size=4), st.sampled_from([[300, 64], [64, 300], [10, 100], [1], [], [0, 5]]),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
FIELD_VALUES = {
    "shape": st.one_of(st.sampled_from([[300, 64], [64, 300], [100, 300], [10, 100], [10], [11], [2 ** 40, 2],
                                        [-1, 64], [300, 64, 1], [], [0], "300x64", None]), ODD),
    "bits": st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16, -4, 2 ** 70, "4", 4.0, None]), ODD),
    "nnz": st.one_of(st.integers(-5, 20000), ODD),
    "encoding": st.one_of(st.sampled_from(["dense", "bitmask", "codebook", "bitpack", "zstd", "", None]), ODD),
    "dtype": st.one_of(st.sampled_from(["float32", "float16", "bfloat16", "float64", "int8", "bool", "bogus", None]),
                       ODD),
}


def _flip(draw, kind: str, raw: bytes, lo: int, hi: int) -> tuple[str, bytes]:
    """One byte in [lo, hi] xor-ed with a non-zero value."""
    pos, x = draw(st.integers(lo, hi)), draw(st.integers(1, 255))
    out = bytearray(raw)
    out[pos] ^= x
    return f"{kind}@{pos}^{x}", bytes(out)


def _truncate(draw, raw: bytes) -> tuple[str, bytes]:
    n = draw(st.integers(0, len(raw) - 1))
    return f"truncate@{n}", raw[:n]


@st.composite
def safetensors_mutant(draw, path: Path) -> tuple[str, bytes]:
    raw, meta, header = _split(path)
    hlen = 8 + struct.unpack("<Q", raw[:8])[0]
    names = sorted(meta["encodings"])
    kind = draw(st.sampled_from(["flip_data", "flip_data", "flip_header", "flip_any", "truncate", "header_len",
                                 "meta_field", "meta_field", "meta_drop", "meta_alias", "meta_top", "meta_source",
                                 "meta_text", "tensor", "tensor"]))
    if kind in ("flip_data", "flip_header", "flip_any"):
        lo, hi = {"flip_data": (hlen, len(raw) - 1), "flip_header": (8, hlen - 1),
                  "flip_any": (0, len(raw) - 1)}[kind]
        return _flip(draw, kind, raw, lo, hi)
    if kind == "truncate":
        return _truncate(draw, raw)
    if kind == "header_len":
        v = draw(st.one_of(st.integers(0, 2 ** 64 - 1), st.integers(max(0, hlen - 20), hlen + 20)))
        return f"header_len={v}", struct.pack("<Q", v) + raw[8:]
    tensors = _tensors(path)
    meta = json.loads(json.dumps(meta))
    if kind == "meta_field":
        name, field = draw(st.sampled_from(names)), draw(st.sampled_from(sorted(FIELD_VALUES)))
        value = draw(FIELD_VALUES[field])
        meta["encodings"][name][field] = value
        return f"encodings[{name}][{field}]={value!r}", _save(tensors, json.dumps(meta))
    if kind == "meta_drop":
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["<record>", "shape", "bits", "nnz", "encoding", "dtype"]))
        if field == "<record>":
            del meta["encodings"][name]
        else:
            meta["encodings"][name].pop(field, None)
        return f"drop encodings[{name}]{'' if field == '<record>' else '[' + field + ']'}", \
            _save(tensors, json.dumps(meta))
    if kind == "meta_alias":
        alias = draw(st.one_of(st.sampled_from(names), st.sampled_from(["fc9.weight", "", "fc1.weight::codebook"])))
        target = draw(st.one_of(st.sampled_from(names), st.sampled_from(["nope", alias, "fc1.weight::indices"]),
                                ODD))
        meta["aliases"] = {**meta.get("aliases", {}), alias: target}
        return f"aliases[{alias!r}]={target!r}", _save(tensors, json.dumps(meta))
    if kind == "meta_top":
        key = draw(st.sampled_from(["format_version", "encodings", "aliases", "structures", "source", "stages"]))
        value = draw(st.one_of(ODD, st.sampled_from([[{"kind": "rpg"}], [{"kind": "basis"}], [{"kind": "zz"}],
                                                     {"kind": "rpg"}, 2, 99])))
        meta[key] = value
        return f"meta[{key}]={value!r}", _save(tensors, json.dumps(meta))
    if kind == "meta_source":
        field = draw(st.sampled_from(["format", "path", "sha256", "arch", "cwd"]))
        value = draw(st.one_of(ODD, st.sampled_from(["pt2", "torchscript", "pickle", "state_dict",
                                                     str(SAMPLES / "digits_cnn.pt2"), "0" * 64])))
        meta["source"][field] = value
        if field == "path" and value == str(SAMPLES / "digits_cnn.pt2"):  # another real model, checksum matching
            meta["source"].update(format="pt2", sha256=sha(SAMPLES / "digits_cnn.pt2"))
        return f"source[{field}]={value!r}", _save(tensors, json.dumps(meta))
    if kind == "meta_text":
        text = json.dumps(meta)
        choice = draw(st.sampled_from(["cut", "not-json", "list", "number", "empty", "missing"]))
        new = {"cut": text[: draw(st.integers(0, len(text) - 1))], "not-json": "{'single': quotes}",
               "list": "[1, 2]", "number": "7", "empty": "", "missing": None}[choice]
        return f"metadata text {choice}", _save(tensors, new)
    # kind == "tensor"
    key = draw(st.sampled_from(sorted(tensors)))
    op = draw(st.sampled_from(["drop", "shorten", "extend", "retype", "revalue", "indices_max", "codebook_short",
                               "rename", "reshape"]))
    t = tensors[key]
    if op == "drop":
        del tensors[key]
    elif op == "shorten":
        tensors[key] = t.reshape(-1)[: draw(st.integers(0, max(0, t.numel() - 1)))].clone()
    elif op == "extend":
        tensors[key] = torch.cat([t.reshape(-1), t.reshape(-1)[:3]]).clone()
    elif op == "retype":
        dtype = draw(st.sampled_from([torch.float16, torch.float64, torch.int32, torch.uint8, torch.int64, torch.bool]))
        tensors[key] = t.to(dtype)
    elif op == "revalue":  # same shape, dtype and size: only a checksum can tell
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
        if t.is_floating_point():
            tensors[key] = (t + torch.randn(t.shape, generator=gen).to(t.dtype) * 0.5).contiguous()
        else:
            tensors[key] = torch.randint(0, 256, t.shape, generator=gen).to(t.dtype)
    elif op == "indices_max":
        tensors[key] = torch.full_like(t, 255) if t.dtype == torch.uint8 else t * 1000
    elif op == "codebook_short":
        tensors[key] = t.reshape(-1)[: max(1, t.numel() // 4)].clone()
    elif op == "rename":
        tensors[key + "_x"] = tensors.pop(key)
    elif op == "reshape":
        tensors[key] = t.reshape(1, -1).clone() if t.ndim != 2 or t.shape[0] != 1 else t.reshape(-1).clone()
    return f"tensor[{key}] {op}", _save(tensors, json.dumps(meta))


def _where(exc: BaseException) -> str:
    """The innermost compressor frame of a traceback (file:line), to point at the code responsible."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/compressor/" in f.filename.replace("\\", "/")]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{'/'.join(Path(f.filename).parts[-3:])}:{f.lineno}"


def check_artifact(mutant: Path, x: torch.Tensor, ref: torch.Tensor) -> str | None:
    """None when the mutant is a clean ArtifactError naming the file, or an identical load; else the problem."""
    import compressor

    before = sha(mutant)
    try:
        model = compressor.load(mutant)
    except artifact_error() as exc:
        msg = str(exc)
        if "\n" in msg or not msg.strip():
            return f"ArtifactError message is not one line: {msg!r}"
        if mutant.name not in msg:
            return f"ArtifactError does not name the file: {msg[:200]!r}"
        return None if sha(mutant) == before else "the file was modified"
    except Exception as exc:  # noqa: BLE001
        return f"unexpected {type(exc).__name__} at {_where(exc)}: {str(exc).strip()[:160]!r}"
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001
        return f"loaded, then the module fails: {type(exc).__name__}: {str(exc).strip()[:120]!r}"
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape or not torch.equal(out, ref):
        diff = float((out - ref).abs().max()) if isinstance(out, torch.Tensor) and out.shape == ref.shape else None
        return f"silent wrong load (max |diff| {diff})"
    return None


def _fuzz_safetensors(base: Path, tmp: Path, examples: int, target: str) -> int:
    import compressor

    x = _x()
    with torch.no_grad():
        ref = compressor.load(base)(x)
    counter = itertools.count()

    @settings(max_examples=examples, **FUZZ)
    @given(st.data())
    def run(data):
        desc, blob = data.draw(safetensors_mutant(base), label="mutant")
        i = next(counter)
        mutant = tmp / f"mutant-{i:04d}.safetensors"
        mutant.write_bytes(blob)
        try:
            record(target, desc, check_artifact(mutant, x, ref))
        finally:
            mutant.unlink(missing_ok=True)

    run()
    return next(counter)


def test_fuzz_codebook_safetensors(codebook_artifact, tmp_path):
    n = _fuzz_safetensors(codebook_artifact, tmp_path, SAFETENSORS_CODEBOOK_EXAMPLES, "codebook")
    assert n >= 300, n


def test_fuzz_dense_safetensors(dense_artifact, tmp_path):
    n = _fuzz_safetensors(dense_artifact, tmp_path, SAFETENSORS_DENSE_EXAMPLES, "dense")
    assert n >= SAFETENSORS_DENSE_EXAMPLES * 0.9, n


# ----------------------------------------------------------------------------------------------- .pt2 mutants

def _zip_regions(raw: bytes) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of member data, local headers and the central directory of the archive."""
    regions: dict[str, list[tuple[int, int]]] = {"data": [], "local": [], "central": []}
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        infos = zf.infolist()
        cd_start = zf.start_dir
    for info in infos:
        off = info.header_offset
        n, m = struct.unpack("<HH", raw[off + 26: off + 30])
        start = off + 30 + n + m
        regions["local"].append((off, start - 1))
        if info.file_size:
            regions["data"].append((start, start + info.compress_size - 1))
    regions["central"].append((cd_start, len(raw) - 1))
    return regions


@st.composite
def pt2_mutant(draw) -> tuple[str, bytes]:
    raw = PT2.read_bytes()
    regions = _zip_regions(raw)
    kind = draw(st.sampled_from(["flip_data", "flip_data", "flip_data", "flip_local", "flip_central", "flip_any",
                                 "truncate", "append", "zero_range", "drop_member"]))
    if kind.startswith("flip"):
        if kind == "flip_any":
            lo, hi = 0, len(raw) - 1
        else:
            lo, hi = draw(st.sampled_from(regions[kind[5:]]))
        return _flip(draw, kind, raw, lo, hi)
    if kind == "truncate":
        return _truncate(draw, raw)
    if kind == "append":
        extra = draw(st.binary(min_size=1, max_size=64))
        return f"append {len(extra)} bytes", raw + extra
    if kind == "zero_range":
        lo, hi = draw(st.sampled_from(regions["data"]))
        start = draw(st.integers(lo, hi))
        n = draw(st.integers(1, 64))
        out = bytearray(raw)
        out[start: start + n] = bytes(len(out[start: start + n]))
        return f"zero {n}@{start}", bytes(out)
    with zipfile.ZipFile(PT2) as zf:
        members = [i.filename for i in zf.infolist()]
    drop = draw(st.sampled_from(members))
    buf = io.BytesIO()
    with zipfile.ZipFile(PT2) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename != drop:
                dst.writestr(info, src.read(info.filename))
    return f"drop member {drop}", buf.getvalue()


def _program_equal(path: Path, ref_state: dict, x: torch.Tensor, ref: torch.Tensor) -> str | None:
    try:
        program = torch.export.load(str(path))
        state = program.state_dict
        if set(state) != set(ref_state) or any(not torch.equal(state[k], ref_state[k]) for k in ref_state):
            return "silent wrong load (weights differ from the original)"
        with torch.no_grad():
            out = program.module()(x)
        if not torch.equal(out, ref):
            return "silent wrong load (outputs differ)"
    except Exception as exc:  # noqa: BLE001
        return f"exit 0 on an archive torch cannot read back ({type(exc).__name__})"
    return None


def test_fuzz_pt2_inputs(tmp_path):
    x = _x()
    program = torch.export.load(str(PT2))
    ref_state = {k: v.clone() for k, v in program.state_dict.items()}
    with torch.no_grad():
        ref = program.module()(x)
    shutil.copy(PT2, tmp_path / "mutant-orig.pt2")  # same name length as the mutants: same table widths
    ok = cli("inspect", tmp_path / "mutant-orig.pt2")
    assert ok.code == 0, ok

    def norm(stdout: str, name: str) -> str:
        return "".join(stdout.split()).replace(name, "<model>")  # rich wraps long paths: compare without spaces

    ref_stdout = norm(ok.stdout, "mutant-orig.pt2")
    counter = itertools.count()

    @settings(max_examples=PT2_EXAMPLES, **FUZZ)
    @given(st.data())
    def run(data):
        desc, blob = data.draw(pt2_mutant(), label="mutant")
        i = next(counter)
        mutant = tmp_path / f"mutant-{i:04d}.pt2"
        mutant.write_bytes(blob)
        try:
            res = cli("inspect", mutant)
            problem = None
            if sha(mutant) != __import__("hashlib").sha256(blob).hexdigest():
                problem = "the input was modified"
            elif res.code == 0:
                got = norm(res.stdout, mutant.name)
                if got != ref_stdout:
                    at = next((k for k, (a, b) in enumerate(zip(got, ref_stdout)) if a != b), min(len(got),
                                                                                                len(ref_stdout)))
                    problem = f"exit 0 with a different inspect output: {got[max(0, at - 40): at + 60]!r}"
                else:
                    problem = _program_equal(mutant, ref_state, x, ref)
                lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
                if problem is None and lines:
                    problem = f"exit 0 but stderr: {res.stderr[:200]!r}"
            else:
                lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
                if res.code != 1:
                    problem = f"exit {res.code}"
                elif len(lines) != 1 or "Traceback" in res.stderr:
                    problem = f"{len(lines)} stderr lines (traceback/log before the error): {lines[0][:120]!r}"
                elif mutant.name not in lines[0]:
                    problem = f"error does not name the file: {lines[0][:160]!r}"
                elif "unexpected" in lines[0]:
                    problem = f"unexpected exception type: {lines[0][:160]!r}"
            record("pt2", desc, problem)
        finally:
            mutant.unlink(missing_ok=True)

    run()
    assert next(counter) >= 100


# ----------------------------------------------------------------------------------------------- crafted archives

CRAFTED_EXAMPLES = 60
PICKLE_FLAGS = [True, 1, "yes", "false", [1], {"x": 1}]
EXPRESSIONS = ["__import__('os').system('true')", "open('m', 'w')", "s0.__class__", "S('open(1)')",
               "lambdify(s0, 'x')", "Symbol('s0').func", "eval('1')", "[c for c in s0]", "s0 if s0 else 2",
               "\"s0\"", "(lambda: 1)()", "getattr(s0, 'x')", "Integer(1).__reduce__()", "exec", "Mul(s0, open)"]
TARGETS = ["torch.serialization.os.system", "_operator.call", "_operator.methodcaller", "_operatorX.call",
           "math.__class__", "torch.ops.__class__.x.y", "torch.ops.aten.__init__.__globals__", "torchvision.io.x",
           "torch.save", "torch.hub.load", "torch.ops.load_library", "#ext.op", "torch._dynamo.eval_frame.x"]


@st.composite
def crafted_mutant(draw, tmp: Path, marker: Path) -> tuple[str, Path]:
    """A copy of digits_mlp.pt2 with a payload wherever torch would run code, in a random guise."""
    from tests import test_security as sec

    def case(tail: str) -> str:
        return "".join(c.upper() if draw(st.booleans()) else c for c in tail) if draw(st.booleans()) else tail

    kind = draw(st.sampled_from(["weight", "constant", "sample_inputs", "legacy_weights", "legacy_constants",
                                 "old_format", "expression", "target", "aotinductor"]))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    dst, payload = tmp / "crafted.pt2", sec.pickled(marker)
    replace, add, rename, desc = {}, {}, {}, kind
    if kind == "weight":
        cfg = sec.member_json(sec.WEIGHTS_CONFIG)
        fqn = draw(st.sampled_from(sorted(cfg["config"])))
        flag = draw(st.sampled_from(PICKLE_FLAGS))
        cfg["config"][fqn]["use_pickle"] = flag
        member = f"data/weights/{cfg['config'][fqn]['path_name']}"
        replace = {sec.WEIGHTS_CONFIG: json.dumps(cfg).encode(), member: payload}
        rename = {sec.WEIGHTS_CONFIG: case(sec.WEIGHTS_CONFIG)}
        desc = f"{kind} {fqn} use_pickle={flag!r}"
    elif kind == "constant":
        name = draw(st.sampled_from(["tensor_0", "custom_obj_0", "opaque_obj_0"]))
        entry = {"path_name": name, "is_param": False, "use_pickle": name == "tensor_0", "tensor_meta": None}
        replace = {sec.CONSTANTS_CONFIG: json.dumps({"config": {"c": entry}}).encode()}
        add = {case(f"data/constants/{name}"): pickle.dumps(sec.Payload(marker)) if "obj" in name else payload}
        desc = f"{kind} {name}"
    elif kind in ("sample_inputs", "legacy_weights", "legacy_constants"):
        tail = {"sample_inputs": "data/sample_inputs/model.pt", "legacy_weights": "data/weights/model.pt",
                "legacy_constants": "data/constants/model.pt"}[kind]
        (replace if kind == "sample_inputs" else add)[tail] = payload
        rename = {tail: case(tail)}
        if kind != "sample_inputs":
            add = {case(tail): payload}
    elif kind == "old_format":
        add = {"version": b"8.13", case("serialized_state_dict.pt"): payload}
    elif kind == "expression":
        doc = sec.member_json("models/model.json")
        values = doc["graph_module"]["graph"]["tensor_values"]
        name, expr = draw(st.sampled_from(sorted(values))), draw(st.sampled_from(EXPRESSIONS))
        values[name]["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 4}}}
        replace, desc = {"models/model.json": json.dumps(doc).encode()}, f"{kind} {expr!r} in {name}"
    elif kind == "target":
        doc = sec.member_json("models/model.json")
        nodes = doc["graph_module"]["graph"]["nodes"]
        i, target = draw(st.integers(0, len(nodes) - 1)), draw(st.sampled_from(TARGETS))
        nodes[i]["target"] = target
        replace, desc = {"models/model.json": json.dumps(doc).encode()}, f"{kind} {target} at node {i}"
    else:
        add = {case("data/aotinductor/model/model.so"): b"\x7fELF" + bytes(60)}
    sec.rewrite(dst, replace, add, rename, compression=compression)
    return f"{desc} ({'deflated' if compression else 'stored'})", dst


def test_fuzz_crafted_archives_never_run_code(tmp_path):
    """Every crafted archive is refused (exit 1, one line naming the file, no traceback, no 'unexpected') by
    `compress inspect`; the payload never runs (its marker file never appears) and the file is never changed."""
    marker, counter, executions = tmp_path / "MARKER", itertools.count(), []

    @settings(max_examples=CRAFTED_EXAMPLES, **FUZZ)
    @given(st.data())
    def run(data):
        desc, mutant = data.draw(crafted_mutant(tmp_path, marker), label="crafted")
        next(counter)
        before = sha(mutant)
        res = cli("inspect", mutant)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        problem = None
        if marker.exists():
            executions.append(desc)
            marker.unlink()
            problem = "the payload ran"
        elif sha(mutant) != before:
            problem = "the input was modified"
        elif res.code != 1 or len(lines) != 1 or "Traceback" in res.stderr:
            problem = f"exit {res.code}, {len(lines)} stderr lines: {res.stderr[:200]!r}"
        elif mutant.name not in lines[0] or "unexpected" in lines[0]:
            problem = f"error line: {lines[0][:200]!r}"
        record("crafted", desc, problem)

    run()
    assert next(counter) >= CRAFTED_EXAMPLES and not executions, executions
