"""Image folders as they usually come: torchvision's ImageFolder layout (one subfolder per class, its images inside,
nested folders included) or a flat folder of images without labels.

Why a module of its own: an image file is where a data set can hurt (a decompression bomb, a file that is not
what its name says, a decoder for a format nobody asked for), and reading one needs Pillow, which compressor
imports only when a folder is given. So this module lists a folder in one stable order (paths sorted as written
relative to the folder, the same rows on every run and machine), opens each file with only the decoder its
extension names, refuses an image over Pillow's MAX_IMAGE_PIXELS before decoding it, reads it as transformers'
`load_image` does (EXIF orientation applied, then RGB) and hands images out a batch at a time, so at most one
batch of decoded images is alive. Turning them into `pixel_values` is the model's image processor's job, and
class names become ids through config.json's label2id there too (`compressor.io.hf.images`), not here.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.errors import DataError

IMAGE_FORMATS = {".bmp": "BMP", ".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}  # suffix: decoder


@dataclass
class ImageFolder:
    """The images of a folder, in reading order, and the class folder of each (None: a flat folder, no labels)."""

    root: Path
    files: list[Path]  # relative to root
    classes: list[str] | None


def read_folder(root: Path) -> ImageFolder:
    """A folder's images: class subfolders (every file under each, at any depth) or images at its top level, never
    both. Hidden entries (a leading dot: .DS_Store, .git) are skipped; any other file must be an image."""
    entries = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    dirs = [p for p in entries if p.is_dir()]
    if not dirs:
        files = [_image(p, root) for p in entries]
        if not files:
            raise DataError(f"{root}: an empty folder; expected images, or one subfolder of images per class")
        return ImageFolder(root, files, None)
    if len(dirs) < len(entries):
        stray = next(p for p in entries if not p.is_dir())
        raise DataError(f"{stray}: a file beside class folders; an image folder holds one subfolder per class or "
                        "images only, not both")
    files, classes = [], []
    for folder in dirs:
        found = sorted((p for p in folder.rglob("*") if p.is_file() and not _hidden(p, root)),
                       key=lambda p: p.relative_to(root).as_posix())
        if not found:
            raise DataError(f"{folder}: class folder {folder.name!r} holds no images")
        files += [_image(p, root) for p in found]
        classes += [folder.name] * len(found)
    return ImageFolder(root, files, classes)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _image(path: Path, root: Path) -> Path:
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise DataError(f"{path}: not an image file (read: {', '.join(IMAGE_FORMATS)}); an image folder holds "
                        "images only")
    return path.relative_to(root)


def image_batches(folder: ImageFolder, size: int) -> Iterator[list[Any]]:
    """The folder's images as RGB `PIL.Image`s, `size` at a time, in reading order."""
    for start in range(0, len(folder.files), size):
        yield [open_rgb(folder.root / rel) for rel in folder.files[start:start + size]]


def open_rgb(path: Path) -> Any:
    """One image file decoded as RGB with its EXIF orientation applied; anything else is a one-line DataError: a
    file the decoder its extension names cannot read, or an image over Pillow's MAX_IMAGE_PIXELS (refused from its
    header, before its pixels are decoded)."""
    from PIL import Image, ImageOps

    decoder = IMAGE_FORMATS[path.suffix.lower()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refused, not warned
            with Image.open(path, formats=[decoder]) as image:
                upright = ImageOps.exif_transpose(image)
                return upright.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused, more pixels than Pillow reads safely ({first_line(exc)})") from None
    except Exception as exc:  # any decoder failure on an untrusted file: the file named, never a traceback
        raise DataError(f"{path}: not a readable {decoder} image ({type(exc).__name__}: {first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "no detail"
