"""Images a user hands `predict`: an image file, a folder of them (a class-named parent folder gives the label),
or a CIFAR batch file; decoded to uint8 (N, 32, 32, 3), with sizes checked before decoding."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import UsageError
from pipeline.workloads.cifar.data import CIFAR_CLASSES, IMAGE_SIZE, read_batch

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
# predict shrinks every image to 32x32, and a PNG of a few KB can claim gigapixels (a decompression bomb):
MAX_IMAGE_SIDE = 4096  # images over 4096**2 pixels (48 MiB as RGB) are refused before decoding
BACKGROUND = (255, 255, 255, 255)  # transparent pixels are shown on white, as an image viewer shows them


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images to classify: names, uint8 (N, 32, 32, 3) pixels and, where known, true labels (-1 unknown)."""

    names: list[str]
    images: np.ndarray
    labels: np.ndarray


def read_images(path: str | Path) -> ImageSet:
    """An image file, a folder of images (a class-named parent folder gives the label), or a CIFAR batch file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"input: {readable(path)} does not exist; give an image, a folder of images or a CIFAR "
                         "batch file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"input: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {readable(path)}")
        return _image_files(files, path)
    if not path.is_file():  # reading a FIFO waits for a writer forever; a device can be endless
        raise UsageError(f"input: {readable(path)} is not a regular file or a folder (a pipe, a device or a "
                         "socket); give an image, a folder of images or a CIFAR batch file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _image_files([path], path.parent)
    images, labels = read_batch(path)
    return ImageSet([f"{readable(path.name)}[{i}]" for i in range(len(labels))], images, labels)


def readable(name: str | Path) -> str:
    """A file name as printable text for output, CSV and the store: bytes that are not UTF-8 (which os.fsdecode
    turns into surrogates no encoder takes) as \\xff, characters that are not printable (a tab or newline in a
    name would break the one line per image) as \\t, \\n, \\u202e."""
    text = os.fsencode(str(name)).decode("utf-8", "backslashreplace")
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def _image_files(files: list[Path], root: Path) -> ImageSet:
    """Decode image files to 32x32 RGB; a class-named parent folder gives the label."""
    pixels, labels = [], []
    for file in files:
        pixels.append(_decode_image(file))
        parent = file.parent.name
        labels.append(CIFAR_CLASSES.index(parent) if parent in CIFAR_CLASSES else -1)
    names = [readable(file.relative_to(root)) for file in files]
    return ImageSet(names, np.stack(pixels), np.asarray(labels, dtype=np.int64))


def _decode_image(file: Path) -> np.ndarray:
    """One image file as uint8 (32, 32, 3) RGB; its size is checked before decoding, as a tiny file can claim any."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            # PIL warns of a likely decompression bomb from about 89M pixels: an error here, caught below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                if image.width * image.height > MAX_IMAGE_SIDE**2:
                    raise Image.DecompressionBombError(f"{image.width}x{image.height}")
                # resize copies an image already 32x32; others are shrunk, as the model only knows 32x32
                if "exif" in image.info:  # a phone photo stands as it was taken (EXIF orientation)
                    image = ImageOps.exif_transpose(image)
                rgb = _as_rgb(image, file)
                return np.asarray(rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)
    except UsageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # neither is an OSError
        raise UsageError(f"input: image {readable(file)} is over the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixel cap; "
                         "predict needs only 32x32, so shrink it first") from None
    except Exception as err:  # a damaged file can raise almost anything inside PIL's decoders
        raise UsageError(f"input: cannot read image {readable(file)} ({type(err).__name__}); remove or replace "
                         "it") from None


def _as_rgb(image: "Image.Image", file: Path) -> "Image.Image":
    """8-bit RGB pixels of any mode: 16-bit grey (I;16*, and I as 16-bit PNGs give it) scaled by 1/256, not
    clipped at 255 as convert("RGB") does; transparency laid on white; floating-point pixels (F), whose range no
    file states, refused."""
    from PIL import Image

    if image.mode == "F":
        raise UsageError(f"input: image {readable(file)} has floating-point pixels (mode F), whose range is not "
                         "known; save it with 8- or 16-bit pixels")
    if image.mode == "I" or image.mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise UsageError(f"input: image {readable(file)} has 32-bit pixels outside 0-65535 (mode I); save it "
                             "with 8- or 16-bit pixels")
        image = Image.fromarray((grey >> 8).astype(np.uint8))  # mode L
    if image.has_transparency_data:  # P with a transparent colour, LA, PA, RGBA
        image = Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND), image.convert("RGBA"))
    return image.convert("RGB")
