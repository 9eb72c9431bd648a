"""A Hugging Face model directory loaded with transformers, as the working model (`wrap.py`) with its tokenizer.

Offline and without code from the directory: `local_files_only` (a path on disk, never a download), weights from
model.safetensors (a pickled pytorch_model.bin only with --trust-pickle, `files.py`), the directory's own modelling
code (config.json `auto_map`) only with --trust-remote-code. transformers is imported here, inside the functions,
so compressor works without the `hf` extra until a model directory is actually given.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.errors import DataError, ModelLoadError
from compressor.io.hf.files import EXTRA, HFLayout, class_ids, config_label2id, detect_task, digest, layout
from compressor.io.hf.images import ImageEncoder
from compressor.io.hf.wrap import HFWrapper, wrap
from compressor.io.text_data import read_texts

AUTO_CLASSES = {"feature-extraction": "AutoModel", "text-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification", "fill-mask": "AutoModelForMaskedLM",
                "image-classification": "AutoModelForImageClassification"}
TEXT_INPUTS = ["input_ids", "attention_mask"]
DEFAULT_MAX_LENGTH = 512


def transformers_module(what: Path | str):
    """transformers, or the one-line answer naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(f"{what} is a Hugging Face model directory; loading it needs transformers: {EXTRA}")
    return transformers


@contextlib.contextmanager
def quiet(tf):
    """transformers' progress bars and load reports off while it reads (the run prints its own lines)."""
    shown = tf.utils.logging.is_progress_bar_enabled()
    level = tf.utils.logging.get_verbosity()
    tf.utils.logging.disable_progress_bar()
    tf.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        tf.utils.logging.set_verbosity(level)
        if shown:
            tf.utils.logging.enable_progress_bar()


@dataclass
class TextEncoder:
    """Texts to the model's inputs with the model's own tokenizer: padded to the longest text of the file (every
    row of a set has one length), truncated at `max_length`; class names through config.json's label2id."""

    tokenizer: Any
    inputs: list[str]
    max_length: int
    label2id: dict[str, int]
    task: str
    reads = "text"

    def arrays(self, path: Path) -> dict[str, np.ndarray]:
        texts, labels = read_texts(path)
        try:
            enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                                 return_tensors="np")
        except Exception as exc:
            raise DataError(f"{path}: the model's tokenizer failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from exc
        shape = np.asarray(enc["input_ids"]).shape
        arrays = {n: np.asarray(enc[n], dtype=np.int64) if n in enc else np.zeros(shape, np.int64)
                  for n in self.inputs}
        if labels is not None:
            arrays["y"] = self.label_ids(labels, path)
        return arrays

    def label_ids(self, labels: list[int | str], path: Path) -> np.ndarray:
        if self.task in ("token-classification", "fill-mask", "feature-extraction"):
            raise DataError(f"{path}: a `label` per text fits a classifier, not {self.task} (per-token labels are "
                            "not read); drop the column to judge against the original model's outputs")
        return np.asarray(class_ids(labels, self.label2id, path, "label"), dtype=np.int64)


@dataclass
class HFModel:
    """What loading a directory gives: the wrapped model, its inputs, the digest of its files and the record
    `compressor.load` rebuilds it from."""

    module: HFWrapper
    input_names: list[str]
    layout: HFLayout
    task: str
    sha256: str
    encoder: TextEncoder | ImageEncoder

    @property
    def record(self) -> dict[str, Any]:
        return {"task": self.task, "inputs": self.input_names, "pooling": self.module.pooling,
                "normalize": self.module.normalize,
                "model_dir": str(self.layout.model_dir.relative_to(self.layout.root))}


def load_hf_dir(path: Path, task: str | None, trust_pickle: bool, trust_remote_code: bool) -> HFModel:
    lay = layout(path, trust_pickle)
    task = detect_task(lay, task)
    tf = transformers_module(path)
    cls = getattr(tf, AUTO_CLASSES[task])
    with quiet(tf):
        try:
            model, info = cls.from_pretrained(str(lay.model_dir), local_files_only=True,
                                              use_safetensors=not lay.pickled, trust_remote_code=trust_remote_code,
                                              dtype=torch.float32, output_loading_info=True)
        except Exception as exc:
            raise ModelLoadError(f"{path}: transformers cannot load it as {task} ({why(exc)})"
                                 + _audio_hint(tf, lay.config)) from exc
        missing = sorted(k for k in info.get("missing_keys", ()) if not str(k).startswith("pooler."))
        if missing or info.get("mismatched_keys"):
            key = (missing or sorted(map(str, info["mismatched_keys"])))[0]
            raise ModelLoadError(f"{path}: its weights do not hold a {task} model ({key} is "
                                 f"{'missing' if missing else 'of another shape'}); pass the --task its "
                                 "config.json architecture names")
        tokenizer = None if task == "image-classification" else _tokenizer(tf, lay, trust_remote_code)
    inputs = ["pixel_values"] if tokenizer is None else _text_inputs(model, tokenizer)
    if task == "feature-extraction" and inputs == ["pixel_values"]:
        raise ModelLoadError(f"{path}: feature-extraction is supported for text models; an image model needs "
                             "--task image-classification")
    module = build(model, {"task": task, "inputs": inputs, "pooling": lay.pooling, "normalize": lay.normalize})
    label2id = config_label2id(lay.config)
    if tokenizer is not None:
        encoder = TextEncoder(tokenizer, inputs, _max_length(lay, tokenizer), label2id, task)
    else:
        encoder = ImageEncoder(functools.partial(_image_processor, tf, lay, trust_remote_code), label2id,
                               int(model.config.num_labels), int(getattr(model.config, "num_channels", 3)))
    return HFModel(module, inputs, lay, task, digest(lay), encoder)


def build(model: torch.nn.Module, record: dict[str, Any]) -> HFWrapper:
    """The working model from a transformers model and a record (`HFModel.record`): an embedding model drops the
    encoder's pooler, which sentence embeddings never read (it would only be stored and compressed for nothing)."""
    if record["task"] == "feature-extraction" and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return wrap(model, record["task"], list(record["inputs"]), record.get("pooling"), bool(record.get("normalize")))


def rebuild(record: dict[str, Any], config_dir: Path, trust_remote_code: bool = False) -> HFWrapper:
    """A fresh working model of the recorded task from a config.json (weights are loaded by the caller)."""
    tf = transformers_module(config_dir)
    with quiet(tf):
        config = tf.AutoConfig.from_pretrained(str(config_dir), local_files_only=True,
                                               trust_remote_code=trust_remote_code)
        model = getattr(tf, AUTO_CLASSES[record["task"]]).from_config(config, trust_remote_code=trust_remote_code,
                                                                      dtype=torch.float32)
    return build(model, record)


def _audio_hint(tf, config: dict[str, Any]) -> str:
    """For an error: the directory holds an audio model (config.json's model_type), which no supported task reads."""
    auto = getattr(getattr(getattr(tf, "models", None), "auto", None), "modeling_auto", None)
    if config.get("model_type") not in getattr(auto, "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", {}):
        return ""
    return ("; it is an audio model, which no supported task reads: export it with torch.export (.pt2) and give its "
            "inputs as an .npz")


def _tokenizer(tf, lay: HFLayout, trust_remote_code: bool):
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(lay.model_dir), local_files_only=True,
                                               trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{lay.root}: cannot load its tokenizer ({why(exc)})") from exc
    if tok.pad_token is None:
        raise ModelLoadError(f"{lay.root}: its tokenizer has no padding token; texts of different lengths cannot "
                             "be batched")
    return tok


def _image_processor(tf, lay: HFLayout, trust_remote_code: bool):
    """The directory's image processor (preprocessor_config.json) in its PIL form: it needs no torchvision, and a
    run repeated elsewhere reads the same pixels."""
    if not (lay.model_dir / "preprocessor_config.json").is_file():
        raise DataError(f"{lay.model_dir}: no preprocessor_config.json, so no image processor to read an image "
                        "folder with; save the model's processor there (save_pretrained) or pass pixel_values in "
                        "an .npz")
    pil = {"backend": "pil"} if importlib.util.find_spec("transformers.image_processing_backends") else {
        "use_fast": False}  # transformers before its image-processor backends
    with quiet(tf):
        try:
            return tf.AutoImageProcessor.from_pretrained(str(lay.model_dir), local_files_only=True,
                                                         trust_remote_code=trust_remote_code, **pil)
        except Exception as exc:
            raise ModelLoadError(f"{lay.root}: cannot load its image processor ({why(exc)})") from exc


def _text_inputs(model: torch.nn.Module, tokenizer) -> list[str]:
    """input_ids and attention_mask, plus token_type_ids where both the tokenizer and the model use them."""
    takes = inspect.signature(model.forward).parameters
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()) and "token_type_ids" in takes:
        return TEXT_INPUTS + ["token_type_ids"]
    return list(TEXT_INPUTS)


def _max_length(lay: HFLayout, tokenizer) -> int:
    """sentence-transformers' max_seq_length, else the tokenizer's limit, else the model's positions."""
    for value in (lay.max_length, getattr(tokenizer, "model_max_length", None),
                  lay.config.get("max_position_embeddings")):
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
            return value
    return DEFAULT_MAX_LENGTH


def why(exc: BaseException) -> str:
    """An exception as a short clause; transformers' advice to pass trust_remote_code becomes our flag's name."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if "trust_remote_code" in str(exc):
        return "the directory ships its own modelling code (config.json auto_map); pass --trust-remote-code to run it"
    return f"{type(exc).__name__}: {text}"
