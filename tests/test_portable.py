"""int8 that computes the same numbers on every x86 CPU, and a report that says which CPU verified it.

ONNX Runtime's u8s8 kernels saturate on x86 without VNNI (AVX2 only), so a file verified on a VNNI machine could
answer differently on a user's; with 7-bit weights (quantize.reduce_range, the default) no pair sum can saturate.
The emulation test runs the default int8 file on QEMU's model of an AVX2-only EPYC (apt package qemu-user; .ci/run
installs it where it can) and needs the outputs bit-identical to this CPU's.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from compressor.report.cpu import cpu_info
from tests.conftest import HELDOUT, SAMPLES, read_report, run_cli

RUN = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])["x"][:32].astype(np.float32)
np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0])
"""


def test_cpu_info_reads_x86_and_arm_features(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
                   "processor\t: 1\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n")
    info = cpu_info(x86)
    assert info["cpu"].startswith("AMD EPYC 7B12") and info["cpu_features"] == "avx2"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\nCPU part\t: 0xd0c\n")
    assert cpu_info(arm)["cpu_features"] == "asimd asimddp i8mm"
    assert cpu_info(tmp_path / "absent")["cpu_features"] == "unknown"


def test_report_names_the_cpu_and_the_portable_weights(cnn_quantized):
    report = read_report(cnn_quantized)
    assert report["environment"]["cpu_features"] == cpu_info()["cpu_features"]
    notes = " ".join(n for s in report["stages"] for n in s["notes"])
    assert "7-bit weights (reduce_range" in notes


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU for an x86 Python")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (apt package qemu-user) not installed")
def test_default_int8_gives_the_same_numbers_on_an_avx2_cpu(cnn_quantized, tmp_path):
    model = cnn_quantized / "model.onnx"
    here, avx2 = tmp_path / "here.npy", tmp_path / "avx2.npy"
    subprocess.run([sys.executable, "-c", RUN, str(model), str(HELDOUT), str(here)], check=True, timeout=300)
    proc = subprocess.run(["qemu-x86_64", "-cpu", "EPYC-Rome", sys.executable, "-c", RUN, str(model), str(HELDOUT),
                           str(avx2)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert np.array_equal(np.load(here), np.load(avx2)), np.abs(np.load(here) - np.load(avx2)).max()


def test_dynamic_int8_reports_how_outputs_move_with_the_batch(tmp_path, cnn_quantized):
    out = tmp_path / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "quantize", "--set", "quantize.mode=dynamic",
                  "--data", HELDOUT, "--out", out, "--quiet")
    assert res.code in (0, 3), res
    report = read_report(out)
    batch = report["artifacts"][0]["batch_dependence"]
    assert batch["samples"] == 360 and batch["max_abs_diff_batch1_vs_batch"] > 0  # a batch-wide scale
    assert abs(batch["metric_value_batched"] - report["artifacts"][0]["metric_value"]) < 1e-6  # all 360 samples
    assert any("depend on the batch" in n for n in report["notes"])
    # static int8 fixes every scale at calibration: nothing to report
    assert "batch_dependence" not in read_report(cnn_quantized)["artifacts"][0]
