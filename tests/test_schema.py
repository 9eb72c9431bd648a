"""The declarative option layer: every declared range is enforced for every built-in stage option and run setting,
the fine-tuning mixin is shared, and `compress stages` and docs/options.md are written from the declarations."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compressor.core.finetune_options import FinetuneOptions
from compressor.errors import UsageError
from compressor.registry import available_stages
from compressor.run.options_doc import options_markdown
from compressor.run.pipeline import RunOptions
from compressor.run.settings import RunSettings, check_settings, merge_settings
from compressor.schema import BOUND_KEYS, default_of, fields_of, range_problem
from compressor.stage import build_config
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = {n: c for n, c in available_stages().items() if c.__module__.startswith("compressor.")}


def _outside(f: dataclasses.Field) -> list[str]:
    """Values just outside each declared bound of a field (for an int field, the next whole number)."""
    m, step = f.metadata, (1 if "int" in str(f.type) else 1e-3)
    return [repr(v) for k, v in (("ge", m.get("ge", 0) - step), ("gt", m.get("gt")), ("le", m.get("le", 0) + step),
                                 ("lt", m.get("lt"))) if k in m]


BOUNDED = [(name, f) for name, cls in sorted(BUILT_IN.items()) for f in fields_of(cls.Config)
           if any(k in f.metadata for k in BOUND_KEYS)]


def test_the_stages_declare_ranges():
    assert len(BOUNDED) >= 30 and {n for n, _ in BOUNDED} == set(BUILT_IN)


@pytest.mark.parametrize("stage, f", BOUNDED, ids=[f"{n}.{f.name}" for n, f in BOUNDED])
def test_every_declared_range_is_enforced(stage, f):
    cls = BUILT_IN[stage]
    assert range_problem(f, default_of(f)) is None  # the default is in range
    outside = _outside(f)
    assert outside
    for raw in outside:
        with pytest.raises(UsageError, match=rf"{stage}\.{f.name}.*{f.name} must be"):
            build_config(cls, {f.name: raw})


def test_int_bounds_reject_the_next_whole_number():
    with pytest.raises(UsageError, match=r"prune\.max_steps: max_steps must be >= 1 \(got 0\)"):
        build_config(BUILT_IN["prune"], {"max_steps": "0"})
    with pytest.raises(UsageError, match=r"schedule must be > 0 and < 1 \(got 1.2\)"):
        build_config(BUILT_IN["prune"], {"schedule": "0.5,1.2"})  # a bound applies to every item of a list


def test_the_fine_tuning_options_are_one_declaration():
    shared = {f.name: f for f in fields_of(FinetuneOptions)}
    users = [BUILT_IN[n].Config for n in ("shrink", "prune", "rpg")]
    for cfg in users:
        assert issubclass(cfg, FinetuneOptions)
        own = {f.name: f for f in fields_of(cfg)}
        for name in ("max_steps_per_epoch", "distill", "temperature", "max_drop"):
            assert own[name].metadata["help"] == shared[name].metadata["help"], (cfg, name)
    rpg = {f.name: f for f in fields_of(BUILT_IN["rpg"].Config)}
    assert default_of(rpg["lr"]) == 1e-2 and rpg["lr"].metadata == shared["lr"].metadata  # with_default


def test_run_settings_are_checked_and_typed_from_their_declaration(tmp_path):
    options = RunOptions(model=tmp_path / "m.pt2", pipeline=["quantize"], data=tmp_path / "d.npz", out=tmp_path,
                         seed="7", threads=2.0)
    check_settings(options)
    assert options.seed == 7 and isinstance(options.seed, int) and options.threads == 2
    for field, value, needle in (("confidence", 1.0, "--confidence"), ("seed", -1, "--seed"),
                                 ("threads", True, "--threads"), ("max_drop", float("nan"), "--max-drop"),
                                 ("device", "tpu", "--device"), ("precision", "int8", "--precision")):
        bad = dataclasses.replace(options, **{field: value})
        with pytest.raises(UsageError, match=needle):
            check_settings(bad)


def test_command_line_over_recipe_over_default():
    merged = merge_settings({"seed": "5", "max_drop": None}, {"seed": 9, "threads": 3, "gates": {"max_drop": 2}})
    assert merged["seed"] == 5 and merged["threads"] == 3 and merged["max_drop"] == 2.0
    assert merged["confidence"] == default_of(next(f for f in fields_of(RunSettings) if f.name == "confidence"))


def test_docs_options_md_is_generated_from_the_declarations():
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == options_markdown(), "docs/options.md is stale: compress stages --markdown > docs/options.md"


def test_compress_stages_lists_every_declared_option_with_its_range():
    res = run_cli("stages")
    assert res.code == 0, res
    text = " ".join(res.stdout.split())
    for name, cls in BUILT_IN.items():
        for f in fields_of(cls.Config):
            assert f"{name}.{f.name} = " in text, (name, f.name)
    assert "prune.rate = 0.1 [float, > 0 and < 1]" in text
