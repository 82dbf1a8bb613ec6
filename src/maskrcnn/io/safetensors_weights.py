"""safetensors files: our models with their config in the header metadata, and plain tensor
files (e.g. a torchvision state_dict saved as safetensors), recognised from their content.

A safetensors file is an 8-byte little-endian header length, a JSON header, the raw
tensors; reading it never runs code.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from torch import Tensor

FORMAT_KEY = "maskrcnn.format"  # metadata keys (string values only, as safetensors requires)
VERSION_KEY = "maskrcnn.version"
CONFIG_KEY = "maskrcnn.config"


def is_safetensors(path: str | os.PathLike) -> bool:
    """The header looks like safetensors': a plausible length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= length <= Path(path).stat().st_size - 8


def read_safetensors(path: str | os.PathLike, checkpoint_format: str) -> dict[str, Any]:
    """The file as the dict a torch checkpoint would give: {format, version, config, model}
    for ours, the plain {name: tensor} otherwise. ValueError for a damaged file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if metadata.get(FORMAT_KEY) != checkpoint_format:
        return tensors
    try:
        config = json.loads(metadata[CONFIG_KEY])
        version = int(metadata.get(VERSION_KEY, "1"))
    except (KeyError, ValueError) as err:
        raise ValueError(f"bad maskrcnn metadata ({err})") from None
    return {"format": checkpoint_format, "version": version, "config": config,
            "model": tensors}


def write_safetensors(state_dict: dict[str, Tensor], config: dict[str, Any], path: Any,
                      checkpoint_format: str, version: int) -> None:
    """Tensors + our config in the metadata, written atomically."""
    from safetensors.torch import save

    from .atomic import atomic_write

    metadata = {FORMAT_KEY: checkpoint_format, VERSION_KEY: str(version),
                CONFIG_KEY: json.dumps(config)}
    # safetensors refuses tensors that share memory or are not contiguous: copy those
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data), binary=True)
