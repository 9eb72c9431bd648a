"""Reloading an artifact decodes its weights one at a time into the model (compressor.load), so the decoded
weights are never all held beside the model's own; the result is the eager decode's."""
from __future__ import annotations

import weakref

import pytest
import torch

import compressor.io.safetensors_io as safetensors_io
from compressor.errors import ArtifactError
from compressor.io.data import load_dataset
from compressor.io.load import load_model, load_state_dict_into
from compressor.io.reload import load
from compressor.io.safetensors_io import read_weights
from compressor.runtime.calls import predict
from tests.conftest import HELDOUT, SAMPLES, TRAIN, run_cli


@pytest.fixture(scope="module")
def int8_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("streamed") / "out"
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--pipeline", "prune,quantize", "--set", "prune.target=0.5",
                  "--set", "quantize.mode=dynamic", "--data", HELDOUT, "--train-data", TRAIN, "--out", out)
    assert res.code == 0, res
    return out


def test_lazy_weights_decode_as_the_eager_read(int8_out):
    lazy, meta = read_weights(int8_out / "model.safetensors", lazily=True)
    eager, _ = read_weights(int8_out / "model.safetensors")
    assert set(lazy) == set(eager) and len(lazy) == len(eager)
    assert {r["encoding"] for r in meta["encodings"].values()} & {"int8", "bitmask", "codebook"}, meta["encodings"]
    assert all(torch.equal(lazy[k], eager[k]) for k in eager)


def test_reload_holds_one_decoded_weight_at_a_time(int8_out, monkeypatch):
    """Every weight compressor.load decodes is freed before the next is decoded; the model is the eager one."""
    alive, most = [], []
    getitem = safetensors_io.DecodedWeights.__getitem__

    def tracked(self, name):
        tensor = getitem(self, name)
        if not any(tensor is stored for stored in self.tensors.values()):  # decoded, not a dense tensor as stored
            most.append(sum(r() is not None for r in alive) + 1)
            alive.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(safetensors_io.DecodedWeights, "__getitem__", tracked)
    streamed = load(int8_out)
    assert len(most) >= 3 and max(most) == 1
    eager_model = load_model(SAMPLES / "digits_mlp.pt2").module
    eager, _ = read_weights(int8_out / "model.safetensors")
    eager_model.load_state_dict(eager)
    data = load_dataset(HELDOUT, ["x"])
    assert torch.equal(predict(streamed, data), predict(eager_model, data))


def test_a_weight_that_does_not_decode_is_one_artifact_error(int8_out, monkeypatch):
    lazy, meta = read_weights(int8_out / "model.safetensors", lazily=True)
    name = next(k for k, r in meta["encodings"].items() if r["encoding"] != "dense")
    lazy.records[name] = {**lazy.records[name], "encoding": "zstd"}  # a record that passed its checksum, crafted
    model = load_model(SAMPLES / "digits_mlp.pt2").module
    with pytest.raises(ArtifactError, match="cannot decode the weights"):
        load_state_dict_into(model, lazy, "model.safetensors", one_at_a_time=True)


def test_a_callers_model_that_does_not_fit_is_left_as_it_was(int8_out):
    """compressor.load(dir, model=...) checks every weight's shape before it writes any into the caller's model."""
    model = load_model(SAMPLES / "digits_mlp.pt2").module
    last = sorted(k for k in model.state_dict() if k.endswith("weight"))[-1]
    owner, name = last.rsplit(".", 1)
    setattr(model.get_submodule(owner), name, torch.nn.Parameter(torch.zeros(3, 3)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArtifactError, match="has shape"):
        load(int8_out, model=model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
