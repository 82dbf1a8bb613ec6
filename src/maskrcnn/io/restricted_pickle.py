"""Plain pickles of numpy arrays (detectron2's model zoo `.pkl`, MSRA/Caffe2 ImageNet bodies),
read without running code.

`pickle` calls whatever global a file names; this unpickler resolves only numpy's array
and scalar constructors and OrderedDict, as numpy 1.x (`numpy.core.*`) and 2.x
(`numpy._core.*`) pickle them, plus `_codecs.encode` for the bytes of protocol-2 pickles
written by Python 3. Containers, strings and numbers are pickle opcodes, not globals. Any
other global raises `PickleRefused` before anything is called. Python 2 pickles are read
with `encoding="latin1"` (their array data arrives as str), as detectron2 reads them.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

# torch's legacy (non-zip) format starts with its magic number 0x1950a86a20f9469cfc6c pickled
# as a LONG1 (after PROTO, and a FRAME from protocol 4 on)
_TORCH_LEGACY_MAGIC = b"\x8a\n" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# a pickle starts with PROTO (protocol 2+) or, protocols 0/1, with MARK / EMPTY_DICT / GLOBAL
_PICKLE_FIRST_BYTES = (b"\x80", b"(", b"}", b"c")


class PickleRefused(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; `name` is "module.attribute"."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refused global {name}")
        self.name = name


def _encode_latin1(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: str -> latin-1 bytes only."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise PickleRefused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """numpy's protocol-5 array constructor, for in-band buffers (bytes / bytearray)."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype):
        raise PickleRefused(f"_frombuffer({type(buffer).__name__}, {type(dtype).__name__})")
    if dtype.hasobject:
        raise PickleRefused("_frombuffer with an object dtype")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # multiarray._reconstruct, any numpy
    scalar = np.float32(0).__reduce__()[0]  # multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _encode_latin1,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise PickleRefused(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefused("a persistent id (torch storages belong in torch.save files)")


def loads_numpy_pickle(data: bytes) -> Any:
    """Unpickle bytes with the allow-list above. PickleRefused for a refused global, other
    pickle.UnpicklingError / EOFError / ValueError ... for a damaged pickle."""
    return _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()


def is_plain_pickle(path: str | os.PathLike) -> bool:
    """A pickle that is neither a torch.save zip nor torch's legacy format (by its header)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if not head or _TORCH_LEGACY_MAGIC in head or zipfile.is_zipfile(path):
        return False
    return head[:1] in _PICKLE_FIRST_BYTES


def read_numpy_pickle(path: str | os.PathLike) -> Any:
    """The unpickled contents of `path` (see loads_numpy_pickle)."""
    with open(path, "rb") as f:
        return loads_numpy_pickle(f.read())


def to_tensor(value: Any):
    """A numeric numpy array (or a torch tensor, or a number) as a CPU tensor that owns its
    memory; TypeError for anything else."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value, copy=True))
    raise TypeError(f"not a numeric array: {type(value).__name__}"
                    + (f" of {value.dtype}" if isinstance(value, np.ndarray) else ""))
