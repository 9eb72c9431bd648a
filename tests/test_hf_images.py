"""Image folders for Hugging Face image models (compressor/io/image_data.py, compressor/io/hf/images.py).

A tiny ResNet made here from a local config (no download), fine-tuned for a few seconds on sklearn's 8x8 digits
(0, 1, 2, upscaled to 32x32 PNGs) so its accuracy is far from chance, is saved with a ViT image processor (resize
to 16x16, scale, normalise) as preprocessor_config.json; its
label2id ({"zero": 0, "one": 1, "two": 2}) is not the folders' sorted order, so a wrong mapping shows as a wrong
accuracy. The run's accuracy is checked against one computed here with transformers alone, and the output
directory, run with ONNX Runtime and the image processor copied beside model.onnx, must give the accuracy the
report states for model.onnx.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import weakref
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.errors import DataError
from compressor.io import image_data
from compressor.io.hf.images import ImageEncoder
from compressor.io.image_data import image_batches, open_rgb, read_folder
from tests.conftest import SAMPLES, read_report, run_cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                                or importlib.util.find_spec("PIL") is None,
                                reason='transformers or Pillow is missing: pip install -e ".[dev]"')
NAMES = ("zero", "one", "two")
LABEL2ID = {name: i for i, name in enumerate(NAMES)}  # sorted folder names would give one=0, two=1, zero=2
SIZE = 16  # the processor resizes every image to 16x16


def digit_images(per_class: int, offset: int) -> list[tuple[str, np.ndarray]]:
    """(class name, 32x32 uint8 image) for sklearn's digits 0-2, `per_class` each, starting at row `offset`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for label, name in enumerate(NAMES):
        rows = np.flatnonzero(digits.target == label)[offset:offset + per_class]
        out += [(name, np.kron(digits.images[r] * 15, np.ones((4, 4))).astype(np.uint8)) for r in rows]
    return out


def image_folder(root: Path, images: list[tuple[str, np.ndarray]], labelled: bool = True) -> Path:
    from PIL import Image

    for i, (name, pixels) in enumerate(images):
        folder = root / name if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")
    return root


def pixel_values(processor, images: list[tuple[str, np.ndarray]]) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy(processor([Image.fromarray(p, mode="L").convert("RGB") for _, p in images],
                                      return_tensors="np")["pixel_values"])


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> Path:
    """A two-stage ResNet classifier of digits 0-2 and its image processor, saved as a Hugging Face directory."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("hf") / "tiny-resnet"
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=3,
                          label2id=LABEL2ID, id2label=dict(enumerate(NAMES)),
                          architectures=["ResNetForImageClassification"])
    model = ResNetForImageClassification(config)
    train = digit_images(120, 40)  # rows the held-out folders (the first 40 of each class) never use
    x, y = pixel_values(processor, train), torch.tensor([LABEL2ID[name] for name, _ in train])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randperm(len(y), generator=gen)[:32]
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(root)
    processor.save_pretrained(root)
    return root


def accuracy_with_transformers(model_dir: Path, folder: Path) -> tuple[float, int]:
    """What a transformers user measures on an ImageFolder: every image, its class through label2id."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(model_dir), local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
    files = sorted(folder.rglob("*.png"))
    with torch.no_grad():
        logits = model(**processor([Image.open(f).convert("RGB") for f in files], return_tensors="pt")).logits
    labels = torch.tensor([model.config.label2id[f.parent.name] for f in files])
    return 100.0 * (logits.argmax(1) == labels).float().mean().item(), len(files)


def test_image_folder_through_quantize_runs_with_the_copied_image_processor(resnet, tmp_path):
    import onnxruntime as ort
    from PIL import Image
    from transformers import AutoImageProcessor

    heldout = image_folder(tmp_path / "heldout", digit_images(15, 0))
    out = tmp_path / "out"
    res = run_cli(resnet, "--task", "image-classification", "--data", heldout, "--pipeline", "quantize", "--out", out)
    assert res.code == 0, res
    report = read_report(out)
    expected, n = accuracy_with_transformers(resnet, heldout)
    assert n == 45 and expected >= 80.0, expected  # fine-tuned: a wrong label mapping could not score this
    assert report["metric"]["name"] == "accuracy" and report["baseline"]["metric"] == "accuracy"
    assert abs(report["baseline"]["value"] - expected) < 1e-3, (report["baseline"]["value"], expected)
    assert not any("sorted order" in note for note in report["notes"])  # label2id names the classes

    for name in ("model.onnx", "model.safetensors", "config.json", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": SIZE, "width": SIZE}
    processor = AutoImageProcessor.from_pretrained(str(out), local_files_only=True)  # the output directory alone
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    files = sorted(heldout.rglob("*.png"))
    feeds = processor([Image.open(f).convert("RGB") for f in files], return_tensors="np")["pixel_values"]
    logits = session.run(None, {"pixel_values": feeds.astype(np.float32)})[0]
    labels = np.array([LABEL2ID[f.parent.name] for f in files])
    onnx_accuracy = 100.0 * float((logits.argmax(1) == labels).mean())
    assert abs(onnx_accuracy - report["artifacts"][0]["metric_value"]) < 1e-3


def test_flat_folders_default_names_and_integer_folders(resnet, tmp_path):
    """No labels in a flat folder; default LABEL_k names: folders numbered in sorted order, the first folder's
    order kept for the run's other sets; folders named by id; pixel values as the processor makes them."""
    from transformers import ViTImageProcessor

    from compressor.io.hf.load import load_hf_dir

    images = digit_images(3, 0)
    flat = image_folder(tmp_path / "flat", images, labelled=False)
    encoder = load_hf_dir(resnet, None, False, False).encoder
    arrays = encoder.arrays(flat)
    assert list(arrays) == ["pixel_values"] and arrays["pixel_values"].dtype == np.float32
    expected = pixel_values(ViTImageProcessor.from_pretrained(str(resnet)), images).numpy()
    assert np.array_equal(arrays["pixel_values"], expected)  # sorted file order, the processor's own values

    plain = tmp_path / "plain"
    shutil.copytree(resnet, plain)
    config = json.loads((plain / "config.json").read_text())
    config["label2id"] = {f"LABEL_{i}": i for i in range(3)}
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
    (plain / "config.json").write_text(json.dumps(config))
    encoder = load_hf_dir(plain, None, False, False).encoder
    two = image_folder(tmp_path / "two", [(n, p) for n, p in images if n != "zero"])
    with pytest.raises(DataError, match="two: 2 class folders, but the model has 3 classes; .*default LABEL_0"):
        encoder.arrays(two)  # sorted, a missing class would shift every later id
    assert encoder.by_name is None and not encoder.notes
    assert encoder.arrays(image_folder(tmp_path / "three", images))["y"].tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert len(encoder.notes) == 1 and "sorted order (one=0, two=1, zero=2)" in encoder.notes[0]
    assert encoder.arrays(two)["y"].tolist() == [0] * 3 + [1] * 3  # later sets: the first set's ids, any subset
    renamed = image_folder(tmp_path / "renamed", [("three" if n == "zero" else n, p) for n, p in images])
    with pytest.raises(DataError, match="class folder 'three' is not a class of the model .the class folders of"):
        encoder.arrays(renamed)  # ids cannot change within a run
    by_id = image_folder(tmp_path / "ids", [(str(LABEL2ID[n]), p) for n, p in images])
    assert encoder.arrays(by_id)["y"].tolist() == [0] * 3 + [1] * 3 + [2] * 3
    res = run_cli(plain, "--data", image_folder(tmp_path / "all", images), "--pipeline", "quantize",
                  "--out", tmp_path / "out")
    assert res.code == 0, res
    notes = read_report(tmp_path / "out")["notes"]
    assert any("sorted order (one=0, two=1, zero=2)" in n for n in notes), notes


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(
        b"IEND", b"")


def test_bad_folders_are_one_line_errors(resnet, tmp_path):
    images = digit_images(2, 0)
    cases = []
    stray = image_folder(tmp_path / "stray", images)
    (stray / "one" / "notes.txt").write_text("not an image")
    cases.append((stray, "notes.txt: not an image file"))
    broken = image_folder(tmp_path / "broken", images)
    (broken / "two" / "zz.png").write_bytes(b"not a png at all")
    cases.append((broken, "zz.png: not a readable PNG image"))
    unknown = image_folder(tmp_path / "unknown", [("three" if n == "two" else n, p) for n, p in images])
    cases.append((unknown, "class folder 'three' is not a class of the model (config.json label2id: one, two, zero)"))
    bomb = image_folder(tmp_path / "bomb", images)
    (bomb / "one" / "big.png").write_bytes(png_header(30000, 30000))
    cases.append((bomb, "big.png: refused, more pixels than Pillow reads safely"))
    mixed = image_folder(tmp_path / "mixed", images)
    shutil.copy(mixed / "one" / "002.png", mixed / "loose.png")
    cases.append((mixed, "loose.png: a file beside class folders"))
    linked = image_folder(tmp_path / "linked", images)
    (linked / "zz").symlink_to(tmp_path / "stray" / "two")
    cases.append((linked, "zz: a symbolic link to "))
    for folder, needle in cases:
        res = run_cli(resnet, "--data", folder, "--out", tmp_path / "out")
        assert res.code == 1 and needle in res.stderr, (folder, res)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()
    res = run_cli(SAMPLES / "digits_mlp.pt2", "--data", stray, "--out", tmp_path / "out")
    assert res.code == 1 and "is a directory" in res.stderr and "image-classification" in res.stderr, res
    text = tmp_path / "t.txt"
    text.write_text("a text\n")
    res = run_cli(resnet, "--data", text, "--out", tmp_path / "out")
    assert res.code == 1 and "this model takes images" in res.stderr, res


def test_images_over_pillows_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)
    assert open_rgb(path).size == (40, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: past the limit, where Pillow only warns
    with pytest.raises(DataError, match="a.png: refused"):
        open_rgb(path)
    (tmp_path / ".hidden").write_text("skipped")
    assert read_folder(tmp_path).files == [Path("a.png")] and read_folder(tmp_path).classes is None


def test_symbolic_links_stay_inside_the_folder(tmp_path):
    """A link is followed only to a place inside the folder, and no folder is read twice: no file elsewhere on
    disk, no loop, no images re-read under another label."""
    outside = image_folder(tmp_path / "outside", [("deep", np.zeros((8, 8), np.uint8))])  # outside/deep/000.png
    root = image_folder(tmp_path / "root", digit_images(1, 0))  # one/001.png, two/002.png, zero/000.png

    def refused(make, needle: str) -> None:
        link = make()
        with pytest.raises(DataError, match=needle) as err:
            read_folder(root)
        assert "\n" not in str(err.value) and str(link) in str(err.value)
        link.unlink()

    refused(lambda: _link(root / "dog", tmp_path / "outside"), "dog: a symbolic link to .*outside the image folder")
    refused(lambda: _link(root / "one" / "x.png", outside / "deep" / "000.png"), "x.png: .*outside the image folder")
    refused(lambda: _link(root / "dog", root), "dog: the folder .*, read already as .*root .a loop")
    refused(lambda: _link(root / "one" / "sub", root / "one"), "sub: the folder .*, read already as .*one .a loop")
    refused(lambda: _link(root / "dog", root / "zero"), "dog: the folder .*, read already as .*zero")
    refused(lambda: _link(root / "one" / "gone.png", root / "nothing.png"), "gone.png: a symbolic link to nothing")
    refused(lambda: os.mkfifo(root / "one" / "pipe.png") or root / "one" / "pipe.png", "pipe.png: not a regular file")
    _link(root / "two" / "again.png", root / "one" / "001.png")  # a file inside the folder: read where linked
    _link(tmp_path / "root-link", root)
    folder = read_folder(tmp_path / "root-link")
    assert [f.as_posix() for f in folder.files] == ["one/001.png", "two/002.png", "two/again.png", "zero/000.png"]
    assert folder.classes == ["one", "two", "two", "zero"]


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def test_decoded_pixels_are_bounded(tmp_path, monkeypatch):
    """Images are decoded a batch at a time, a batch at most `size` images and `pixels` pixels (an image over that
    alone), the last batch freed before the next image is decoded; the processor's values do not depend on it."""
    from PIL import Image
    from transformers import ViTImageProcessor
    from transformers.image_utils import load_image

    sides = [20, 20, 20, 60, 20, 20, 20, 20]  # 400 pixels each, one of 3600
    for i, side in enumerate(sides):
        Image.fromarray(np.full((side, side), 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
    folder = read_folder(tmp_path)
    alive: list[weakref.ref] = []
    most = []

    def counted(path: Path):
        most.append(sum(r().width * r().height for r in alive if r() is not None))  # pixels alive at this decode
        image = open_rgb(path)
        alive.append(weakref.ref(image))
        return image

    monkeypatch.setattr(image_data, "open_rgb", counted)
    sizes = []
    for batch in image_batches(folder, 3, pixels=1000):
        sizes.append(len(batch))
        del batch
    assert sizes == [2, 1, 1, 2, 2] and max(most) <= 400, (sizes, most)  # 1000 pixels: two small images at once
    assert [len(b) for b in image_batches(folder, 3)] == [3, 3, 2]  # the default budget: the count bounds

    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    expected = processor([Image.open(tmp_path / f).convert("RGB") for f in folder.files], return_tensors="np")
    monkeypatch.setattr("compressor.io.hf.images.BATCH", 3)
    values = ImageEncoder(lambda: processor, {}, 3, 3).arrays(tmp_path)["pixel_values"]
    assert np.array_equal(values, expected["pixel_values"])

    rotated = tmp_path / "rotated" / "r.jpg"  # EXIF orientation 6, transposed in place: transformers' own result
    rotated.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)).save(rotated, exif=exif)
    assert np.array_equal(np.asarray(open_rgb(rotated)), np.asarray(load_image(str(rotated))))
    assert open_rgb(rotated).size == (12, 20)


def test_a_folder_too_large_for_memory_is_refused_after_one_batch(tmp_path, monkeypatch):
    from transformers import ViTImageProcessor

    folder = image_folder(tmp_path / "flat", digit_images(3, 0), labelled=False)  # 9 images, 3x16x16 float32 each
    decoded = []
    monkeypatch.setattr(image_data, "open_rgb", lambda path: decoded.append(path) or open_rgb(path))
    monkeypatch.setattr("compressor.io.hf.images.BATCH", 2)
    monkeypatch.setenv("COMPRESSOR_MAX_PIXEL_BYTES", str(8 * 3072))
    encoder = ImageEncoder(lambda: ViTImageProcessor(size={"height": SIZE, "width": SIZE}), {}, 3, 3)
    with pytest.raises(DataError, match="flat: 9 images make 27,648 bytes of pixel_values .3,072 each., more than "
                                        "the limit of 24,576; pass a subset .* COMPRESSOR_MAX_PIXEL_BYTES") as err:
        encoder.arrays(folder)
    assert "\n" not in str(err.value) and len(decoded) == 2  # refused after the first batch
    monkeypatch.setenv("COMPRESSOR_MAX_PIXEL_BYTES", str(9 * 3072))
    assert encoder.arrays(folder)["pixel_values"].shape == (9, 3, SIZE, SIZE)
