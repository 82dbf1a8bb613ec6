"""Reading images from disk into the model's input format.

`load_image` returns a float32 tensor [3, H, W], RGB in [0, 1], with the EXIF orientation
applied. Anything that cannot be read completely raises `ImageError`, whose message names
the file and says why; truncated files are errors, never partially decoded images.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor

# EXIF orientations (TIFF tag 0x0112) that swap width and height: transposes and 90° turns.
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image file is missing, unreadable, truncated or not what its annotation says."""


def load_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file completely: float32 [3, H, W], RGB in [0, 1].

    Grayscale is replicated to 3 channels, alpha is dropped, palette images are expanded,
    16-bit images are scaled by 1/65535, and the EXIF orientation is applied.
    Raises ImageError (naming the file) for missing, unreadable or truncated files.
    """
    path = Path(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # somebody flipped PIL's global switch
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images will not be "
            "detected", RuntimeWarning, stacklevel=2,
        )
    try:
        with Image.open(path) as img:
            img.load()  # force the full decode now: truncation surfaces here
            img = ImageOps.exif_transpose(img)
            array = _to_rgb_array(img, path)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except PermissionError as err:
        raise ImageError(f"{path}: cannot read image file ({err.strerror})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file or an unsupported format") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: image too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{path}: truncated or corrupt image data ({err})") from None
    return _array_to_tensor(array)


def _to_rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    """PIL image of any common mode -> [H, W, 3] uint8, or float32 in [0, 1] for 16 bit."""
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(img).astype(np.float32) / 65535.0  # [H, W]
        return np.repeat(np.clip(gray, 0.0, 1.0)[:, :, None], 3, axis=2)  # [H, W, 3]
    if img.mode == "F":
        raise ImageError(f"{path}: floating-point images are not supported")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL's recommended route for palette transparency
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img)  # writable copy: torch.from_numpy refuses read-only arrays


def _array_to_tensor(array: np.ndarray) -> Tensor:
    """[H, W, 3] uint8 or float32 array -> float32 [3, H, W] in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # [3, H, W]
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32).div_(255.0).contiguous()
    return tensor.to(torch.float32).contiguous()


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as `load_image` would return it, from the header only.

    Checks that the file exists and that PIL recognises it; does not decode the pixels,
    so truncation is not detected here. Raises ImageError naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = _header_orientation(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except PermissionError as err:
        raise ImageError(f"{path}: cannot read image file ({err.strerror})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file or an unsupported format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{path}: corrupt image header ({err})") from None
    if orientation in _SWAPPING_ORIENTATIONS:
        return width, height
    return height, width


def _header_orientation(img: Image.Image) -> int:
    """EXIF orientation without decoding pixels (PIL's PNG getexif would decode the image
    to look for an eXIf chunk after the pixel data; such late chunks are ignored here)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
