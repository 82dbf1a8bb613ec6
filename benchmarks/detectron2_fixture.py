"""Write tests/fixtures/detectron2/: detectron2's own outputs for a seeded Mask R-CNN R50-FPN.

The weights are not stored: `detectron2_weights(seed)` draws them from numpy's PCG64 (stable
across numpy versions) in detectron2's names and layouts, so the test rebuilds the same
file, loads it with maskrcnn.io.weights.load_model and compares its outputs with the ones
detectron2 computed here (tests/io/test_detectron2_parity.py). Only `main()` needs
detectron2; `detectron2_weights`, `synthetic_image` and `fixture_config` need numpy.

Needs detectron2's python code importable (a checkout on PYTHONPATH, or pip-installed) and
its dependencies (fvcore, iopath, omegaconf, yacs, termcolor, tabulate, cloudpickle). The
model uses no op of detectron2's C++ extension (ROIAlign and NMS are torchvision's), so an
uncompiled checkout works if `detectron2._C` can be imported or is stubbed by the caller.

    PYTHONPATH=/path/to/detectron2 DETECTRON2_CONFIGS=/path/to/detectron2/configs \
        DETECTRON2_SOURCE="<commit>" python benchmarks/detectron2_fixture.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "detectron2"
SEED = 2024
NUM_CLASSES = 4  # foreground classes (detectron2's NUM_CLASSES)
WIDTHS = {"fpn": 64, "fc": 128, "mask": 64}
IMAGE_SIZE = (250, 330)  # h, w: not a multiple of 32, so both pad
BLOCKS = (3, 4, 6, 3)


def fixture_config() -> dict:
    """The settings both models use (detectron2 config keys -> values)."""
    return {
        "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.STRIDE_IN_1X1": True,
        "MODEL.FPN.OUT_CHANNELS": WIDTHS["fpn"], "MODEL.ROI_BOX_HEAD.FC_DIM": WIDTHS["fc"],
        "MODEL.ROI_MASK_HEAD.CONV_DIM": WIDTHS["mask"],
        "MODEL.ROI_HEADS.NUM_CLASSES": NUM_CLASSES,
        "INPUT.MIN_SIZE_TEST": min(IMAGE_SIZE), "INPUT.MAX_SIZE_TEST": 2000,
    }


def _conv(rng, out_c: int, in_c: int, k: int, gain: float = 2.0) -> np.ndarray:
    std = np.sqrt(gain / (in_c * k * k))
    return (rng.standard_normal((out_c, in_c, k, k), dtype=np.float32) * std).astype(np.float32)


def _norm(rng, c: int, prefix: str, out: dict, scale: float = 1.0) -> None:
    out[prefix + "weight"] = (rng.uniform(0.5, 1.0, c) * scale).astype(np.float32)
    out[prefix + "bias"] = rng.normal(0.0, 0.1, c).astype(np.float32)
    out[prefix + "running_mean"] = rng.normal(0.0, 0.1, c).astype(np.float32)
    out[prefix + "running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)


def _small(rng, *shape: int, std: float) -> np.ndarray:
    return rng.normal(0.0, std, shape).astype(np.float32)


def detectron2_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """A seeded detectron2 mask_rcnn_R_50_FPN state_dict (numpy float32), with scales that
    keep features near unit size and spread the scores."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    body = "backbone.bottom_up."
    w[body + "stem.conv1.weight"] = _conv(rng, 64, 3, 7, gain=2.0 / 255**2 * 40)
    _norm(rng, 64, body + "stem.conv1.norm.", w)
    in_c = 64
    for stage, blocks in enumerate(BLOCKS):
        mid, out_c = 64 * 2**stage, 256 * 2**stage
        for b in range(blocks):
            p = f"{body}res{stage + 2}.{b}."
            if b == 0:
                w[p + "shortcut.weight"] = _conv(rng, out_c, in_c, 1)
                _norm(rng, out_c, p + "shortcut.norm.", w, scale=0.5)
            for i, (o, c, k) in enumerate([(mid, in_c if b == 0 else out_c, 1), (mid, mid, 3),
                                           (out_c, mid, 1)], start=1):
                w[f"{p}conv{i}.weight"] = _conv(rng, o, c, k)
                _norm(rng, o, f"{p}conv{i}.norm.", w, scale=0.3 if i == 3 else 1.0)
        in_c = out_c
    fpn = WIDTHS["fpn"]
    for level, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        w[f"backbone.fpn_lateral{level}.weight"] = _conv(rng, fpn, c, 1, gain=1.0)
        w[f"backbone.fpn_lateral{level}.bias"] = _small(rng, fpn, std=0.05)
        w[f"backbone.fpn_output{level}.weight"] = _conv(rng, fpn, fpn, 3, gain=1.0)
        w[f"backbone.fpn_output{level}.bias"] = _small(rng, fpn, std=0.05)
    rpn = "proposal_generator.rpn_head."
    w[rpn + "conv.weight"] = _conv(rng, fpn, fpn, 3)
    w[rpn + "conv.bias"] = _small(rng, fpn, std=0.05)
    w[rpn + "objectness_logits.weight"] = _conv(rng, 3, fpn, 1, gain=4.0)
    w[rpn + "objectness_logits.bias"] = _small(rng, 3, std=0.1)
    w[rpn + "anchor_deltas.weight"] = _conv(rng, 12, fpn, 1, gain=0.05)
    w[rpn + "anchor_deltas.bias"] = _small(rng, 12, std=0.02)
    fc, k = WIDTHS["fc"], NUM_CLASSES
    w["roi_heads.box_head.fc1.weight"] = _small(rng, fc, fpn * 49, std=np.sqrt(2 / (fpn * 49)))
    w["roi_heads.box_head.fc1.bias"] = _small(rng, fc, std=0.05)
    w["roi_heads.box_head.fc2.weight"] = _small(rng, fc, fc, std=np.sqrt(2 / fc))
    w["roi_heads.box_head.fc2.bias"] = _small(rng, fc, std=0.05)
    w["roi_heads.box_predictor.cls_score.weight"] = _small(rng, k + 1, fc, std=0.3)
    w["roi_heads.box_predictor.cls_score.bias"] = _small(rng, k + 1, std=0.1)
    w["roi_heads.box_predictor.bbox_pred.weight"] = _small(rng, 4 * k, fc, std=0.01)
    w["roi_heads.box_predictor.bbox_pred.bias"] = _small(rng, 4 * k, std=0.01)
    mask = WIDTHS["mask"]
    for i in range(1, 5):
        w[f"roi_heads.mask_head.mask_fcn{i}.weight"] = _conv(rng, mask, fpn if i == 1 else mask, 3)
        w[f"roi_heads.mask_head.mask_fcn{i}.bias"] = _small(rng, mask, std=0.05)
    w["roi_heads.mask_head.deconv.weight"] = _conv(rng, mask, mask, 2).transpose(1, 0, 2, 3).copy()
    w["roi_heads.mask_head.deconv.bias"] = _small(rng, mask, std=0.05)
    w["roi_heads.mask_head.predictor.weight"] = _conv(rng, k, mask, 1, gain=4.0)
    w["roi_heads.mask_head.predictor.bias"] = _small(rng, k, std=0.1)
    return w


def synthetic_image(seed: int = SEED) -> np.ndarray:
    """uint8 HxWx3 RGB: smooth blobs and stripes on noise (something for the RPN to see)."""
    rng = np.random.default_rng(seed + 1)
    h, w = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = rng.uniform(0, 60, (h, w, 3)).astype(np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(15, 70), rng.uniform(15, 90)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image[inside] = rng.uniform(80, 255, 3)
    image[:, ::40] = 255
    return np.clip(image, 0, 255).astype(np.uint8)


def _checksum(weights: dict[str, np.ndarray]) -> float:
    return float(sum(float(np.abs(v).astype(np.float64).sum()) for v in weights.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(FIXTURE_DIR))
    args = parser.parse_args()

    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    base = os.environ.get("DETECTRON2_CONFIGS", "")
    cfg.merge_from_file(os.path.join(base, "COCO-InstanceSegmentation",
                                     "mask_rcnn_R_50_FPN_3x.yaml"))
    for key, value in fixture_config().items():
        cfg.merge_from_list([key, value])
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg).eval()
    weights = detectron2_weights()
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("pixel_" in k for k in missing), (missing, unexpected)

    rgb = synthetic_image()
    bgr = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1).float()
    inputs = [{"image": bgr, "height": rgb.shape[0], "width": rgb.shape[1]}]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        raw, _ = model.roi_heads(images, features, proposals, None)
        pasted = model.inference(inputs, do_postprocess=True)[0]["instances"]
    det = raw[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "outputs.npz",
        proposals=proposals[0].proposal_boxes.tensor.numpy(),
        proposal_logits=proposals[0].objectness_logits.numpy(),
        boxes=det.pred_boxes.tensor.numpy(), scores=det.scores.numpy(),
        classes=det.pred_classes.numpy(), mask_probs=det.pred_masks[:, 0].numpy(),
        pasted_masks=np.packbits(pasted.pred_masks.numpy(), axis=-1),
        pasted_boxes=pasted.pred_boxes.tensor.numpy(),
    )
    import detectron2

    meta = {"seed": SEED, "weights_checksum": _checksum(weights), "image_size": IMAGE_SIZE,
            "detectron2_version": getattr(detectron2, "__version__", "?"),
            "detectron2_source": os.environ.get("DETECTRON2_SOURCE", ""),
            "torch_version": torch.__version__, "detections": len(det),
            "config": fixture_config()}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out}: {len(proposals[0])} proposals, {len(det)} detections")


if __name__ == "__main__":
    main()
