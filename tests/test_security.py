"""Loading never runs code, archives cannot exhaust memory, --out cannot be raced, and every refusal is one line.

Crafted `.pt2` files are real attacks: a copy of digits_mlp.pt2 rewritten with valid CRCs whose payload, once
unpickled (or evaluated), creates a marker file. Each test shows torch itself would run it (the marker appears
when torch.export.load reads the file directly), then that compressor refuses it (exit 1, one `error:` line
naming the member) without the marker ever appearing, the input unchanged and nothing left beside --out.
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import HELDOUT, ROOT, SAMPLES
from tests.test_bad_inputs import DYN, ENTRY, PT, PT2, artifact_error, assert_one_line, cli, quant_out, sha, \
    staging_siblings, sub  # noqa: F401 - quant_out is a fixture

ROOT_NAME = "digits_mlp"


class Payload:
    """Unpickling it opens (creates) the marker file: code from the archive ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


def rewrite(dst: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None,
            rename: dict[str, str] | None = None, src: Path = PT2, compression: int = zipfile.ZIP_STORED) -> Path:
    """A copy of `src` with members (named below the archive's root folder) replaced, renamed or added; every
    CRC valid, so the archive check alone passes it."""
    replace, add, rename = replace or {}, add or {}, rename or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            root, _, tail = info.filename.partition("/")
            zout.writestr(f"{root}/{rename.get(tail, tail)}", replace.get(tail, zin.read(info)))
        for tail, data in add.items():
            zout.writestr(f"{ROOT_NAME}/{tail}", data)
    return dst


def member_json(tail: str) -> dict:
    with zipfile.ZipFile(PT2) as zf:
        return json.loads(zf.read(f"{ROOT_NAME}/{tail}"))


WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


def use_pickle_weight(dst: Path, marker: Path) -> Path:
    cfg = member_json(WEIGHTS_CONFIG)
    cfg["config"]["fc1.weight"]["use_pickle"] = True
    return rewrite(dst, {WEIGHTS_CONFIG: json.dumps(cfg).encode(), "data/weights/weight_0": pickled(marker)})


def sample_inputs(dst: Path, marker: Path) -> Path:
    return rewrite(dst, {"data/sample_inputs/model.pt": pickled(marker)})


def sample_inputs_other_case(dst: Path, marker: Path) -> Path:
    """torch's zip reader looks names up ignoring case: this member is still read as the sample inputs."""
    return rewrite(dst, {"data/sample_inputs/model.pt": pickled(marker)},
                   rename={"data/sample_inputs/model.pt": "DATA/Sample_Inputs/MODEL.pt"})


def opaque_constant(dst: Path, marker: Path) -> Path:
    cfg = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False,
                            "tensor_meta": None}}}
    return rewrite(dst, {CONSTANTS_CONFIG: json.dumps(cfg).encode()},
                   add={"data/constants/opaque_obj_0": pickled(marker)})


def sympy_expression(dst: Path, marker: Path) -> Path:
    """A symbolic size torch parses with sympy.sympify, i.e. Python's eval."""
    doc = member_json("models/model.json")
    values = doc["graph_module"]["graph"]["tensor_values"]
    values[next(iter(values))]["sizes"][0] = {"as_expr": {
        "expr_str": f"__import__('builtins').open('{marker}', 'w') and s0", "hint": {"as_int": 4}}}
    return rewrite(dst, {"models/model.json": json.dumps(doc).encode()})


def node_target(dst: Path, marker: Path) -> Path:
    """A node calling a Python function reached through torch's attributes (called when the model runs)."""
    doc = member_json("models/model.json")
    doc["graph_module"]["graph"]["nodes"][2]["target"] = "torch.serialization.os.system"
    return rewrite(dst, {"models/model.json": json.dumps(doc).encode()})


def aoti_member(dst: Path, marker: Path) -> Path:
    return rewrite(dst, add={"data/aotinductor/model/model.so": b"\x7fELF" + bytes(60)})


# (builder, a word the error line must hold, torch itself runs the payload)
CRAFTED = {
    "use_pickle": (use_pickle_weight, "weight_0", True),
    "sample_inputs": (sample_inputs, "sample_inputs/model.pt", True),
    "sample_inputs_case": (sample_inputs_other_case, "MODEL.pt", True),
    "opaque_constant": (opaque_constant, "opaque_obj_0", False),
    "sympy_expression": (sympy_expression, "symbolic expression", True),
    "node_target": (node_target, "torch.serialization.os.system", False),
    "aotinductor": (aoti_member, "aotinductor", False),
}


def torch_runs_it(path: Path, marker: Path) -> bool:
    """Whether torch.export.load on its own creates the marker (the crafted file is a live attack)."""
    try:
        torch.export.load(str(path))
    except Exception:
        pass
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def assert_refused(res, path: Path, needle: str, tmp: Path) -> None:
    line = assert_one_line(res, 1, tmp=tmp)
    assert needle.lower() in line.lower() and "--trust-pickle" in line, line
    assert str(path.name) in line, line


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_pt2_never_runs_code(kind, tmp_path):
    build, needle, live = CRAFTED[kind]
    marker = tmp_path / "MARKER"
    crafted = build(tmp_path / f"{kind}.pt2", marker)
    if live:
        assert torch_runs_it(crafted, marker), "the crafted file should run its payload under plain torch"
    before, out = sha(crafted), tmp_path / "o"
    assert_refused(cli(crafted, *DYN, "--data", HELDOUT, "--out", out, "--quiet"), crafted, needle, tmp_path)
    assert_refused(cli("inspect", crafted), crafted, needle, tmp_path)
    assert not marker.exists() and sha(crafted) == before
    assert not out.exists() and not staging_siblings(out)


@pytest.mark.parametrize("kind", ["use_pickle", "sample_inputs"])
def test_crafted_pt2_trusted_only_with_trust_pickle(kind, tmp_path):
    """--trust-pickle is the one opt-in: the same file is then handed to torch as it is."""
    marker = tmp_path / "MARKER"
    crafted = CRAFTED[kind][0](tmp_path / "m.pt2", marker)
    cli("inspect", crafted, "--trust-pickle")
    assert marker.exists()


@pytest.mark.parametrize("kind", ["use_pickle", "sample_inputs"])
def test_crafted_source_of_an_artifact_never_runs_code(kind, quant_out, tmp_path):
    """compressor.load rebuilds from the source named in the metadata: the same checks hold there."""
    import compressor
    from compressor.io.safetensors_io import header_sha256
    from tests.test_fuzz import _save, _split, _tensors

    marker = tmp_path / "MARKER"
    crafted = CRAFTED[kind][0](tmp_path / "src.pt2", marker)
    art = tmp_path / "art"
    shutil.copytree(quant_out, art)
    _, meta, _ = _split(art / "model.safetensors")
    meta["source"].update(path=str(crafted), sha256=sha(crafted))
    meta["checksums"]["header"] = header_sha256(meta)
    (art / "model.safetensors").write_bytes(_save(_tensors(art / "model.safetensors"), json.dumps(meta)))
    with pytest.raises(artifact_error()) as info:
        compressor.load(art)
    msg = str(info.value)
    assert "\n" not in msg and "model.safetensors" in msg and CRAFTED[kind][1] in msg, msg
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- zip bombs

def bomb_pt2(dst: Path, size: int = 1 << 30) -> Path:
    """digits_mlp.pt2 plus a hidden member of `size` zeros, deflated (1 GiB -> about 1 MB on disk), CRC valid. The
    deflate stream is one block repeated (each ends in a full flush, so the blocks are identical): built in
    well under a second instead of compressing a gigabyte."""
    raw = PT2.read_bytes()
    eocd = raw.rfind(b"PK\x05\x06")
    _, _, _, count, _, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", raw[eocd:eocd + 22])
    chunk = min(size, 16 << 20)
    zeros, comp = bytes(chunk), zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH) == block
    data = block * (size // chunk) + comp.flush()
    crc = 0
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    name = f"{ROOT_NAME}/.data/pad".encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0) + name
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0, 0,
                          0, 0, 0, cd_offset) + name
    cd = raw[cd_offset:cd_offset + cd_size] + central
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count + 1, count + 1, len(cd),
                      cd_offset + len(local) + len(data), 0)
    dst.write_bytes(raw[:cd_offset] + local + data + cd + end)
    return dst


# VmHWM: this process's own peak (ru_maxrss would carry the forking pytest worker's peak across exec), read once
# compressor and torch are imported (the command line imports a run's modules only when it runs: loaded first
# here) and again at exit: what the run itself added
RSS_WRAPPER = ("import sys\nimport compressor.run.command\nfrom compressor.cli import entrypoint\n"  # a run's imports
               "report = sys.argv.pop(1)\n"
               "def peak():\n    return int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
               "imported = peak()\ntry:\n    entrypoint()\nfinally:\n"
               "    open(report, 'w').write(f'{imported} {peak()}')\n")
ADDED_CEILING_MB = 64  # loading the clean digits_mlp.pt2 alone adds about 110 MB; inflating the member, 1 GiB


def test_zip_bomb_refused_fast_within_a_memory_ceiling(tmp_path):
    bomb = bomb_pt2(tmp_path / "bomb.pt2")
    assert bomb.stat().st_size < 2 << 20
    before, rss_file, out = sha(bomb), tmp_path / "rss", tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RSS_WRAPPER, str(rss_file), str(bomb), *DYN, "--data", str(HELDOUT),
                        "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    seconds = time.perf_counter() - t0
    imported_kb, peak_kb = map(int, rss_file.read_text().split())
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and len(lines) == 1 and "zip bomb" in lines[0] and ".data/pad" in lines[0], p.stderr
    assert "COMPRESSOR_MAX_ZIP_RATIO" in lines[0]
    assert (peak_kb - imported_kb) / 1024 < ADDED_CEILING_MB, (imported_kb, peak_kb)
    assert seconds < 60, seconds  # a cold start of torch on a busy machine; the refusal itself takes milliseconds
    assert sha(bomb) == before and not out.exists() and not staging_siblings(out)
    res = cli("inspect", bomb)
    assert_one_line(res, 1, "zip bomb", tmp=tmp_path)


def test_zip_bomb_limits_are_configurable(tmp_path, monkeypatch):
    bomb = bomb_pt2(tmp_path / "b.pt2", 4 << 20)  # 4 MiB of zeros
    assert "zip bomb" in assert_one_line(cli("inspect", bomb), 1, tmp=tmp_path)
    monkeypatch.setenv("COMPRESSOR_MAX_ZIP_RATIO", "100000")
    assert cli("inspect", bomb).code == 0
    monkeypatch.setenv("COMPRESSOR_MAX_UNPACKED_BYTES", str(1 << 20))
    assert "COMPRESSOR_MAX_UNPACKED_BYTES" in assert_one_line(cli("inspect", bomb), 1, tmp=tmp_path)


def test_npz_bomb_refused(tmp_path):
    data = tmp_path / "bomb.npz"
    np.savez_compressed(data, x=np.zeros((1 << 14, 1024), dtype=np.float32))  # 64 MiB of zeros
    res = cli(PT2, *DYN, "--data", data, "--out", tmp_path / "o", "--quiet")
    assert_one_line(res, 1, "bomb.npz", "zip bomb", tmp=tmp_path)


# ----------------------------------------------------------------------------------------------- --out

def test_two_concurrent_runs_into_one_out(tmp_path):
    out = tmp_path / "o"
    args = [*ENTRY, PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    lines = [ln for ln in refused.splitlines() if ln.strip()]
    assert len(lines) == 1 and ("another compress run" in lines[0] or "not empty" in lines[0]), refused
    assert (out / "report.json").is_file() and (out / "model.onnx").is_file()
    assert not staging_siblings(out), staging_siblings(out)


def test_live_lock_refuses_and_a_dead_one_is_taken_over(tmp_path):
    out, lock = tmp_path / "o", tmp_path / ".o.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(holder.pid))
        res = cli(PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet")
        assert_one_line(res, 1, "another compress run", str(holder.pid), tmp=tmp_path)
        assert lock.read_text() == str(holder.pid) and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: its lock is taken over (the run gets as far as loading the model, refused here)
    crafted = use_pickle_weight(tmp_path / "m.pt2", tmp_path / "MARKER")
    assert_one_line(cli(crafted, *DYN, "--data", HELDOUT, "--out", out, "--quiet"), 1, "weight_0", tmp=tmp_path)
    assert not lock.exists() and not out.exists() and not staging_siblings(out)


@pytest.mark.parametrize("target", ["dir", "dangling"])
def test_symlinked_out_refused_before_any_work(target, tmp_path):
    real = tmp_path / "real"
    if target == "dir":
        real.mkdir()
        (real / "keep.txt").write_text("mine")
    link = tmp_path / "o"
    link.symlink_to(real)
    res = cli(PT2, *DYN, "--data", HELDOUT, "--out", link, "--quiet", "--force")
    assert_one_line(res, 1, "symbolic link", tmp=tmp_path)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["o", "real"] if target == "dir" else ["o"])
    if target == "dir":
        assert [p.name for p in real.iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------------------------- recipes

ALIAS_BOMB = "".join(f"{c}: &{c} [{','.join([f'*{p}'] * 9) if p else ','.join(['lol'] * 9)}]\n"
                     for p, c in zip(["", *"abcdefgh"], "abcdefghi"))


def test_yaml_alias_bomb_fails_fast(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 400
    t0 = time.perf_counter()
    res = cli(PT2, "--pipeline", recipe, "--data", HELDOUT, "--out", tmp_path / "o")
    assert time.perf_counter() - t0 < 10
    assert_one_line(res, 2, "bomb.yaml", "line", "aliases", tmp=tmp_path)


@pytest.mark.parametrize("text,needles", [
    ("stages:\n  - quantize\n  - !!python/name:os.system\n", ("line 3", "python/name")),
    ("stages:\n  - quantize: !!python/object/apply:os.system [\"touch x\"]\n", ("line 2", "python/object")),
    ("stages:\n  - quantize: {mode: [dynamic\n", ("line 3",)),
])
def test_recipe_tags_and_syntax_are_usage_errors(text, needles, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    res = cli(PT2, "--pipeline", recipe, "--data", HELDOUT, "--out", tmp_path / "o", cwd=tmp_path)
    assert_one_line(res, 2, "r.yaml", *needles, tmp=tmp_path)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("option,value", [("--seed", "abc"), ("--seed", "1.5"), ("--max-drop", "abc"),
                                          ("--threads", "0")])
def test_option_errors_are_one_line(option, value, tmp_path):
    res = cli(PT2, "--data", HELDOUT, "--out", tmp_path / "o", option, value)
    line = assert_one_line(res, 2, option, tmp=tmp_path)
    assert line.startswith("error: ") and "╭" not in res.stderr and "Usage" not in res.stderr


def test_factory_exiting_is_an_error(tmp_path):
    arch = tmp_path / "arch.py"
    arch.write_text("import sys\ndef quits():\n    sys.exit(0)\nclass Odd(BaseException):\n    pass\n"
                    "def odd():\n    raise Odd('boom')\n")
    for factory, needle in (("quits", "SystemExit"), ("odd", "Odd")):
        res = cli(PT, "--arch", f"{arch}:{factory}", *DYN, "--data", HELDOUT, "--out", tmp_path / "o", "--quiet")
        assert_one_line(res, 1, "--arch", needle, tmp=tmp_path)
    assert not (tmp_path / "o").exists() and not staging_siblings(tmp_path / "o")


def test_directory_as_data_and_resume_with_nothing_to_resume(tmp_path):
    res = cli(PT2, *DYN, "--data", tmp_path, "--out", tmp_path / "o", "--quiet")
    assert_one_line(res, 1, "is a directory", tmp=tmp_path)
    res = cli(PT2, *DYN, "--data", HELDOUT, "--out", tmp_path / "o", "--quiet", "--resume")
    assert_one_line(res, 2, "--resume", "nothing to resume", tmp=tmp_path)


def test_file_too_large_names_the_file(tmp_path):
    """A write failing mid-run (RLIMIT_FSIZE, in this process for the call only): one line naming the file."""
    out, soft_hard = tmp_path / "o", resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, soft_hard[1]))
    try:
        res = cli(PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, soft_hard)
        signal.signal(signal.SIGXFSZ, previous)
    line = assert_one_line(res, 1, "file too large", tmp=tmp_path)
    assert ".onnx" in line or ".safetensors" in line, line
    assert not out.exists() and not staging_siblings(out)


# ----------------------------------------------------------------------------------------------- the rules

def test_every_sample_program_passes_the_check():
    from compressor.io.pt2_check import check_pt2

    for path in sorted(SAMPLES.glob("*.pt2")):
        check_pt2(path)


@pytest.mark.parametrize("expr,ok", [
    ("Symbol('s53', positive=True, integer=True)", True),
    ("Mul(Integer(4), Pow(Symbol('s53', positive=True, integer=True), Integer(2)))", True),
    ("CeilToInt(IntTrueDiv(s0, 2)) + Max(1, u3) - Float('1.5', precision=53)", True),
    ("Piecewise((s0, Eq(s1, 1)), (-oo, True))", True),
    ("__import__('os').system('x')", False), ("s0.__class__", False), ("S('1')", False), ("open('m', 'w')", False),
    ("lambda: 1", False), ("\"s0\"", False), ("[s0]", False), ("s0; s1", False), ("Symbol('a b')", False),
])
def test_symbolic_expressions(expr, ok):
    from compressor.io.pt2_check import safe_expression

    assert safe_expression(expr) is ok


@pytest.mark.parametrize("target,ok", [
    ("torch.ops.aten.linear.default", True), ("torch.ops.higher_order.cond", True), ("_operator.getitem", True),
    ("math.ceil", True), ("torch.sym_max", True),
    ("torch.serialization.os.system", False), ("_operator.call", False), ("torch.ops.load_library", False),
    ("torch.ops.aten.__class__.x", False), ("math.__loader__", False), ("#ns.op", False), ("torchvision.x", False),
    # registered operators with a dunder name (an attention mask's `&`), but no other dunder anywhere
    ("torch.ops.aten.__and__.Tensor", True), ("torch.ops.aten.__lshift__.Scalar", True),
    ("torch.ops.aten.__getattribute__.default", False), ("torch.ops.aten.add.__init__", False),
    ("torch.ops.__builtins__.__and__.Tensor", False),
])
def test_node_targets(target, ok):
    from compressor.io.pt2_check import safe_target

    assert safe_target(target) is ok


class MaskedLinear(torch.nn.Module):
    """An attention-mask style `&` of two boolean tensors: exported as aten.__and__.Tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * ((x > -1) & (x < 1)))


def test_pt2_with_a_dunder_operator_loads_untrusted(tmp_path):
    from compressor.io.load import load_model

    program = torch.export.export(MaskedLinear().eval(), (torch.randn(2, 8),))
    assert any("__and__" in str(n.target) for n in program.graph.nodes)
    torch.export.save(program, str(tmp_path / "masked.pt2"))
    loaded = load_model(tmp_path / "masked.pt2")
    x = torch.randn(2, 8)
    assert torch.equal(loaded.module(x), program.module()(x))
