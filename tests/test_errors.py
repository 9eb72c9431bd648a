"""Every bad input ends with one line, a non-zero exit code, no traceback, inputs untouched, nothing in --out."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from sample_models.digits_models import DigitsMLP
from tests.conftest import HELDOUT, SAMPLES, TRAIN, run_cli

PT2 = SAMPLES / "digits_mlp.pt2"


def assert_clean_error(res, code: int, *needles: str) -> None:
    assert res.code == code, res
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, res
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


def compress(*args, out, dynamic: bool = True):
    """Dynamic quantization by default, so no calibration data is needed (static without it is a usage error)."""
    extra = ("--set", "quantize.mode=dynamic") if dynamic and not any("quantize.mode" in str(a) for a in args) else ()
    return run_cli(*args, *extra, "--out", out, "--quiet")


def test_missing_model(tmp_path):
    res = compress(tmp_path / "nope.pt2", "--data", HELDOUT, out=tmp_path / "o")
    assert_clean_error(res, 1, "not found", "nope.pt2")
    assert not (tmp_path / "o").exists()


def test_truncated_pt2(tmp_path):
    bad = tmp_path / "trunc.pt2"
    bad.write_bytes(PT2.read_bytes()[: PT2.stat().st_size // 2])
    res = compress(bad, "--data", HELDOUT, out=tmp_path / "o")
    assert_clean_error(res, 1, "trunc.pt2")
    assert not (tmp_path / "o").exists()


def test_unknown_format_names_accepted_formats(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_text("hello, I am not a model\n" * 10)
    res = compress(bad, "--data", HELDOUT, out=tmp_path / "o")
    assert_clean_error(res, 1, "unknown model format", ".pt2", "torchscript", "--arch")


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.pt"
    bad.write_bytes(b"")
    assert_clean_error(compress(bad, "--data", HELDOUT, out=tmp_path / "o"), 1, "empty")


def test_pickle_refused_without_opt_in_then_accepted(tmp_path):
    path = tmp_path / "whole.pt"
    model = DigitsMLP()
    model.load_state_dict(torch.load(SAMPLES / "digits_mlp.pt", weights_only=True))
    torch.save(model, path)
    before = path.read_bytes()
    res = compress(path, "--data", HELDOUT, out=tmp_path / "o")
    assert_clean_error(res, 1, "--trust-pickle", "runs code")
    res = compress(path, "--data", HELDOUT, "--trust-pickle", "--set", "quantize.mode=dynamic", out=tmp_path / "o2")
    assert res.code == 0, res
    assert path.read_bytes() == before


def test_state_dict_without_arch_is_usage_error(tmp_path):
    res = compress(SAMPLES / "digits_mlp.pt", "--data", HELDOUT, out=tmp_path / "o")
    assert_clean_error(res, 2, "--arch")


def test_arch_that_does_not_fit(tmp_path):
    res = compress(SAMPLES / "digits_mlp.pt", "--arch", f"{SAMPLES / 'digits_models.py'}:cnn", "--data", HELDOUT,
                   out=tmp_path / "o")
    assert_clean_error(res, 1, "do not fit")


def test_wrong_input_shape(tmp_path):
    data = tmp_path / "wrong.npz"
    np.savez(data, x=np.zeros((5, 1, 9, 9), np.float32), y=np.zeros(5, np.int64))
    res = compress(SAMPLES / "digits_cnn.pt2", "--data", data, out=tmp_path / "o")
    assert_clean_error(res, 1, "cannot run on inputs", "(5, 1, 9, 9)")


def test_labels_out_of_range(tmp_path):
    data = tmp_path / "labels.npz"
    np.savez(data, x=np.zeros((5, 1, 8, 8), np.float32), y=np.array([0, 1, 2, 3, 12]))
    res = compress(PT2, "--data", data, out=tmp_path / "o")
    assert_clean_error(res, 1, "label 12", "out of range")


def test_corrupt_and_missing_data(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 broken")
    assert_clean_error(compress(PT2, "--data", bad, out=tmp_path / "o"), 1, "bad.npz")
    assert_clean_error(compress(PT2, "--data", tmp_path / "none.npz", out=tmp_path / "o"), 1, "not found")
    keys = tmp_path / "keys.npz"
    np.savez(keys, image=np.zeros((3, 1, 8, 8), np.float32), other=np.zeros((3, 2), np.float32))
    assert_clean_error(compress(PT2, "--data", keys, out=tmp_path / "o"), 1, "do not match the model's inputs")


@pytest.mark.parametrize("args,needle", [
    (("--pipeline", "quantize,shrinkk"), "unknown stage 'shrinkk'"),
    (("--set", "quantize.modee=static"), "unknown option quantize.modee"),
    (("--set", "quantize.mode=int4"), "not one of auto, static, dynamic"),
    (("--set", "quantize.calib_samples=many"), "not an integer"),
    (("--set", "quantize"), "expected stage.key=value"),
    (("--pipeline", "quantize,quantize"), "appears twice"),
])
def test_usage_errors(tmp_path, args, needle):
    res = compress(PT2, "--data", HELDOUT, *args, out=tmp_path / "o")
    assert_clean_error(res, 2, needle)
    assert not (tmp_path / "o").exists()


def test_non_empty_out_refused_unless_force(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = (PT2, "--data", HELDOUT, "--set", "quantize.mode=dynamic")
    assert_clean_error(compress(*args, out=out), 1, "not empty", "--force")
    res = compress(*args, "--force", out=out)
    assert res.code == 0, res
    # --force replaces the directory wholesale (an atomic swap): a user's file in it is not kept
    assert not (out / "keep.txt").exists() and (out / "model.onnx").is_file()


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(compress(PT2, "--data", HELDOUT, out=blocker), 1, "not a directory")
    assert_clean_error(compress(PT2, "--data", HELDOUT, out=blocker / "sub"), 1, "--out")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert_clean_error(compress(PT2, "--data", HELDOUT, out=ro / "o"), 1, "not writable")


def test_static_quantize_without_calibration_data(tmp_path):
    res = compress(PT2, "--data", HELDOUT, "--set", "quantize.mode=static", out=tmp_path / "o")
    assert_clean_error(res, 2, "calibration", "--train-data", "mode=dynamic")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_inputs_never_modified(tmp_path):
    files = [PT2, HELDOUT, TRAIN]
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    res = compress(PT2, "--data", HELDOUT, "--train-data", TRAIN, out=tmp_path / "o")
    assert res.code == 0, res
    assert before == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


def test_nan_weights_are_a_corrupt_file(tmp_path):
    state = torch.load(SAMPLES / "digits_mlp.pt", weights_only=True)
    state["fc1.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    res = compress(tmp_path / "nan.pt", "--arch", f"{SAMPLES / 'digits_models.py'}:mlp", "--data", HELDOUT,
                   out=tmp_path / "o")
    assert_clean_error(res, 1, "fc1.weight", "NaN")


def test_a_lost_signal_exception_is_raised_again_at_the_next_progress_step():
    """Python drops an exception raised while it runs a weakref callback (importlib's module locks use them), so a
    Ctrl-C landing there would leave the run going; the handler remembers the stop and progress raises it again."""
    import weakref

    import pytest

    from compressor import errors
    from compressor.run.progress import Reporter

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: errors.request_stop(KeyboardInterrupt))  # noqa: F841 - keeps the callback
    try:
        del thing  # the callback raises; Python reports it as ignored and goes on
        with pytest.raises(KeyboardInterrupt):
            with Reporter(quiet=True).task("steps", 3) as task:
                task.advance()
    finally:
        errors._STOPS.clear()
