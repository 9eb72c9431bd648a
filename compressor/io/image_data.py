"""Image folders as they usually come: torchvision's ImageFolder layout (one subfolder per class, its images inside,
nested folders included) or a flat folder of images without labels.

Why a module of its own: an image file is where a data set can hurt (a decompression bomb, a file that is not
what its name says, a decoder for a format nobody asked for), and reading one needs Pillow, which compressor
imports only when a folder is given. So this module lists a folder in one stable order (paths sorted as written
relative to the folder, the same rows on every run and machine), following a symbolic link only to a place inside
the folder and reading no folder twice (no file elsewhere on disk, no loop), opens each file with only the decoder
its extension names, refuses an image over Pillow's MAX_IMAGE_PIXELS before decoding it, reads it as transformers'
`load_image` does (EXIF orientation applied, then RGB) and hands images out a batch at a time, a batch bounded in
images and in pixels, so the decoded pixels alive at once are bounded too. Turning them into `pixel_values` is the
model's image processor's job, and class names become ids through config.json's label2id there too
(`compressor.io.hf.images`), not here.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.errors import DataError

IMAGE_FORMATS = {".bmp": "BMP", ".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}  # suffix: decoder
PIXELS_AT_ONCE = 1 << 25  # decoded pixels alive in a batch (96 MiB as RGB); a larger image is read alone


@dataclass
class ImageFolder:
    """The images of a folder, in reading order, and the class folder of each (None: a flat folder, no labels)."""

    root: Path
    files: list[Path]  # relative to root
    classes: list[str] | None


def read_folder(root: Path) -> ImageFolder:
    """A folder's images: class subfolders (every file under each, at any depth) or images at its top level, never
    both. Hidden entries (a leading dot: .DS_Store, .git) are skipped; any other file must be an image. Symbolic
    links are followed only inside the folder: one whose target is outside it, a folder the walk is inside of or
    has read already (a loop, or the same images under two names), or nothing at all is a DataError."""
    walk = _Walk(root.resolve())
    entries = walk.entries(root)
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
        found = sorted((_image(p, root) for p in walk.files(folder)), key=lambda p: p.as_posix())
        if not found:
            raise DataError(f"{folder}: class folder {folder.name!r} holds no images")
        files += found
        classes += [folder.name] * len(found)
    return ImageFolder(root, files, classes)


class _Walk:
    """Lists folders under one real root, every directory read at most once, symbolic links checked as they come."""

    def __init__(self, real_root: Path):
        self.root, self.read = real_root, {real_root: real_root}  # real directory: the path it was reached by

    def entries(self, folder: Path) -> list[Path]:
        """The folder's visible entries by name: directories and regular files, a link's target checked (and
        claimed after the folder's real subfolders, so a link to one of them is the entry refused)."""
        paths = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
        links = {p: self._target(p) for p in paths if p.is_symlink()}
        for path in sorted(paths, key=lambda p: p in links):
            target = links.get(path, path)
            if target.is_dir():
                real = target.resolve()
                if real in self.read:
                    raise DataError(f"{path}: the folder {real}, read already as {self.read[real]} (a loop of "
                                    "symbolic links, or the same images under two names)")
                self.read[real] = path
            elif not target.is_file():
                raise DataError(f"{path}: not a regular file or folder; an image folder holds images only")
        return paths

    def files(self, folder: Path) -> list[Path]:
        """Every file under a folder, at any depth, in no particular order."""
        out, todo = [], [folder]
        while todo:
            for path in self.entries(todo.pop()):
                (todo if path.is_dir() else out).append(path)
        return out

    def _target(self, link: Path) -> Path:
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DataError(f"{link}: a symbolic link to nothing (or a loop of links)") from None
        if not target.is_relative_to(self.root):
            raise DataError(f"{link}: a symbolic link to {target}, outside the image folder {self.root}; copy the "
                            "images in instead")
        return target


def _image(path: Path, root: Path) -> Path:
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise DataError(f"{path}: not an image file (read: {', '.join(IMAGE_FORMATS)}); an image folder holds "
                        "images only")
    return path.relative_to(root)


def image_batches(folder: ImageFolder, size: int, pixels: int = PIXELS_AT_ONCE) -> Iterator[list[Any]]:
    """The folder's images as RGB `PIL.Image`s in reading order, at most `size` at a time and, but for an image
    larger on its own, at most `pixels` pixels at a time (each image's size read from its header first)."""
    batch: list[Any] = []
    held = 0
    for rel in folder.files:
        path = folder.root / rel
        count = _decoded(path, lambda image: image.width * image.height)
        if batch and (len(batch) == size or held + count > pixels):
            yield batch
            batch, held = [], 0  # the batch handed out is freed before the next image is decoded
        batch.append(open_rgb(path))
        held += count
    if batch:
        yield batch


def open_rgb(path: Path) -> Any:
    """One image file decoded as RGB with its EXIF orientation applied (as transformers' `load_image`, transposed
    in place: one copy fewer alive); anything else is a one-line DataError: a file the decoder its extension
    names cannot read, or an image over Pillow's MAX_IMAGE_PIXELS (refused from its header, before its pixels are
    decoded)."""
    from PIL import ImageOps

    def rgb(image: Any) -> Any:
        ImageOps.exif_transpose(image, in_place=True)
        return image.convert("RGB")
    return _decoded(path, rgb)


def _decoded(path: Path, read: Callable[[Any], Any]) -> Any:
    """`read` applied to the file opened by the decoder its extension names, errors as one-line DataErrors."""
    from PIL import Image

    decoder = IMAGE_FORMATS[path.suffix.lower()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refused, not warned
            with Image.open(path, formats=[decoder]) as image:
                return read(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused, more pixels than Pillow reads safely ({first_line(exc)})") from None
    except Exception as exc:  # any decoder failure on an untrusted file: the file named, never a traceback
        raise DataError(f"{path}: not a readable {decoder} image ({type(exc).__name__}: {first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "no detail"
