"""Every bad input gives one line on stderr, the documented exit code (2 usage/option value, 1 bad file),
leaves its inputs byte-for-byte unchanged and leaves no output (no --out, no `.<out>.*` staging sibling).

Only the public surface is used: the `compress` CLI (`compressor.cli.entrypoint`, in-process with sys.argv patched,
or as a subprocess where exit status, real stderr or signals matter) and `compressor.load`.
The one exception type `compressor.load` raises for a malformed artifact is `ArtifactError` (a `CompressorError`,
exit code 1); tests prefer `compressor.ArtifactError` and fall back to `compressor.errors.ArtifactError`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from tests.conftest import HELDOUT, SAMPLES, TRAIN

PT2 = SAMPLES / "digits_mlp.pt2"
PT = SAMPLES / "digits_mlp.pt"
ARCH = f"{SAMPLES / 'digits_models.py'}:mlp"
DYN = ("--pipeline", "quantize", "--set", "quantize.mode=dynamic")
# a fast prune run that writes stage checkpoints (codebook on, no fine-tuning)
FAST_PRUNE = ("--pipeline", "prune", "--set", "prune.schedule=0.5", "--set", "prune.epochs_per_step=0",
              "--set", "prune.codebook=on", "--set", "prune.codebook_epochs=0", "--set", "prune.patience=0")
ENTRY = [sys.executable, "-c", "from compressor.cli import entrypoint; entrypoint()"]


# ----------------------------------------------------------------------------------------------- helpers

def artifact_error() -> type[BaseException]:
    import compressor

    t = getattr(compressor, "ArtifactError", None)
    if t is None:
        from compressor.errors import ArtifactError as t
    return t


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout[-600:]!r}, stderr={self.stderr[-1500:]!r})"


@contextlib.contextmanager
def fd2_captured():
    """Capture what bypasses sys.stderr (C++ warnings, handlers bound to the real stream) at the fd level."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


@contextlib.contextmanager
def logging_to(stream, real_stderr):
    """Handlers that third-party libraries bound to the process's stderr (torch's logging) write where a real
    process's stderr would go."""
    import logging

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    swapped = []
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and h.stream in (real_stderr, sys.__stderr__):
                swapped.append((h, h.setStream(stream)))
    try:
        yield
    finally:
        for h, old in swapped:
            h.setStream(old)


def cli(*args, cwd: Path | None = None) -> Result:
    """`compressor.cli.entrypoint` in-process (as the installed `compress` script runs it, warning filters
    included), stdout/stderr captured at the Python and the fd level; an exception escaping it counts as a
    traceback (exit 1)."""
    import io
    import traceback
    import warnings

    from compressor.cli import entrypoint

    old_cwd, old_argv, old_out, old_err = os.getcwd(), sys.argv, sys.stdout, sys.stderr
    out_buf, err_buf = io.StringIO(), io.StringIO()
    code = 0
    if cwd is not None:
        os.chdir(cwd)
    try:
        with fd2_captured() as fd2, warnings.catch_warnings(), logging_to(err_buf, old_err):
            warnings.resetwarnings()
            warnings.simplefilter("default")
            sys.argv, sys.stdout, sys.stderr = ["compress", *map(str, args)], out_buf, err_buf
            try:
                entrypoint()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException as exc:  # noqa: BLE001 - what escaped the CLI
                err_buf.write("Traceback (escaped the CLI):\n" + "".join(traceback.format_exception(exc)))
                code = 1
            finally:
                sys.argv, sys.stdout, sys.stderr = old_argv, old_out, old_err
    finally:
        os.chdir(old_cwd)
    return Result(code, out_buf.getvalue(), err_buf.getvalue() + fd2["text"])


def sub(*args, cwd: Path | None = None, timeout: float = 120, **kw) -> Result:
    p = subprocess.run([*ENTRY, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, **kw)
    return Result(p.returncode, p.stdout, p.stderr)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 (dirs as 'dir') of everything under path."""
    if not path.exists():
        return {}
    out = {}
    for p in sorted(path.rglob("*")):
        out[str(p.relative_to(path))] = "dir" if p.is_dir() else sha(p)
    return out


def staging_siblings(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.glob(f".{out.name}.*"))


def assert_one_line(res: Result, code: int, *needles: str, any_of: tuple[str, ...] = (),
                    tmp: Path | None = None) -> str:
    """Exit code, exactly one non-empty stderr line, no traceback, and the needles in that line (the test's own
    temporary directory is masked first, so its name cannot satisfy a needle)."""
    assert res.code == code, res
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res
    assert "Traceback" not in res.stderr + res.stdout, res
    line = lines[0].replace(str(tmp), "<tmp>").lower() if tmp is not None else lines[0].lower()
    for n in needles:
        assert n.lower() in line, (n, lines[0])
    if any_of:
        assert any(n.lower() in line for n in any_of), (any_of, lines[0])
    return lines[0]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def quant_out(tmp_path_factory) -> Path:
    """A complete output of the cheapest pipeline (dynamic int8 of digits_mlp.pt2)."""
    out = tmp_path_factory.mktemp("bad-quant") / "out"
    res = cli(PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet")
    assert res.code == 0, res
    return out


@pytest.fixture(scope="session")
def ckpt_out(tmp_path_factory) -> Path:
    """A complete fast prune run with its checkpoints kept (the base of the --resume cases)."""
    out = tmp_path_factory.mktemp("bad-ckpt") / "out"
    res = cli(PT2, *FAST_PRUNE, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet",
              "--keep-checkpoints")
    assert res.code == 0, res
    assert (out / ".checkpoints" / "stage-00-prune" / "record.json").is_file()
    return out


# ----------------------------------------------------------------------------------------------- the matrix

@dataclass
class Case:
    """`build(tmp, fixtures)` returns (cli args, extra input files, --out path, existing --out to keep intact)."""

    id: str
    code: int
    build: Callable
    needles: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    fixtures: tuple[str, ...] = ()


def _std(*extra, data=HELDOUT, pipeline=DYN):
    def build(tmp, fx):
        out = tmp / "o"
        return [PT2, *pipeline, "--data", data, *extra, "--out", out, "--quiet"], [], out, False
    return build


def _model(make: Callable[[Path], Path], *extra, pipeline=DYN):
    def build(tmp, fx):
        model = make(tmp)
        out = tmp / "o"
        return [model, *pipeline, "--data", HELDOUT, *extra, "--out", out, "--quiet"], [model], out, False
    return build


def _data(make: Callable[[Path], Path], flag="--data", pipeline=DYN, extra=()):
    def build(tmp, fx):
        data = make(tmp)
        out = tmp / "o"
        base = ["--data", HELDOUT] if flag != "--data" else []
        return [PT2, *pipeline, *base, flag, data, *extra, "--out", out, "--quiet"], [data], out, False
    return build


def _npz(name, **arrays):
    def make(tmp):
        p = tmp / name
        np.savez(p, **arrays)
        return p
    return make


def _bytes(name, content: Callable[[], bytes]):
    def make(tmp):
        p = tmp / name
        p.write_bytes(content())
        return p
    return make


def _flip_member(member_suffix: str, offset: int = 17):
    """Flip one byte inside a stored zip member's data: the member fails its CRC, the archive stays well-formed."""
    def content():
        raw = bytearray(PT2.read_bytes())
        with zipfile.ZipFile(PT2) as zf:
            info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
        # local header: 30 bytes + name + extra
        n = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little")
        m = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
        start = info.header_offset + 30 + n + m
        raw[start + min(offset, info.file_size - 1)] ^= 0x5A
        return bytes(raw)
    return content


def _without_member(member_suffix: str):
    def content():
        import io

        buf = io.BytesIO()
        with zipfile.ZipFile(PT2) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                if not info.filename.endswith(member_suffix):
                    dst.writestr(info, src.read(info.filename))
        return buf.getvalue()
    return content


def _not_checkpoint_zip():
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("hello.txt", "not a model")
    return buf.getvalue()


def _x(n=20):
    return np.load(HELDOUT)["x"][:n]


def _y(n=20):
    return np.load(HELDOUT)["y"][:n]


def _train_bad_label(tmp):
    d = np.load(TRAIN)
    y = d["y"].copy()
    y[7] = 12  # 10 classes
    p = tmp / "train_badlabel.npz"
    np.savez(p, x=d["x"], y=y)
    return p


def _recipe_bad_key(tmp):
    p = tmp / "bad_recipe.yaml"
    p.write_text("seed: 0\nstages:\n  - quantize: {mode: dynamic, modee: static}\n")
    return p


def _recipe_case(tmp, fx):
    r = _recipe_bad_key(tmp)
    out = tmp / "o"
    return [PT2, "--pipeline", r, "--data", HELDOUT, "--out", out, "--quiet"], [r], out, False


def _readonly_out(tmp, fx):
    out = tmp / "ro"
    out.mkdir()
    out.chmod(0o555)
    return [PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet"], [], out, True


def _nonempty_out(tmp, fx):
    out = tmp / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    return [PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet"], [], out, True


def _out_is_file(tmp, fx):
    out = tmp / "o"
    out.write_text("i am a file")
    return [PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet"], [], out, True


def _out_holds_input(tmp, fx):
    out = tmp / "o"
    out.mkdir()
    model = out / "m.pt2"
    shutil.copy(PT2, model)
    return [model, *DYN, "--data", HELDOUT, "--out", out, "--quiet", "--force"], [model], out, True


def _resume(mutate: Callable[[Path], None]):
    def build(tmp, fx):
        out = tmp / "o"
        shutil.copytree(fx["ckpt_out"], out)
        mutate(out / ".checkpoints")
        return [PT2, *FAST_PRUNE, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet",
                "--resume"], [], out, True
    return build


def _empty_record(ck: Path):
    (ck / "stage-00-prune" / "record.json").write_text("")


def _empty_fingerprint(ck: Path):
    (ck / "fingerprint.json").write_text("")


def _truncated_ckpt_weights(ck: Path):
    w = ck / "stage-00-prune" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])


def _record_not_object(ck: Path):
    (ck / "stage-00-prune" / "record.json").write_text("[1, 2, 3]")


def _resume_without_checkpoints(tmp, fx):
    out = tmp / "o"
    out.mkdir()
    return [PT2, *FAST_PRUNE, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet", "--resume"], \
        [], out, True


def _force_failing_run(tmp, fx):
    """--force over a complete previous output, and the new run fails: the old output stays as it was."""
    out = tmp / "o"
    shutil.copytree(fx["quant_out"], out)
    data = tmp / "labels.npz"
    np.savez(data, x=_x(), y=np.where(np.arange(20) == 3, 12, _y()))
    return [PT2, *DYN, "--data", data, "--out", out, "--quiet", "--force"], [data], out, True


SHRINK1 = ("--pipeline", "shrink", "--set", "shrink.epochs=1")

CASES = [
    # --- option values: exit 2 before any work, not a whole pipeline run ending in exit 3 / exit 1
    Case("max-drop-negative", 2, _std("--max-drop", "-1"), ("--max-drop",)),
    Case("max-drop-nan", 2, _std("--max-drop", "nan"), ("--max-drop",)),
    Case("max-drop-inf", 2, _std("--max-drop", "inf"), ("--max-drop",)),
    Case("max-bytes-negative", 2, _std("--max-bytes", "-5"), ("--max-bytes",)),
    Case("max-bytes-zero", 2, _std("--max-bytes", "0"), ("--max-bytes",)),
    Case("min-recovery-2", 2, _std("--min-recovery", "2"), ("--min-recovery",)),
    Case("min-recovery-negative", 2, _std("--min-recovery", "-0.5"), ("--min-recovery",)),
    Case("min-recovery-nan", 2, _std("--min-recovery", "nan"), ("--min-recovery",)),
    Case("seed-2**70", 2, _std("--seed", str(2 ** 70)), ("--seed",)),
    Case("seed-2**62", 2, _std("--seed", str(2 ** 62)), ("--seed",)),
    Case("seed-negative", 2, _std("--seed", "-1"), ("--seed",)),
    Case("floor-cosine-above-1", 2, _std("--floor", "cosine_min=2"), ("--floor",)),
    Case("floor-not-a-number", 2, _std("--floor", "accuracy=abc"), ("--floor",)),
    Case("floor-unknown-metric", 2, _std("--floor", "bogus=1"), ("bogus",)),
    Case("unknown-stage", 2, _std(pipeline=("--pipeline", "quantize,shrinkk")), ("shrinkk",)),
    Case("stage-order", 2, _std(pipeline=("--pipeline", "quantize,prune")), ("prune",)),
    Case("unknown-option", 2, _std("--set", "quantize.modee=static"), ("quantize.modee",)),
    Case("bad-option-value", 2, _std("--set", "quantize.mode=int4"), ("int4",), any_of=("static",)),
    Case("option-out-of-range", 2, _std("--train-data", TRAIN, pipeline=("--pipeline", "prune", "--set",
                                                                         "prune.target=1.5")), ("target",)),
    Case("set-stage-not-in-pipeline", 2, _std("--set", "prune.target=0.5"), ("prune",)),
    Case("device-unknown", 2, _std("--device", "tpu"), ("--device",)),
    Case("missing-data-option", 2, lambda tmp, fx: ([PT2, *DYN, "--out", tmp / "o", "--quiet"], [], tmp / "o",
                                                   False), ("--data",)),
    Case("recipe-unknown-key", 2, _recipe_case, ("bad_recipe.yaml", "modee")),
    Case("state-dict-without-arch", 2, _model(lambda tmp: PT), ("--arch",)),
    # --- bad model files: exit 1, naming the file
    Case("model-missing", 1, lambda tmp, fx: ([tmp / "nope.pt2", *DYN, "--data", HELDOUT, "--out", tmp / "o",
                                               "--quiet"], [], tmp / "o", False), ("nope.pt2", "not found")),
    Case("model-empty", 1, _model(_bytes("empty.pt2", lambda: b"")), ("empty.pt2", "empty")),
    Case("model-garbage", 1, _model(_bytes("garbage.pt2", lambda: b"hello\n" * 50)),
         ("garbage.pt2", "unknown model format")),
    Case("pt2-truncated-half", 1, _model(_bytes("trunc.pt2", lambda: PT2.read_bytes()[: PT2.stat().st_size // 2])),
         ("trunc.pt2", "truncated")),
    Case("pt2-truncated-tail", 1, _model(_bytes("tail.pt2", lambda: PT2.read_bytes()[:-10])),
         ("tail.pt2", "truncated")),
    Case("pt2-crc-weight", 1, _model(_bytes("crcw.pt2", _flip_member("weights/weight_0", 4000))),
         ("crcw.pt2",), any_of=("crc", "corrupt")),
    Case("pt2-crc-bias", 1, _model(_bytes("crcb.pt2", _flip_member("weights/weight_5", 3))),
         ("crcb.pt2",), any_of=("crc", "corrupt")),
    Case("pt2-crc-model-json", 1, _model(_bytes("crcj.pt2", _flip_member("models/model.json", 200))),
         ("crcj.pt2",), any_of=("crc", "corrupt")),
    Case("pt2-member-missing", 1, _model(_bytes("miss.pt2", _without_member("weights/weight_2"))), ("miss.pt2",)),
    Case("zip-not-a-checkpoint", 1, _model(_bytes("other.pt2", _not_checkpoint_zip)), ("other.pt2",)),
    Case("arch-file-missing", 1, _model(lambda tmp: PT, "--arch", "/nonexistent/arch.py:mlp"), ("arch.py",)),
    Case("arch-does-not-fit", 1, _model(lambda tmp: PT, "--arch", f"{SAMPLES / 'digits_models.py'}:cnn"),
         ("do not fit",)),
    # --- bad data files: exit 1, naming the file
    Case("data-missing", 1, _std(data=Path("/nonexistent/heldout.npz")), ("heldout.npz", "not found")),
    Case("data-broken-npz", 1, _data(_bytes("broken.npz", lambda: b"PK\x03\x04 broken")), ("broken.npz",)),
    Case("data-keys", 1, _data(_npz("keys.npz", image=np.zeros((3, 1, 8, 8), np.float32),
                                   other=np.zeros((3, 2), np.float32))), ("keys.npz",)),
    Case("data-labels-misnamed", 1, _data(_npz("misnamed.npz", x=_x(), labels=_y())), ("misnamed.npz", "'labels'",
                                                                                         "under 'y'")),
    Case("data-nan", 1, _data(_npz("nan.npz", x=np.full((4, 1, 8, 8), np.nan, np.float32))), ("nan.npz", "nan")),
    Case("data-wrong-shape", 1, _data(_npz("shape.npz", x=np.zeros((5, 1, 9, 9), np.float32))), ("(5, 1, 9, 9)",)),
    Case("data-empty-array", 1, _data(_npz("emptyx.npz", x=np.zeros((0, 1, 8, 8), np.float32))), ("emptyx.npz",)),
    Case("heldout-label-out-of-range", 1, _data(_npz("lab.npz", x=_x(), y=np.where(np.arange(20) == 3, 12, _y()))),
         ("lab.npz", "12")),
    Case("heldout-label-negative", 1, _data(_npz("neg.npz", x=_x(), y=np.where(np.arange(20) == 3, -1, _y()))),
         ("neg.npz",)),
    Case("train-label-out-of-range", 1, _data(_train_bad_label, flag="--train-data", pipeline=SHRINK1,
                                              extra=("--val-data", HELDOUT)), ("train_badlabel.npz", "12")),
    Case("calib-data-broken", 1, _data(_bytes("calib.npz", lambda: b"PK\x03\x04 nope"), flag="--calib-data",
                                       pipeline=("--pipeline", "quantize")), ("calib.npz",)),
    # --- output directory
    Case("out-is-a-file", 1, _out_is_file, ("not a directory",)),
    Case("out-not-empty", 1, _nonempty_out, ("not empty", "--force")),
    Case("out-readonly-empty", 1, _readonly_out, ("ro",), any_of=("read-only", "not writable")),
    Case("out-holds-input", 1, _out_holds_input, ("m.pt2",)),
    Case("force-failing-run-keeps-old-output", 1, _force_failing_run, ("labels.npz",), fixtures=("quant_out",)),
    # --- resume: checkpoint errors name the file
    Case("resume-without-checkpoints", 1, _resume_without_checkpoints, ("--resume",)),
    Case("resume-empty-record-json", 1, _resume(_empty_record), ("record.json",), fixtures=("ckpt_out",)),
    Case("resume-record-not-object", 1, _resume(_record_not_object), ("record.json",), fixtures=("ckpt_out",)),
    Case("resume-empty-fingerprint-json", 1, _resume(_empty_fingerprint), ("fingerprint.json",),
         fixtures=("ckpt_out",)),
    Case("resume-truncated-checkpoint-weights", 1, _resume(_truncated_ckpt_weights), ("weights.safetensors",),
         fixtures=("ckpt_out",)),
]


def test_matrix_is_large_enough():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, request):
    fx = {name: request.getfixturevalue(name) for name in case.fixtures}
    args, extra_inputs, out, out_existed = case.build(tmp_path, fx)
    inputs = [p for p in [PT2, PT, HELDOUT, TRAIN, *extra_inputs] if Path(p).is_file()]
    before = {str(p): sha(Path(p)) for p in inputs}
    out_before = tree(out) if out.is_dir() else (sha(out) if out.is_file() else None)
    mode_before = out.stat().st_mode if out.exists() else None
    res = cli(*args)
    assert_one_line(res, case.code, *case.needles, any_of=case.any_of, tmp=tmp_path)
    assert before == {str(p): sha(Path(p)) for p in inputs}, "an input file was modified"
    if out_existed:
        assert out.exists(), "a pre-existing --out was removed"
        assert (tree(out) if out.is_dir() else sha(out)) == out_before, "a pre-existing --out was changed"
        assert out.stat().st_mode == mode_before
    else:
        assert not out.exists(), f"partial output left: {tree(out)}"
    assert not staging_siblings(out), f"staging left: {staging_siblings(out)}"


# ----------------------------------------------------------------------------------------------- loading

def _rewrite_meta(src_dir: Path, dst_dir: Path, edit: Callable[[dict], None]) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    dst_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / "model.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        meta = json.loads(fh.metadata()["compressor"])
    edit(meta)
    # a crafted artifact recomputes its metadata checksum (documented: sha256 of the canonical JSON of every field
    # but `checksums`), so the loader's refusal to run code is tested, not the checksum
    body = {k: v for k, v in meta.items() if k != "checksums"}
    meta["checksums"]["header"] = hashlib.sha256(json.dumps(body, sort_keys=True,
                                                            separators=(",", ":")).encode()).hexdigest()
    dst = dst_dir / "model.safetensors"
    save_file(load_file(str(src)), str(dst), metadata={"compressor": json.dumps(meta)})
    return dst


EVIL = """
from pathlib import Path
Path({marker!r}).write_text("code ran at import")
def factory():
    Path({marker!r}).write_text("code ran in the factory")
    import torch
    return torch.nn.Linear(1, 1)
"""


@pytest.mark.parametrize("form", ["module-with-cwd", "file-path"])
def test_crafted_arch_runs_no_code_on_load(quant_out, tmp_path, form):
    """Metadata naming a module that writes a file: compressor.load without opt-in writes nothing."""
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    marker = tmp_path / "PWNED"
    modname = f"evil_{form.replace('-', '_')}"
    (evil_dir / f"{modname}.py").write_text(EVIL.format(marker=str(marker)))
    if form == "module-with-cwd":
        source = {"format": "state_dict", "arch": f"{modname}:factory", "cwd": str(evil_dir)}
    else:
        source = {"format": "state_dict", "arch": f"{evil_dir / (modname + '.py')}:factory", "cwd": None}
    art = _rewrite_meta(quant_out, tmp_path / "art", lambda m: m.__setitem__("source", source))
    before, path_before = sha(art), list(sys.path)
    import compressor

    raised: BaseException | None = None
    try:
        compressor.load(art.parent)
    except Exception as exc:  # noqa: BLE001 - the type is checked below, after the marker
        raised = exc
    finally:
        sys.modules.pop(modname, None)
        path_changed = sys.path != path_before
        sys.path[:] = path_before
    assert not marker.exists(), f"loading the artifact ran code named in its metadata: {marker.read_text()}"
    assert isinstance(raised, artifact_error()), repr(raised)
    msg = str(raised)
    assert "\n" not in msg and modname in msg, msg  # the architecture name is shown, as data
    assert sha(art) == before and not path_changed, "the artifact changed, or loading it changed sys.path"


def test_crafted_arch_cannot_abort_the_process(quant_out, tmp_path):
    """`source.arch = "os:abort"` must not abort the loading process."""
    art = _rewrite_meta(quant_out, tmp_path / "art",
                        lambda m: m.__setitem__("source", {"format": "state_dict", "arch": "os:abort", "cwd": None}))
    code = ("import sys, compressor\n"
            "try:\n    compressor.load(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__, e); sys.exit(7)\n")
    p = subprocess.run([sys.executable, "-c", code, str(art.parent)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 7, (p.returncode, p.stdout, p.stderr[-800:])
    assert p.stdout.startswith("ArtifactError"), p.stdout


def _write_raw(dst: Path, tensors: dict, meta_text: str | None) -> Path:
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    f = dst / "model.safetensors"
    save_file(tensors, str(f), metadata=None if meta_text is None else {"compressor": meta_text})
    return dst


def _load_case(name: str, src: Path, dst: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(src / "model.safetensors"))
    with safe_open(str(src / "model.safetensors"), framework="pt") as fh:
        meta_text = fh.metadata()["compressor"]
    meta = json.loads(meta_text)
    if name == "no-model-safetensors":
        dst.mkdir(parents=True)
        return dst
    if name == "metadata-not-json":
        return _write_raw(dst, tensors, meta_text[: len(meta_text) // 2])
    if name == "metadata-missing":
        return _write_raw(dst, tensors, None)
    if name == "dense-value-flipped":  # same shapes, different weights: only a checksum can tell
        tensors = dict(tensors)
        t = tensors["fc3.bias"].clone()
        t[0] += 1.0
        tensors["fc3.bias"] = t
        return _write_raw(dst, tensors, meta_text)
    if name == "missing-tensor":
        tensors = {k: v for k, v in tensors.items() if k != "fc3.bias"}
        return _write_raw(dst, tensors, meta_text)
    if name == "shape-wrong":
        meta["encodings"]["fc3.bias"] = {"encoding": "dense"}
        tensors = dict(tensors)
        tensors["fc3.bias"] = torch.zeros(11)
        return _write_raw(dst, tensors, json.dumps(meta))
    if name == "encoding-unknown":
        meta["encodings"]["fc3.bias"] = {"encoding": "zstd"}
        return _write_raw(dst, tensors, json.dumps(meta))
    if name == "format-version-future":
        meta["format_version"] = 99
        return _write_raw(dst, tensors, json.dumps(meta))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["no-model-safetensors", "metadata-not-json", "metadata-missing",
                                  "dense-value-flipped", "missing-tensor", "shape-wrong", "encoding-unknown",
                                  "format-version-future"])
def test_load_malformed_artifact(quant_out, tmp_path, name):
    import compressor

    art = _load_case(name, quant_out, tmp_path / "art")
    before = tree(art)
    with pytest.raises(artifact_error()) as info:
        compressor.load(art)
    msg = str(info.value)
    assert "\n" not in msg and "model.safetensors" in msg and str(art) in msg, msg
    assert tree(art) == before


# ----------------------------------------------------------------------------------------------- outputs

def test_force_rerun_cleans_stale_staging(quant_out, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(quant_out, out)
    stale = tmp_path / f".o.tmp-{dead_pid()}"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    res = cli(PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet", "--force")
    assert res.code == 0, res
    assert not staging_siblings(out), staging_siblings(out)


def test_force_replaces_every_artifact(quant_out, tmp_path):
    """After --force, no compressor artifact of the previous run survives beside the new ones (a prune run's
    sparsity.png beside a quantize-only report is exactly 'new model files beside an old report')."""
    out = tmp_path / "o"
    shutil.copytree(quant_out, out)
    (out / "sparsity.png").write_bytes(b"from an older run")
    res = cli(PT2, *DYN, "--data", HELDOUT, "--out", out, "--quiet", "--force")
    assert res.code == 0, res
    assert not (out / "sparsity.png").exists()
    assert not staging_siblings(out)


def test_stale_checkpoint_debris_cleaned(ckpt_out, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(ckpt_out, out)
    debris = out / ".checkpoints" / f".tmp-00-{dead_pid()}"
    debris.mkdir()
    (debris / "weights.safetensors").write_bytes(b"half")
    res = cli(PT2, *FAST_PRUNE, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet", "--resume",
              "--keep-checkpoints")
    assert res.code == 0, res
    assert not list((out / ".checkpoints").glob(".tmp-*")), list((out / ".checkpoints").iterdir())
    assert not staging_siblings(out)


def _wait_for_staging(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not staging_siblings(out):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "the run never created its staging directory"
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the run (loading, baseline, training)


def _default_sigint() -> None:
    """The child starts with SIGINT at its default, as from a terminal: a shell's background job (how CI may launch
    the suite) inherits SIGINT ignored, and the tool rightly keeps what it inherits."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_run(tmp_path, sig):
    """SIGTERM is handled like SIGINT: one line, non-zero exit, no staging directory, no --out."""
    out = tmp_path / "o"
    proc = subprocess.Popen([*ENTRY, str(PT2), "--pipeline", "shrink", "--set", "shrink.epochs=500", "--data",
                             str(HELDOUT), "--train-data", str(TRAIN), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        _wait_for_staging(out, proc)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    res = Result(proc.returncode, stdout, stderr)
    problems = []
    if not (res.code is not None and res.code > 0):  # exited by itself, not killed by the signal
        problems.append(f"exit status {res.code}")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if len(lines) != 1 or "Traceback" in stderr:
        problems.append(f"stderr is not one line: {stderr[-500:]!r}")
    if staging_siblings(out):
        problems.append(f"staging left: {staging_siblings(out)}")
    if out.exists() and [p for p in out.iterdir() if p.name != ".checkpoints"]:
        problems.append(f"partial output: {tree(out)}")
    assert not problems, problems


def test_force_signal_keeps_old_output(quant_out, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(quant_out, out)
    before = tree(out)
    proc = subprocess.Popen([*ENTRY, str(PT2), "--pipeline", "shrink", "--set", "shrink.epochs=500", "--data",
                             str(HELDOUT), "--train-data", str(TRAIN), "--out", str(out), "--quiet", "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        _wait_for_staging(out, proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    problems = []
    if not proc.returncode > 0:
        problems.append(f"exit status {proc.returncode}")
    if tree(out) != before:
        problems.append("the previous output changed")
    if staging_siblings(out):
        problems.append(f"staging left: {staging_siblings(out)}")
    assert not problems, problems


def test_enospc_during_checkpoint(tmp_path):
    """A write failure (RLIMIT_FSIZE stands in for a full disk) while checkpointing: one line naming the file,
    no checkpoint debris, no staging directory."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "o"
    res = sub(PT2, *FAST_PRUNE, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet",
              preexec_fn=limit)
    problems = []
    if staging_siblings(out):
        problems.append(f"staging left: {staging_siblings(out)}")
    if out.exists() and list(out.rglob(".tmp-*")):
        problems.append(f"checkpoint debris left: {list(out.rglob('.tmp-*'))}")
    try:
        line = assert_one_line(res, 1, tmp=tmp_path)
        if ".checkpoints" not in line and "weights.safetensors" not in line:
            problems.append(f"the error names no file: {line}")
    except AssertionError as exc:
        problems.append(str(exc))
    assert not problems, problems
