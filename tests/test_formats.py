"""Other formats and model shapes: TorchScript, .pt data, several int64 inputs (a small transformer), no labels."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import compressor
from compressor.core.layers import find_weights
from compressor.io.data import load_dataset
from compressor.io.load import load_model
from compressor.registry import get_stage
from compressor.runtime.calls import predict
from compressor.stage import build_config
from sample_models.digits_models import DigitsCNN
from tests.conftest import HELDOUT, SAMPLES, TRAIN, read_report, run_cli


class TinyEncoder(nn.Module):
    """A BERT-style classifier written by hand: token ids + attention mask in, logits out."""

    def __init__(self, vocab: int = 50, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        enc = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoder()


def test_torchscript_model(tmp_path):
    model = DigitsCNN()
    model.load_state_dict(torch.load(SAMPLES / "digits_cnn.pt", weights_only=True))
    model.eval()
    path = tmp_path / "cnn_script.pt"
    torch.jit.script(model).save(str(path))
    loaded = load_model(path)
    assert loaded.format == "torchscript"
    kinds = {w.name: w.kind for w in find_weights(loaded.module)}
    assert kinds["conv1.weight"] == "conv" and kinds["fc1.weight"] == "linear" and kinds["bn1.weight"] == "norm"
    out = tmp_path / "o"
    res = run_cli(path, "--data", HELDOUT, "--train-data", TRAIN, "--out", out, "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    assert report["baseline"]["value"] - report["artifacts"][0]["metric_value"] <= 1.0


def test_rpg_on_a_torchscript_model_is_one_line_naming_the_ways_on(tmp_path):
    """The ring runs the model through torch.func.functional_call, which TorchScript does not support: one line
    saying so and naming .pt2 / --arch (it was a ValueError about a missing signature)."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(SAMPLES / "digits_cnn.pt", weights_only=True))
    torch.jit.script(model.eval()).save(str(tmp_path / "cnn_script.pt"))
    res = run_cli(tmp_path / "cnn_script.pt", "--pipeline", "rpg", "--set", "rpg.epochs=1", "--set", "rpg.grow=false",
                  "--data", HELDOUT, "--train-data", TRAIN, "--out", tmp_path / "o", "--quiet")
    assert res.code == 1 and "rpg: a TorchScript model cannot run on generated weights" in res.stderr, res
    assert res.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_pt_dict_data_and_multi_input_transformer_without_labels(tmp_path):
    # a module file the CLI imports by path, with a seeded factory
    arch_file = tmp_path / "enc_arch.py"
    arch_file.write_text(
        "import sys; sys.path.insert(0, %r)\nfrom tests.test_formats import encoder\n" % str(SAMPLES.parent)
    )
    torch.save(encoder().state_dict(), tmp_path / "enc.pt")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (64, 12), generator=gen)
    mask = torch.ones(64, 12, dtype=torch.int64)
    mask[::3, 8:] = 0
    torch.save({"input_ids": ids, "attention_mask": mask}, tmp_path / "held.pt")
    np.savez(tmp_path / "train.npz", input_ids=ids.numpy(), attention_mask=mask.numpy())
    out = tmp_path / "o"
    res = run_cli(tmp_path / "enc.pt", "--arch", f"{arch_file}:encoder", "--data", tmp_path / "held.pt",
                  "--train-data", tmp_path / "train.npz", "--set", "quantize.mode=dynamic", "--max-drop", "5", "--out", out, "--quiet")
    assert res.code == 0, res
    report = read_report(out)
    # an untrained encoder's outputs are not confident class scores: compared by cosine, in points
    assert report["baseline"]["metric"] == "cosine"
    assert report["artifacts"][0]["metric_value"] >= 95.0
    assert abs(report["baseline"]["cosine_min"] - 1.0) < 1e-5
    assert "cosine_mean" in report["stages"][0]["metric_extra"]
    kinds = {w.name: w.kind for w in find_weights(load_model(tmp_path / "enc.pt", f"{arch_file}:encoder").module,
                                                   load_dataset(tmp_path / "held.pt", ["input_ids", "attention_mask"]).example())}
    assert kinds["embed.weight"] == "embedding" and kinds["head.weight"] == "linear"
    assert kinds["encoder.layers.0.linear1.weight"] == "linear"
    data = load_dataset(tmp_path / "held.pt", ["input_ids", "attention_mask"])
    # the reload runs the int8 weights (dequantized): close to the original, exactly the saved model
    reloaded = predict(compressor.load(out, model=encoder()), data)
    assert torch.nn.functional.cosine_similarity(reloaded, predict(encoder(), data)).min() > 0.99
    assert report["artifacts"][1]["reload_max_abs_diff_vs_torch"] == 0.0


def test_pt2_and_eager_find_the_same_weights():
    eager = DigitsCNN()
    data = load_dataset(HELDOUT, ["x"])
    loaded = load_model(SAMPLES / "digits_cnn.pt2")
    a = [(w.name, w.kind) for w in find_weights(loaded.module, data.example(), loaded.program)]
    b = [(w.name, w.kind) for w in find_weights(eager, data.example())]
    assert a == b
    assert [n for n, k in a if k in ("linear", "conv")] == [
        "conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]


def test_pt2_exported_with_keyword_inputs(tmp_path):
    model = encoder().eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (64, 12), generator=gen)
    mask = torch.ones(64, 12, dtype=torch.int64)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (), kwargs={"input_ids": ids[:4], "attention_mask": mask[:4]},
                             dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}})
    torch.export.save(ep, tmp_path / "kw.pt2")
    np.savez(tmp_path / "tok.npz", input_ids=ids.numpy(), attention_mask=mask.numpy())
    out = tmp_path / "o"
    res = run_cli(tmp_path / "kw.pt2", "--set", "quantize.mode=dynamic", "--data", tmp_path / "tok.npz",
                  "--out", out, "--quiet", "--max-drop", "5")
    assert res.code == 0, res
    assert read_report(out)["artifacts"][0]["parity_max_abs_diff_fp32_vs_torch"] < 1e-3


def test_optional_number_options_parse():
    cfg = build_config(get_stage("rpg"), {"ring_size": "1000"})
    assert cfg.ring_size == 1000
