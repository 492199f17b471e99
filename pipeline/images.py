"""Images a user hands `predict`: an image file, a folder of them (a class-named parent folder gives the label),
or a CIFAR batch file; decoded to uint8 (N, 32, 32, 3), with sizes checked before decoding."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data import CIFAR_CLASSES, IMAGE_SIZE, read_batch
from pipeline.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
# predict shrinks every image to 32x32, and a PNG of a few KB can claim gigapixels (a decompression bomb):
MAX_IMAGE_SIDE = 4096  # images over 4096**2 pixels (48 MiB as RGB) are refused before decoding


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
        raise UsageError(f"input: {path} does not exist; give an image, a folder of images or a CIFAR batch file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"input: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return _image_files(files, path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _image_files([path], path.parent)
    images, labels = read_batch(path)
    return ImageSet([f"{path.name}[{i}]" for i in range(len(labels))], images, labels)


def _image_files(files: list[Path], root: Path) -> ImageSet:
    """Decode image files to 32x32 RGB; a class-named parent folder gives the label."""
    pixels, labels = [], []
    for file in files:
        pixels.append(_decode_image(file))
        parent = file.parent.name
        labels.append(CIFAR_CLASSES.index(parent) if parent in CIFAR_CLASSES else -1)
    names = [str(file.relative_to(root)) if file != root else file.name for file in files]
    return ImageSet(names, np.stack(pixels), np.asarray(labels, dtype=np.int64))


def _decode_image(file: Path) -> np.ndarray:
    """One image file as uint8 (32, 32, 3) RGB; its size is checked before decoding, as a tiny file can claim any."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL warns of a likely decompression bomb from about 89M pixels: an error here, caught below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                if image.width * image.height > MAX_IMAGE_SIDE**2:
                    raise Image.DecompressionBombError(f"{image.width}x{image.height}")
                # resize copies an image already 32x32; others are shrunk, as the model only knows 32x32
                image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                return np.asarray(image, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # neither is an OSError
        raise UsageError(f"input: image {file} is over the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixel cap; predict "
                         "needs only 32x32, so shrink it first") from None
    except Exception as err:  # a damaged file can raise almost anything inside PIL's decoders
        raise UsageError(f"input: cannot read image {file} ({type(err).__name__}); remove or replace it") from None
