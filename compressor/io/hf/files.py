"""A Hugging Face model directory read as files, before (and without) transformers: is it one, which task it
holds, which of its files define the model (hashed as the source's sha256, copied beside model.onnx), and the
sentence-transformers modules (pooling, normalisation) around the encoder.

Kept apart from the loader so the checks that need no transformers (a hub name that is not on disk, a directory
without weights) give their one-line answer even where the `hf` extra is not installed.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.errors import DataError, ModelLoadError, UsageError

TASKS = ("feature-extraction", "text-classification", "token-classification", "fill-mask", "image-classification")
# the architecture's suffix in config.json -> the task (a plain encoder, e.g. BertModel, gives embeddings)
ARCH_TASKS = (("ForSequenceClassification", "text-classification"), ("ForTokenClassification", "token-classification"),
              ("ForMaskedLM", "fill-mask"), ("ForImageClassification", "image-classification"),
              ("Model", "feature-extraction"))
HEAD_MODEL = re.compile(r"Heads?Model$")  # a "...Model" architecture with a head (a language model's): not an encoder
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# what a Hugging Face user needs beside the weights to run the model: copied into --out
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
              "tokenizer.model", "preprocessor_config.json", "generation_config.json")
# a sentence-transformers module by its class name (the module path moved between versions: models.Pooling,
# sentence_transformer.modules.pooling.Pooling)
ST_TYPES = {"Transformer": "transformer", "Pooling": "pool", "Normalize": "normalize"}
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")  # the supported ones, in sentence-transformers' order
LEGACY_POOLING = {"cls_token": "cls", "max_tokens": "max", "mean_tokens": "mean",  # pooling_mode_<key>: true
                  "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean_tokens": "weightedmean",
                  "lasttoken": "lasttoken"}
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
MODEL_SUFFIXES = {".pt2", ".pt", ".pth", ".safetensors", ".bin", ".ts", ".jit", ".onnx", ".zip"}
EXTRA = 'pip install "compressor[hf]"'
DEFAULT_LABEL = re.compile(r"LABEL_(\d+)")  # transformers' name for a class nobody named
LISTED = 10  # class names an error lists


@dataclass
class HFLayout:
    """Where the parts of one model directory are: the encoder's own directory (the root, or a sentence-transformers
    module folder), the files that define the model, and the sentence-transformers head (pooling, normalisation)."""

    root: Path
    model_dir: Path
    config: dict[str, Any]
    weights: list[Path]
    pickled: bool
    files: list[Path]  # every file the model is read from, relative to root: hashed and (side files) copied
    code: list[Path]  # the directory's own modelling code (config.json auto_map), run only with --trust-remote-code
    pooling: list[str] | None = None  # sentence-transformers pooling modes, None: not a sentence-transformers dir
    normalize: bool = False
    max_length: int | None = None


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").is_file() or (path / "modules.json").is_file())


def missing_model_message(path: Path) -> str:
    """A model path that does not exist; a name shaped like a hub id says that nothing is downloaded."""
    text = str(path)
    if HUB_NAME.fullmatch(text) and path.suffix.lower() not in MODEL_SUFFIXES:
        return (f"model not found: {text} is not a file or directory here; compressor never downloads: if it is a "
                f"Hugging Face hub name, fetch it first (e.g. `hf download {text} --local-dir DIR`) and pass DIR")
    return f"model file not found: {path}"


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read the {what} ({str(exc).splitlines()[0][:120]})") from exc


def layout(root: Path, trust_pickle: bool) -> HFLayout:
    """The directory's parts; a directory without weights, or with only pickled weights and no --trust-pickle, is
    refused here, before transformers reads anything."""
    model_dir, st = root, None
    if (root / "modules.json").is_file():
        st = _st_modules(root)
        model_dir = root / st["transformer"]
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{root}: no config.json in {model_dir}; not a Hugging Face model directory")
    config = read_json(model_dir / "config.json", "model config")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{model_dir / 'config.json'}: not a JSON object")
    weights, pickled = _weights(model_dir, trust_pickle)
    code = _code_files(model_dir, config)
    files = [p for p in weights + [model_dir / n for n in SIDE_FILES] + code if p.is_file()]
    out = HFLayout(root, model_dir, config, weights, pickled, [p.relative_to(root) for p in files], code)
    if st is not None:
        out.files += [Path("modules.json")] + st["configs"]
        out.pooling, out.normalize, out.max_length = st["pooling"], st["normalize"], st["max_length"]
    return out


def _weights(model_dir: Path, trust_pickle: bool) -> tuple[list[Path], bool]:
    """The weight files, safetensors preferred; pickled ones (`pytorch_model.bin`) only with --trust-pickle."""
    for names, pickled in ((SAFE_WEIGHTS, False), (PICKLE_WEIGHTS, True)):
        found = [model_dir / n for n in names if (model_dir / n).is_file()]
        if not found:
            continue
        if pickled and not trust_pickle:
            raise ModelLoadError(f"{model_dir}: its weights are only in {found[0].name}, a pickle (loading it can run "
                                 "code from the file): pass --trust-pickle if you trust its source, or convert it to "
                                 "model.safetensors")
        if found[0].name.endswith(".index.json"):
            index = read_json(found[0], "weight index")
            shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
            found += [model_dir / s for s in shards if "/" not in s and (model_dir / s).is_file()]
        return found, pickled
    raise ModelLoadError(f"{model_dir}: no weights (model.safetensors, or pytorch_model.bin with --trust-pickle)")


def _code_files(model_dir: Path, config: dict[str, Any]) -> list[Path]:
    """The Python files of a model with its own code (`auto_map`): hashed with the model and copied beside model.onnx
    (as save_pretrained does), so the output rebuilds without the source. Code named in another repository
    (`org/repo--module.Class`) would be downloaded: refused."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return []
    refs = [r for v in (auto_map.values() if isinstance(auto_map, dict) else []) for r in
            (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    if any("--" in r for r in refs):
        raise ModelLoadError(f"{model_dir}: config.json auto_map names code in another repository "
                             f"({next(r for r in refs if '--' in r)}); compressor never downloads")
    return sorted(model_dir.glob("*.py"))


def _st_modules(root: Path) -> dict[str, Any]:
    """The sentence-transformers pipeline of modules.json: an encoder, its pooling, an optional Normalize; any
    other module (Dense, ...) would change the embedding, so it is refused rather than skipped."""
    modules = read_json(root / "modules.json", "sentence-transformers modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(f"{root / 'modules.json'}: expected a list of modules")
    kinds = {}
    for m in modules:
        kind = ST_TYPES.get(str(m.get("type")).rpartition(".")[2]) if str(m.get("type")).startswith(
            "sentence_transformers.") else None
        if kind is None:
            raise ModelLoadError(f"{root}: sentence-transformers module {m.get('type')} is not supported (supported: "
                                 "Transformer, Pooling, Normalize)")
        kinds[kind] = str(m.get("path") or "")
    if "transformer" not in kinds or ".." in Path(kinds["transformer"]).parts:
        raise ModelLoadError(f"{root / 'modules.json'}: no sentence_transformers.models.Transformer module")
    st = {"transformer": kinds["transformer"], "normalize": "normalize" in kinds, "configs": [],
          "pooling": ["mean"], "max_length": None}
    if "pool" in kinds:
        pool_file = root / kinds["pool"] / "config.json"
        if pool_file.is_file():
            st["pooling"] = pooling_modes(read_json(pool_file, "pooling config"), pool_file)
            st["configs"].append(pool_file.relative_to(root))
    bert = root / kinds["transformer"] / "sentence_bert_config.json"
    if bert.is_file():
        st["max_length"] = (read_json(bert, "sentence-transformers config") or {}).get("max_seq_length")
        st["configs"].append(bert.relative_to(root))
    return st


def pooling_modes(pool: Any, where: Path) -> list[str]:
    """The pooling modes of a sentence-transformers Pooling config: `pooling_mode` (a name or a list, in the order
    the embeddings are concatenated), or the older `pooling_mode_<name>` booleans; mean when it names none."""
    pool = pool if isinstance(pool, dict) else {}
    modes = pool.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in LEGACY_POOLING.items() if pool.get(f"pooling_mode_{key}") is True]
    modes = [modes] if isinstance(modes, str) else list(modes) if isinstance(modes, list) else [str(modes)]
    unknown = [str(m) for m in modes if m not in POOLING_MODES]
    if unknown:
        raise ModelLoadError(f"{where}: pooling {', '.join(unknown)} is not supported (supported: "
                             f"{', '.join(POOLING_MODES)})")
    return modes or ["mean"]


def detect_task(lay: HFLayout, requested: str | None) -> str:
    """`--task`, else the task config.json's architecture implies (a sentence-transformers directory: embeddings)."""
    if requested is not None:
        if requested not in TASKS:
            raise UsageError(f"--task {requested}: unknown; available: {', '.join(TASKS)}")
        return requested
    if lay.pooling is not None:
        return "feature-extraction"
    archs = lay.config.get("architectures") or []
    for arch in archs if isinstance(archs, list) else []:
        if HEAD_MODEL.search(str(arch)):  # GPT2LMHeadModel, GPT2DoubleHeadsModel: a head, not a plain encoder
            raise UsageError(f"{lay.root}: {arch} has a head that no supported task reads (text generation is "
                             f"not one); pass --task feature-extraction to compress its base model's embeddings, or "
                             f"export the whole model with torch.export (.pt2); tasks: {', '.join(TASKS)}")
        for suffix, task in ARCH_TASKS:
            if str(arch).endswith(suffix):
                return task
    raise UsageError(f"{lay.root}: cannot tell the task from config.json (architectures {archs}); pass --task, one "
                     f"of {', '.join(TASKS)}")


def digest(lay: HFLayout) -> str:
    """One sha256 over the files that define the model (names and contents), so a report and a checkpoint name
    the directory's model as they name a file's."""
    total = hashlib.sha256()
    for rel in sorted(lay.files):
        total.update(str(rel).encode() + b"\0")
        with open(lay.root / rel, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                total.update(chunk)
    return total.hexdigest()


def copy_side_files(lay: HFLayout, target: Path) -> list[str]:
    """config.json, the tokenizer or image-processor files and any modelling code, copied into the output (weights
    excluded: the output's own are model.onnx and model.safetensors)."""
    copied = []
    for path in [lay.model_dir / n for n in SIDE_FILES] + lay.code:
        if path.is_file():
            shutil.copyfile(path, target / path.name)
            copied.append(path.name)
    return copied


def config_label2id(config: dict[str, Any]) -> dict[str, int]:
    raw = config.get("label2id") or {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}


def is_default_label2id(label2id: dict[str, int]) -> bool:
    """True when label2id names no class: empty, or only transformers' defaults (LABEL_0: 0, LABEL_1: 1, ...)."""
    return all((m := DEFAULT_LABEL.fullmatch(k)) is not None and int(m.group(1)) == v for k, v in label2id.items())


def class_ids(labels: list[int | str], label2id: dict[str, int], where: Path, what: str,
              known: str | None = None) -> list[int]:
    """Labels as ids: an integer is one already, a class name goes through `label2id` (a name it lacks is an error
    naming it and the known ones: `known`, else config.json's)."""
    unknown = sorted({v for v in labels if isinstance(v, str) and v not in label2id})
    if unknown:
        names = sorted(label2id)
        listed = ", ".join(names[:LISTED]) + (f", ... ({len(names)} classes)" if len(names) > LISTED else "")
        known = known or f"config.json label2id: {listed or 'none'}"
        raise DataError(f"{where}: {what} {unknown[0]!r} is not a class of the model ({known})")
    return [label2id[v] if isinstance(v, str) else v for v in labels]
