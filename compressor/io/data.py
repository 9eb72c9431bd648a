"""Data splits from files: held-out (report only), training, validation, calibration.

A data file is a ``.npz`` or a ``.pt`` dict of tensors (loaded with ``weights_only=True``; either is a zip,
held to the archive limits of `compressor.io.archive` before anything is inflated). The model inputs are
``x``, or several arrays named after the model's forward arguments (``input_ids``, ``attention_mask``, ...);
``y``, when present, holds integer labels. Integer inputs (token ids) keep their dtype; float64 becomes float32.
Raw text (``.txt``, ``.jsonl``, ``.csv``: `compressor.io.text_data`) and image folders (`compressor.io.image_data`)
become the same arrays through the model's own tokenizer or image processor, given as `encoder` (a Hugging Face
model directory's `TextEncoder` or `ImageEncoder`: its `reads` says which).
"""
from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from compressor.errors import DataError
from compressor.io.archive import check_limits
from compressor.io.text_data import is_text_file

LABEL_KEY = "y"
LABEL_LIKE = {"label", "labels", "target", "targets"}  # array names meant as labels, which go under LABEL_KEY
_ROOTS = itertools.count()  # a token per loaded set: subsets carry their root's


@dataclass
class Dataset:
    """Model inputs (ordered like the forward arguments) and optional labels, all with the same first dim. A subset
    remembers which rows of which loaded set it holds (`root`, a token of that set, and `rows`), so outputs computed
    once for a set can be looked up for any batch drawn from it (core/teacher.py)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    source: str
    root: int = field(default_factory=lambda: next(_ROOTS), repr=False, compare=False)
    rows: torch.Tensor | None = field(default=None, repr=False, compare=False)  # in root; None: all, in order

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def subset(self, index: torch.Tensor, source: str | None = None) -> "Dataset":
        if index.dtype == torch.bool:
            index = index.nonzero().reshape(-1)
        labels = None if self.labels is None else self.labels[index]
        return Dataset({k: v[index] for k, v in self.inputs.items()}, labels, source or self.source, self.root,
                       index if self.rows is None else self.rows[index])

    def root_rows(self) -> torch.Tensor:
        """The rows of `root` this set holds, in order."""
        return torch.arange(len(self)) if self.rows is None else self.rows

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator["Dataset"]:
        """Consecutive batches, or shuffled ones when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for idx in order.split(batch_size):
            yield self.subset(idx)

    def args(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        return tuple(v.to(device) for v in self.inputs.values())

    def example(self, n: int = 4) -> "Dataset":
        """A small batch (at least 2 rows, so the exporter does not specialise the batch dim to 1)."""
        idx = torch.arange(max(2, min(n, len(self)))) % len(self)
        return self.subset(idx)


def read_arrays(path: Path, encoder=None) -> dict[str, np.ndarray]:
    """The named arrays of a data file (.npz, or a .pt dict of tensors), its archive limits checked first; a text
    file or an image folder through `encoder.arrays` (the model's tokenizer or image processor)."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir() or is_text_file(path):
        return _encoded(path, encoder)
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".npz", ".pt", ".pth") and zipfile.is_zipfile(path):  # zip bombs: refused before inflating
            with zipfile.ZipFile(path) as zf:
                check_limits(zf, f"data file {path}", path.stat().st_size, DataError)
        if suffix == ".npz":
            # our own handle: np.load leaks the one it opens when the zip is corrupt (a ResourceWarning)
            with open(path, "rb") as fh:
                if fh.read(2) != b"PK":
                    raise DataError(f"cannot read data file {path}: not an .npz archive (no zip header)")
                fh.seek(0)
                with np.load(fh, allow_pickle=False) as npz:
                    return {k: npz[k] for k in npz.files}
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise DataError(f"{path}: a .pt data file must hold a dict of tensors")
            return {str(k): v.numpy() for k, v in obj.items()}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as exc:
        raise DataError(f"cannot read data file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    except Exception as exc:  # pickle errors from torch.load with weights_only
        raise DataError(f"cannot read data file {path} ({type(exc).__name__}); expected .npz or a .pt dict of tensors")
    raise DataError(f"unsupported data format {suffix or '(none)'} for {path}: use .npz or a .pt dict of tensors "
                    "(or .txt/.jsonl/.csv text with a Hugging Face model)")


def _encoded(path: Path, encoder) -> dict[str, np.ndarray]:
    """Raw text or an image folder, read by the model's own encoder when it reads that kind of data."""
    kind = "images" if path.is_dir() else "text"
    if encoder is not None and encoder.reads == kind:
        return encoder.arrays(path)
    if kind == "text":
        raise DataError(f"{path}: raw text needs the model's tokenizer: pass a Hugging Face model directory "
                        "(config.json and tokenizer files) as MODEL, or tokenize it into an .npz yourself"
                        + ("; this model takes images" if encoder is not None else ""))
    raise DataError(f"{path} is a directory: an image folder needs the model's image processor: pass a Hugging Face "
                    "image-classification directory (config.json, preprocessor_config.json) as MODEL, or give the "
                    "arrays as an .npz" + ("; this model takes text" if encoder is not None else ""))


def load_dataset(path: str | Path, input_names: Sequence[str],
                 dtypes: Mapping[str, torch.dtype] | None = None, encoder=None) -> Dataset:
    """Read a data file and map its arrays onto the model's inputs. Floats become float32, or the float dtype
    `dtypes` (a `.pt2` program's input dtypes) names for that input (a half-precision program's float16; a bfloat16
    input is refused, as ONNX Runtime cannot be fed one); integer arrays int64 and bool arrays stay bool, unless
    `dtypes` names another integer or bool dtype for that input: then they are cast to it (0/1 integers to a bool
    mask; anything else there is an error)."""
    path = Path(path)
    arrays = read_arrays(path, encoder)
    labels_np = arrays.pop(LABEL_KEY, None)
    misnamed = [k for k in arrays if k.lower() in LABEL_LIKE and k not in input_names]
    if misnamed and labels_np is None:  # else the labels would be left out in silence, and the metric with them
        raise DataError(f"{path}: array '{misnamed[0]}' is not an input of the model; labels go under "
                        f"'{LABEL_KEY}'")
    if not arrays:
        raise DataError(f"{path}: no input arrays (expected 'x' or arrays named {', '.join(input_names)})")
    if set(input_names) <= set(arrays):
        keys = list(input_names)
    elif "x" in arrays and len(input_names) == 1:
        keys = ["x"]
    elif len(arrays) == 1 and len(input_names) == 1:
        keys = list(arrays)
    else:
        raise DataError(
            f"{path}: arrays {sorted(arrays)} do not match the model's inputs {list(input_names)}; "
            "name them 'x' (single input) or after the forward arguments"
        )
    inputs: dict[str, torch.Tensor] = {}
    n = None
    for name, key in zip(input_names, keys):
        arr = arrays[key]
        want = (dtypes or {}).get(name)
        if arr.dtype == np.float64 or arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iub" and want is not None and not want.is_floating_point:
            arr = _as_integer_dtype(arr, want, path, key)
        elif arr.dtype.kind in "iu" and arr.dtype != np.int64:
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "fib":
            raise DataError(f"{path}: array '{key}' has unsupported dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise DataError(f"{path}: array '{key}' is empty")
        if n is not None and arr.shape[0] != n:
            raise DataError(f"{path}: array '{key}' has {arr.shape[0]} rows, expected {n}")
        n = arr.shape[0]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{path}: array '{key}' contains NaN or infinite values")
        inputs[name] = torch.from_numpy(np.ascontiguousarray(arr))
        if want == torch.bfloat16:
            raise DataError(f"{path}: the model takes '{name}' as bfloat16, which ONNX Runtime cannot be given (numpy "
                            "has no bfloat16); export the model with a float32 input and cast inside it")
        if arr.dtype.kind == "f" and want is not None and want.is_floating_point and want != torch.float32:
            inputs[name] = inputs[name].to(want)
            if not bool(torch.isfinite(inputs[name]).all()):
                raise DataError(f"{path}: array '{key}' has values outside the range of the model's input dtype "
                                f"{str(want).replace('torch.', '')}")
    labels = None
    if labels_np is not None:
        if labels_np.dtype.kind not in "iu" or labels_np.ndim != 1:
            raise DataError(f"{path}: labels 'y' must be a 1-D integer array, got {labels_np.dtype} {labels_np.shape}")
        if labels_np.shape[0] != n:
            raise DataError(f"{path}: 'y' has {labels_np.shape[0]} rows but the inputs have {n}")
        if labels_np.min() < 0:
            raise DataError(f"{path}: labels 'y' must be non-negative (found {int(labels_np.min())})")
        labels = torch.from_numpy(labels_np.astype(np.int64))
    return Dataset(inputs, labels, str(path))


def _as_integer_dtype(arr: np.ndarray, want: torch.dtype, path: Path, key: str) -> np.ndarray:
    """An integer/bool array as the integer/bool dtype the model was exported with."""
    target = torch.empty(0, dtype=want).numpy().dtype
    if target == np.bool_ and arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise DataError(f"{path}: array '{key}' feeds a bool input of the model but holds values other than 0/1")
        return arr.astype(np.bool_)
    if target != np.bool_ and arr.dtype.kind in "iu" and arr.size and (
            arr.min() < np.iinfo(target).min or arr.max() > np.iinfo(target).max):
        raise DataError(f"{path}: array '{key}' has values outside the model's {want} input")
    return arr.astype(target)


def split_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded split of the training set into (train, validation) when no validation file is given."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    n_val = max(1, int(round(fraction * len(train))))
    if len(train) - n_val < 1:
        raise DataError(f"{train.source}: too few samples ({len(train)}) to split off a validation set")
    val = train.subset(order[:n_val], f"{train.source} (seeded {fraction:.0%} split)")
    rest = train.subset(order[n_val:])
    return rest, val


def calibration_subset(data: Dataset, max_samples: int, seed: int) -> Dataset:
    """Up to ``max_samples`` rows drawn with the seed (calibration never uses the held-out set)."""
    if len(data) <= max_samples:
        return data
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[:max_samples].sort().values
    return data.subset(idx)


VAL_FRACTION = 0.1  # of the training set, when no --val-data is given


def load_splits(data: str | Path, train_data: str | Path | None, val_data: str | Path | None,
                calib_data: str | Path | None, input_names: Sequence[str], seed: int,
                dtypes: Mapping[str, torch.dtype] | None = None, encoder=None):
    """A run's data: (heldout, train, val, calib, notes). Without --val-data the validation set is a seeded split
    of the training set (the notes say so); calibration samples come from the training set unless given. `encoder`:
    the tokenizer or image-processor side of a Hugging Face model, for text files and image folders (its notes,
    e.g. how class folders were numbered, join the run's)."""
    notes = []
    heldout = load_dataset(data, input_names, dtypes, encoder)
    train = load_dataset(train_data, input_names, dtypes, encoder) if train_data else None
    val = load_dataset(val_data, input_names, dtypes, encoder) if val_data else None
    if train is not None and val is None:
        train, val = split_validation(train, VAL_FRACTION, seed)
        notes.append(f"validation set: a seeded {VAL_FRACTION:.0%} split of {train_data} (no --val-data)")
    calib = load_dataset(calib_data, input_names, dtypes, encoder) if calib_data else train
    return heldout, train, val, calib, notes + list(getattr(encoder, "notes", ()))
