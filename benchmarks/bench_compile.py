"""Does torch.compile pay on CPU? The R50-FPN at 800x1216 (perturbed seeded weights of
bench_model.py), optimize_for_inference, with its backbone + FPN (~60 % of the time, the
part without data-dependent shapes) compiled by inductor with freezing, against the same
model eager; whole predict() timed, runs alternating, medians. Also prints the compile time
and whether the detections still match.

    .venv/bin/python benchmarks/bench_compile.py [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_deploy import matched

from maskrcnn.testing import (
    our_copy,
    perturbed_torchvision_maskrcnn,
    smooth_random_images,
    torchvision_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights as constants: folds and pre-packs them
    images = smooth_random_images([(800, 1216)])
    tv_model = perturbed_torchvision_maskrcnn(images)
    eager = our_copy(tv_model, torchvision_config()).optimize_for_inference()
    compiled = our_copy(tv_model, torchvision_config()).optimize_for_inference()
    compiled.backbone = torch.compile(compiled.backbone, dynamic=False)
    with torch.no_grad():
        start = time.perf_counter()
        compiled.predict(images)  # the first call compiles
        print(f"compile + first call: {time.perf_counter() - start:.0f} s", flush=True)
        eager.predict(images)
        rows = {"optimize_for_inference, eager": eager,
                "optimize_for_inference, backbone compiled": compiled}
        times = {row: [] for row in rows}
        outputs = {}
        for _ in range(args.runs):
            for row, model in rows.items():
                start = time.perf_counter()
                outputs[row] = model.predict(images)[0]
                times[row].append(time.perf_counter() - start)
    base = statistics.median(times["optimize_for_inference, eager"])
    print(f"{args.threads} threads, {args.runs} runs, load average {os.getloadavg()[0]:.1f}")
    for row, runs in times.items():
        median = statistics.median(runs)
        share = matched(outputs[row], outputs["optimize_for_inference, eager"])
        print(f"{row:45s} {median:7.3f} {median / base:6.3f} matched {share:.0%}  "
              + ", ".join(f"{t:.2f}" for t in runs))


if __name__ == "__main__":
    main()
