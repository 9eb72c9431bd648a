"""A new stage is one folder: a package with its stage (config, math, class) plus one entry point, run end to end
through `compress` with export, without touching compressor itself."""
from __future__ import annotations

import json

import torch

import compressor
from tests.conftest import HELDOUT, SAMPLES
from tests.test_plugins import compress

STAGE = '''"""snap: round every conv/linear weight to the nearest multiple of `step` (a stage written outside compressor)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.core.layers import select_names
from compressor.registry import register_stage
from compressor.stage import Stage, StageResult, option


@dataclass
class SnapConfig:
    step: float = option(1 / 64, "grid step the weights are rounded to")

    def validate(self) -> str | None:
        return None if self.step > 0 else "step must be positive"


@register_stage
class SnapStage(Stage):
    name = "snap"
    summary = "round conv/linear weights to a grid"
    Config = SnapConfig
    follows = frozenset({"shrink", "prune"})

    def apply(self, ctx) -> StageResult:
        params = dict(ctx.model.named_parameters())
        names = select_names(ctx.weights)
        with torch.no_grad():
            for n in names:
                params[n].copy_(torch.round(params[n] / self.config.step) * self.config.step)
        return StageResult(model=ctx.model, notes=[f"{len(names)} weights snapped to multiples of {self.config.step}"])
'''


def test_a_stage_from_one_folder_runs_end_to_end_with_export(tmp_path):
    site = tmp_path / "site"
    (site / "snap_stage").mkdir(parents=True)
    (site / "snap_stage" / "__init__.py").write_text(STAGE)
    dist = site / "snap_stage-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: snap-stage\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[compressor.stages]\nsnap = snap_stage:SnapStage\n")

    listed = compress("stages", pythonpath=site)
    assert listed.returncode == 0, listed.stderr
    assert "snap.step = 0.015625" in listed.stdout

    out = tmp_path / "out"
    res = compress(SAMPLES / "digits_mlp.pt2", "--pipeline", "snap", "--set", "snap.step=0.125", "--data", HELDOUT,
                   "--out", out, "--quiet", "--max-drop", "100", pythonpath=site)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["snap"]
    assert "snapped to multiples of 0.125" in report["stages"][0]["notes"][0]
    assert (out / "model.onnx").stat().st_size > 0
    model = compressor.load(out)
    weight = dict(model.named_parameters())["fc1.weight"].detach()
    assert torch.equal(weight, torch.round(weight / 0.125) * 0.125)
    assert report["artifacts"][0]["metric_value"] > 50
