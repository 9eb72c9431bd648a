"""Image folders (`compressor.io.image_data`) to an image model's inputs with its own image processor: the
`pixel_values` float32 array the data path reads from an `.npz`, and `y` from the class folders.

Class folders become label ids as text labels do (`files.class_ids`): a folder's name through config.json's
label2id; a folder named by an integer is that id. config.json often holds only transformers' default names
(LABEL_0, LABEL_1, ...: the model was trained with its own mapping, not saved): then the folders map in sorted
order, as torchvision's ImageFolder and the `imagefolder` loader of datasets number them, fixed by the first folder
the run reads (the held-out set) so every set of the run uses the same ids, and a note in the report says so; that
folder must then hold one folder per class of the model, as a missing one would shift every later id.

A folder's `pixel_values` are one float32 array: its size (the image count times the first batch's bytes per
image) is held to COMPRESSOR_MAX_PIXEL_BYTES (16 GiB by default) before the other images are decoded, so a folder
too large for memory fails at once, not after hours of decoding.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import DataError
from compressor.io.archive import env_limit
from compressor.io.hf.files import class_ids, is_default_label2id
from compressor.io.image_data import ImageFolder, first_line, image_batches, read_folder

BATCH = 32  # images decoded and preprocessed at a time at most (the only PIL images alive), fewer if large
PIXEL_LIMIT_ENV = "COMPRESSOR_MAX_PIXEL_BYTES"  # a folder's whole pixel_values array at most, in bytes
DEFAULT_MAX_PIXEL_BYTES = 16 << 30  # what an .npz may unpack to
SHOWN = 6  # class names a note lists


@dataclass
class ImageEncoder:
    """A folder of images to `pixel_values` (the processor's output for every image, one shape for the whole folder)
    and labels. The processor is loaded on the first folder, so a model run on `.npz` data never needs one."""

    load_processor: Callable[[], Any]
    label2id: dict[str, int]
    num_labels: int
    channels: int
    notes: list[str] = field(default_factory=list)  # for the report: how class folders were numbered
    by_name: dict[str, int] | None = None  # the sorted-name ids, once the first labelled folder fixed them
    named_by: Path | None = None  # that folder
    processor: Any = None
    reads = "images"

    def arrays(self, path: Path) -> dict[str, np.ndarray]:
        if self.channels != 3:
            raise DataError(f"{path}: the model takes {self.channels}-channel images and an image folder is read as "
                            "RGB; pass its pixel_values in an .npz")
        folder = read_folder(path)
        labels = None if folder.classes is None else self.label_ids(folder)
        if self.processor is None:
            self.processor = self.load_processor()
        pixels, start = None, 0
        for images in image_batches(folder, BATCH):
            values = self._pixel_values(images, folder, start)
            if pixels is None:
                pixels = _allocate(folder, values)
            elif values.shape[1:] != pixels.shape[1:]:
                raise DataError(f"{folder.root / folder.files[start]}: the image processor made {values.shape[1:]} "
                                f"where earlier images gave {pixels.shape[1:]}; every image needs one size (does "
                                "preprocessor_config.json resize?)")
            pixels[start:start + len(images)] = values
            start += len(images)
            del images  # freed before the next batch is decoded
        arrays = {"pixel_values": pixels}
        if labels is not None:
            arrays["y"] = labels
        return arrays

    def _pixel_values(self, images: list[Any], folder: ImageFolder, start: int) -> np.ndarray:
        try:
            out = self.processor(images=images, return_tensors="np")
            values = np.asarray(out["pixel_values"], dtype=np.float32)
        except Exception as exc:
            more = f" and the {len(images) - 1} after it" if len(images) > 1 else ""
            which = f"{folder.files[start]}{more}"
            raise DataError(f"{folder.root}: the model's image processor failed on {which} ({type(exc).__name__}: "
                            f"{first_line(exc)})") from exc
        if values.ndim != 4 or values.shape[0] != len(images):
            raise DataError(f"{folder.root}: the image processor gave pixel_values of shape {values.shape}, not one "
                            "(channels, height, width) image per file")
        return values

    def label_ids(self, folder: ImageFolder) -> np.ndarray:
        """Class folder names to ids as text labels map (an integer name is that id, any other through label2id);
        with only default names in label2id, the folders' sorted order, fixed by the first labelled folder read."""
        labels = [int(n) if n.isascii() and n.isdigit() else n for n in folder.classes]
        names = sorted({n for n in labels if isinstance(n, str)})
        if all(n in self.label2id for n in names) or not is_default_label2id(self.label2id):
            return np.asarray(class_ids(labels, self.label2id, folder.root, "class folder"), dtype=np.int64)
        if self.by_name is None:
            if len(set(labels)) != self.num_labels:  # a missing class would shift the ids of every later one
                raise DataError(f"{folder.root}: {len(set(labels))} class folders, but the model has "
                                f"{self.num_labels} classes; config.json label2id holds only the default LABEL_0.. "
                                "names, so the folders are numbered in sorted order and each class needs its folder "
                                "(or name the classes in label2id, or the folders by id)")
            self.by_name, self.named_by = {n: i for i, n in enumerate(names)}, folder.root
            shown = ", ".join(f"{n}={i}" for n, i in list(self.by_name.items())[:SHOWN])
            more = f", ... ({len(names)} classes)" if len(names) > SHOWN else ""
            self.notes.append(f"class folders of {folder.root} numbered in sorted order ({shown}{more}), for every "
                              "set of the run: config.json label2id holds only the default LABEL_0.. names; name the "
                              "classes there (or the folders by id) if the model was trained with another order")
        return np.asarray(class_ids(labels, self.by_name, folder.root, "class folder",
                                    f"the class folders of {self.named_by}, numbered in sorted order"), dtype=np.int64)


def _allocate(folder: ImageFolder, first: np.ndarray) -> np.ndarray:
    """The folder's whole pixel_values array, its size known from the first batch, refused past the limit before
    the other images are decoded."""
    each = first[0].nbytes
    total, limit = each * len(folder.files), env_limit(PIXEL_LIMIT_ENV, DEFAULT_MAX_PIXEL_BYTES)
    if total > limit:
        raise DataError(f"{folder.root}: {len(folder.files):,} images make {total:,} bytes of pixel_values "
                        f"({each:,} each), more than the limit of {limit:,}; pass a subset of the images or their "
                        f"pixel_values as an .npz, or raise {PIXEL_LIMIT_ENV} if the memory is there")
    return np.empty((len(folder.files), *first.shape[1:]), dtype=np.float32)
