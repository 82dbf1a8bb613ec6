"""Does fitting the settings to the data pay? The small preset on small dense shapes,
trained the same iterations with the data fit (anchors, detections per image) and with
the fixed defaults (`--set fit_to_data=false`), then evaluated on the validation set.

    .venv/bin/python benchmarks/bench_data_fit.py [--iters 300] [--size 160] [--seeds 0 1]

Prints the data fit's choice and box / mask AP and AP50 of both runs per seed. Results
rest on iterations, not time, so they do not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from maskrcnn.cli import main
from maskrcnn.data.shapes import write_shapes_dataset

DENSE = {"objects": (80, 130), "shape_size": (0.05, 0.08)}


def train_and_eval(data: dict, out: Path, iters: int, size: int, seed: int, fit: bool) -> dict:
    sets = [f"input.min_size_train=[{size}]", f"input.min_size_test={size}",
            f"input.max_size={size}", f"fit_to_data={str(fit).lower()}", "eval_period=0"]
    status = main(["train", "--train-json", data["train_json"], "--train-images",
                   data["images_dir"], "--val-json", data["val_json"], "--val-images",
                   data["images_dir"], "--out", str(out), "--iters", str(iters),
                   "--seed", str(seed), "--set", *sets])
    if status:
        raise SystemExit(f"training failed ({status})")
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {t: {k: metrics[t][k] for k in ("AP", "AP50")} for t in ("bbox", "segm")}


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--size", type=int, default=160, help="image side (and input size)")
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--val", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shapes_dataset(Path(tmp) / "data", num_train=args.train, num_val=args.val,
                                    image_size=args.size, seed=7, **DENSE)
        print(f"dense shapes: {data['num_annotations']} objects in {data['num_images']} images")
        rows = []
        for seed in args.seeds:
            for fit in (True, False):
                result = train_and_eval(data, Path(tmp) / f"run_{seed}_{fit}", args.iters,
                                        args.size, seed, fit)
                rows.append((seed, "data fit" if fit else "defaults", result))
        print(f"\n{args.iters} iterations, {args.size} px")
        print("seed | settings | box AP | box AP50 | mask AP | mask AP50")
        for seed, name, r in rows:
            print(f"{seed} | {name} | {r['bbox']['AP']:.3f} | {r['bbox']['AP50']:.3f} | "
                  f"{r['segm']['AP']:.3f} | {r['segm']['AP50']:.3f}")


if __name__ == "__main__":
    main_bench()
