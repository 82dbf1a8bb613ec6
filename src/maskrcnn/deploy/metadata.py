"""What travels with an exported file: the model config (classes, category ids,
thresholds, input settings), the preset, the mask output kind and the format version.

Stored as string key/value pairs: ONNX `metadata_props`, OpenVINO `rt_info` under
"maskrcnn". Every value is JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..config import ModelConfig, config_from_dict, config_to_dict, preset_name
from ..io.weights import WeightsError

FORMAT = "maskrcnn-export"
FORMAT_VERSION = 1
MASK_OUTPUTS = ("pasted", "probs")
PREFIX = "maskrcnn."
MAX_SIDE = 2**15 - 1  # the largest image side an exported model takes (exact resize)


class ExportError(ValueError):
    """A model or an option that cannot be exported; the message says why."""


@dataclass
class ExportInfo:
    """The metadata of an exported model."""

    cfg: ModelConfig
    mask_output: str = "pasted"  # "pasted": bool [N, H, W]; "probs": float [N, M, M]
    format_version: int = FORMAT_VERSION
    preset: str = "custom"


def to_strings(info: ExportInfo, package_version: str) -> dict[str, str]:
    """Metadata as {"maskrcnn.<key>": JSON string}."""
    cfg = info.cfg
    values = {
        "format": FORMAT,
        "format_version": info.format_version,
        "version": package_version,
        "preset": info.preset,
        "mask_output": info.mask_output,
        "class_names": list(cfg.class_names),
        "category_ids": list(cfg.category_ids),
        "score_threshold": cfg.roi_heads.score_thresh,
        "mask_threshold": cfg.roi_heads.mask_threshold,
        "config": config_to_dict(cfg),
    }
    return {PREFIX + key: json.dumps(value) for key, value in values.items()}


def from_strings(strings: dict[str, str], path: object) -> ExportInfo:
    """Parse metadata read from a file; WeightsError (naming `path`) if it is not ours,
    newer than this version reads, or damaged."""
    if strings.get(PREFIX + "format") != json.dumps(FORMAT):
        raise WeightsError(f"{path}: not a model exported by maskrcnn (no maskrcnn metadata); "
                           "export one with `maskrcnn export`")
    try:
        version = int(json.loads(strings[PREFIX + "format_version"]))
        if version > FORMAT_VERSION:
            raise WeightsError(
                f"{path}: exported in format version {version} by maskrcnn "
                f"{json.loads(strings.get(PREFIX + 'version', '0'))}; this maskrcnn reads "
                f"version {FORMAT_VERSION} and older: upgrade maskrcnn")
        cfg = config_from_dict(json.loads(strings[PREFIX + "config"]))
        mask_output = json.loads(strings[PREFIX + "mask_output"])
        preset = json.loads(strings.get(PREFIX + "preset", '"custom"'))
    except WeightsError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{path}: damaged maskrcnn metadata ({err})") from None
    if mask_output not in MASK_OUTPUTS:
        raise WeightsError(f"{path}: unknown mask output {mask_output!r} in the metadata")
    return ExportInfo(cfg, mask_output, version, str(preset))


def info_for(cfg: ModelConfig, mask_output: str) -> ExportInfo:
    if mask_output not in MASK_OUTPUTS:
        raise ValueError(f"mask_output must be one of {MASK_OUTPUTS}, not {mask_output!r}")
    return ExportInfo(cfg, mask_output, FORMAT_VERSION, preset_name(cfg))
