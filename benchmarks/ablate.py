"""The paper's Table 2 ablations at CPU scale: train every variant of a study on the same
data, schedule and iteration budget with several seeds, evaluate with pycocotools, and write
a table (mean and standard deviation over the seeds) and a bar plot beside the paper's values.

    .venv/bin/python benchmarks/ablate.py --studies b c e --data shapes --seeds 0 1 2
    .venv/bin/python benchmarks/ablate.py --studies d_fpn e --data nuclei \
        --nuclei ../shared/data/nuclei
    .venv/bin/python benchmarks/ablate.py --report          # tables + plots of what is done

Every run lives in OUT/<data>/<variant>/seed<k>/ (OUT: runs/ablations); its result is also
written to docs/ablations/results/<data>/<variant>/seed<k>.json (committed; with another
--out: OUT/results/). A run with a result in either place is done and skipped (a fresh
clone does not redo it); one with checkpoints resumes from the last one, so an interrupted
study continues where it stopped (checkpoints every 100 iterations). Runs are identified
by their settings: a variant shared by two studies (the baseline) trains once.
The budget is iterations, never minutes, so results do not depend on the machine's load.

Studies (the paper's R-50 models become ResNet-18 bodies at small images; see
docs/ablations.md for what else changed):
  b      mask loss: per-class sigmoid vs softmax across classes (FPN; the paper: C4)
  c      class-specific vs class-agnostic masks (FPN; the paper: C4)
  d      RoIPool / RoIWarp / RoIAlign, max and avg, at stride 16 (C4, as the paper)
  d_c5   RoIPool vs RoIAlign at stride 32 (C5)
  d_fpn  the same five poolers on our FPN model (not in the paper)
  e      mask head: FCN vs MLP (2 and 3 hidden fc) (FPN, as the paper)
  a      backbone: C4 vs FPN, ResNet-18 vs ResNet-34 (the paper: R-50/101, X-101)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = Path("runs/ablations")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "ablations" / "results"
METRICS = (("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"), ("bbox", "AP"))


@dataclass(frozen=True)
class Variant:
    """One model of a study: `settings` are dotted config keys over the data's base model;
    `paper` the paper's mask (AP, AP50, AP75) for it (None where the paper has none)."""

    name: str
    settings: tuple[tuple[str, object], ...] = ()
    paper: tuple[float, float, float] | None = None

    @property
    def key(self) -> str:
        """Folder name: the settings, so equal settings share a run."""
        if not self.settings:
            return "baseline"
        return "__".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(self.settings))


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    variants: tuple[Variant, ...]
    note: str = ""


C4 = (("backbone.kind", "c4"),)
C5 = (("backbone.kind", "c5"),)


def _pool(kind: tuple, pooler: str) -> tuple:
    return kind + ((("roi_heads.pooler", pooler),) if pooler != "roi_align" else ())


STUDIES = {s.name: s for s in (
    Study("b", "Table 2b: mask loss", (
        Variant("sigmoid (decoupled)", (), (30.3, 51.2, 31.5)),
        Variant("softmax (coupled)", (("roi_heads.mask_loss", "softmax"),), (24.8, 44.1, 25.1)),
    ), "FPN model here; the paper's rows are R-50-C4."),
    Study("c", "Table 2c: class-specific vs class-agnostic masks", (
        Variant("class-specific", (), (30.3, 51.2, 31.5)),
        Variant("class-agnostic", (("roi_heads.class_agnostic_mask", True),), (29.7, 0, 0)),
    ), "FPN model here; the paper gives only the agnostic AP (29.7, R-50-C4) in its text."),
    Study("d", "Table 2d: RoI features at stride 16 (C4)", (
        Variant("RoIPool", _pool(C4, "roi_pool"), (26.9, 48.8, 26.4)),
        Variant("RoIWarp max", _pool(C4, "roi_warp_max"), (27.2, 49.2, 27.1)),
        Variant("RoIWarp avg", _pool(C4, "roi_warp"), (27.1, 48.9, 27.1)),
        Variant("RoIAlign max", _pool(C4, "roi_align_max"), (30.2, 51.0, 31.8)),
        Variant("RoIAlign avg", _pool(C4, "roi_align"), (30.3, 51.2, 31.5)),
    )),
    Study("d_c5", "Table 2d: RoI features at stride 32 (C5)", (
        Variant("RoIPool", _pool(C5, "roi_pool"), (23.6, 46.5, 21.6)),
        Variant("RoIAlign", _pool(C5, "roi_align"), (30.9, 51.8, 32.1)),
    )),
    Study("d_fpn", "RoI features on the FPN model (not in the paper)", (
        Variant("RoIPool", _pool((), "roi_pool")),
        Variant("RoIWarp max", _pool((), "roi_warp_max")),
        Variant("RoIWarp avg", _pool((), "roi_warp")),
        Variant("RoIAlign max", _pool((), "roi_align_max")),
        Variant("RoIAlign avg", ()),
    )),
    Study("e", "Table 2e: mask head (FPN)", (
        Variant("MLP fc 1024-1024", (("roi_heads.mask_head", "mlp"),), (31.5, 53.7, 32.8)),
        Variant("MLP fc 1024-1024-1024", (("roi_heads.mask_head", "mlp3"),), (31.5, 54.0, 32.6)),
        Variant("FCN 4 conv", (), (33.6, 55.2, 35.3)),
    )),
    Study("a", "Table 2a: backbone", (
        Variant("R-18-C4", C4, (30.3, 51.2, 31.5)),
        Variant("R-34-C4", C4 + (("backbone.depth", 34),), (32.7, 54.2, 34.3)),
        Variant("R-18-FPN", (), (33.6, 55.2, 35.3)),
        Variant("R-34-FPN", (("backbone.depth", 34),), (35.4, 57.3, 37.5)),
    ), "ResNet-18/34 stand in for the paper's R-50/R-101 (same paper values beside them)."),
)}


@dataclass
class DataSet:
    name: str
    train_json: str
    val_json: str
    images: str
    image_size: int
    settings: dict = field(default_factory=dict)  # model settings of this data's base model


def shapes_data(root: Path, size: int) -> DataSet:
    """The synthetic shapes (4 classes), written once under root."""
    from maskrcnn.data.shapes import write_shapes_dataset

    params = {"num_train": 200, "num_val": 100, "image_size": size, "seed": 0}
    marker = root / "params.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == params):
        write_shapes_dataset(root, **params)
        marker.write_text(json.dumps(params))
    return DataSet("shapes", str(root / "train.json"), str(root / "val.json"),
                   str(root / "images"), size)  # the demo's model fits the shapes


def nuclei_data(folder: Path, size: int) -> DataSet:
    """../shared/data/nuclei (1 class, small dense objects); the data fit picks anchors."""
    for name in ("train.json", "val.json", "images"):
        if not (folder / name).exists():
            raise SystemExit(f"{folder}: no {name} (give the nuclei folder with --nuclei)")
    return DataSet("nuclei", str(folder / "train.json"), str(folder / "val.json"),
                   str(folder / "images"), size,
                   {"anchors.sizes": (12, 24, 48, 96, 192),  # the data fit's choice
                    "roi_heads.detections_per_image": 300, "roi_heads.batch_size_per_image": 256,
                    "rpn.pre_nms_top_n_train": 2000, "rpn.post_nms_top_n_train": 1000,
                    "rpn.pre_nms_top_n_test": 1000, "rpn.post_nms_top_n_test": 900})


def base_run_config(image_size: int, iters: int, amp: bool):
    """Every variant's starting point, fixed here (not taken from the demo, whose settings
    may change): the small preset at the data's image size with the demo's settings of
    2026-12-02 (anchors 16-256, few proposals and RoIs, 20 detections) and its solver (batch
    4, lr 0.04, 50 warmup iterations, cosine decay to 2 %, gradients clipped at 10)."""
    from maskrcnn.config import preset
    from maskrcnn.engine.train_config import RunConfig, TrainConfig

    cfg = preset("small")
    cfg.input.min_size_train, cfg.input.min_size_test = (image_size,), image_size
    cfg.input.max_size = 2 * image_size
    cfg.anchors.sizes = (16, 32, 64, 128, 256)
    cfg.roi_heads.detections_per_image = 20
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.post_nms_top_n_train = 600, 300
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 300, 100
    cfg.roi_heads.batch_size_per_image = 64
    train = TrainConfig(
        amp=amp, batch_size=4, num_workers=1, lr=0.04, warmup_iters=50, schedule="cosine",
        min_lr_factor=0.02, clip_grad_norm=10.0, max_iters=iters, log_period=20,
        checkpoint_period=100, checkpoint_minutes=0.0, keep_checkpoints=1, device="cpu",
        fit_to_data=False,  # the same settings for every variant and seed
    )
    return RunConfig(model=cfg, train=train)


def run_config(data: DataSet, variant: Variant, iters: int, seed: int, amp: bool):
    """base_run_config, the data's settings, then the variant's."""
    from maskrcnn.engine.train_config import apply_overrides

    run = base_run_config(data.image_size, iters, amp)
    run.train.seed = seed
    settings = {**data.settings, **dict(variant.settings)}
    if dict(variant.settings).get("backbone.kind") in ("c4", "c5"):
        # the paper's C4 training: 64 RoIs per image; one level: all anchor sizes on it
        settings["roi_heads.batch_size_per_image"] = 32
        run.train.batch_size = 2
    apply_overrides(run, [f"{k}={_yaml(v)}" for k, v in settings.items()])
    return run


def _yaml(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_variant(data: DataSet, variant: Variant, seed: int, iters: int, out: Path,
                  amp: bool) -> dict:
    """Train and evaluate one (variant, seed) unless done; returns its result.json."""
    from maskrcnn.engine.trainer import DataPaths, train

    run_dir = out / data.name / variant.key / f"seed{seed}"
    result_file = run_dir / "result.json"
    kept = kept_results(out) / data.name / variant.key / f"seed{seed}.json"
    for done in (kept, result_file):
        if done.is_file():
            return json.loads(done.read_text())
    run = run_config(data, variant, iters, seed, amp)
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    print(f"\n=== {data.name} / {variant.key} / seed {seed}"
          + (" (resuming)" if resume else ""), flush=True)
    start = time.perf_counter()
    earlier = _seconds_so_far(run_dir)
    try:
        summary = train(run, DataPaths(data.train_json, data.images, data.val_json,
                                       data.images), str(run_dir), resume=resume)
    finally:  # an interrupted run's time counts when it resumes
        if run_dir.is_dir():
            (run_dir / "seconds.txt").write_text(f"{earlier + time.perf_counter() - start:.1f}")
    metrics = summary["metrics"] or json.loads((run_dir / "eval" / "metrics.json").read_text())
    result = {"data": data.name, "variant": variant.key, "seed": seed, "iters": iters,
              "amp": amp, "seconds": round(earlier + time.perf_counter() - start, 1),
              **{f"{t}_{m}": metrics[t][m] for t, m in METRICS}}
    result_file.write_text(json.dumps(result, indent=1))
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=1) + "\n")
    return result


def kept_results(out: Path) -> Path:
    """Where results are kept: the committed RESULTS for the default OUT; OUT/results for
    any other (a trial with --out /tmp/x --iters 10 must not mark the real runs done)."""
    return RESULTS if out.resolve() == DEFAULT_OUT.resolve() else out / "results"


def _seconds_so_far(run_dir: Path) -> float:
    """Wall seconds spent on this run by earlier, interrupted sessions (RUN/seconds.txt)."""
    path = run_dir / "seconds.txt"
    return float(path.read_text()) if path.is_file() else 0.0


# ------------------------------------------------------------------ report
def collect(out: Path) -> dict[tuple[str, str], list[dict]]:
    """(data, variant key) -> results of its seeds, from OUT and the kept results."""
    by_run: dict[tuple[str, str, int], dict] = {}
    kept = sorted(kept_results(out).glob("*/*/seed*.json"))
    for path in [*sorted(out.glob("*/*/seed*/result.json")), *kept]:
        result = json.loads(path.read_text())
        by_run[result["data"], result["variant"], result["seed"]] = result
    found: dict[tuple[str, str], list[dict]] = {}
    for (data, variant, _), result in sorted(by_run.items()):
        found.setdefault((data, variant), []).append(result)
    return found


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(out: Path) -> str:
    """Markdown tables of every study with results (AP in %), plots beside them."""
    found = collect(out)
    lines = []
    for data in sorted({d for d, _ in found}):
        for study in STUDIES.values():
            rows = [(v, found.get((data, v.key), [])) for v in study.variants]
            if not any(results for v, results in rows if v.key != "baseline"):
                continue  # only the shared baseline: this study was not run
            lines += [f"### {study.title} ({data})", ""]
            if study.note:
                lines += [study.note, ""]
            lines += ["| variant | seeds | mask AP | mask AP50 | mask AP75 | box AP | paper "
                      "mask AP / AP50 / AP75 |", "|---|---|---|---|---|---|---|"]
            for variant, results in rows:
                cells = []
                for t, m in METRICS:
                    if not results:
                        cells.append("-")
                        continue
                    mean, std = _mean_std([100 * r[f"{t}_{m}"] for r in results])
                    cells.append(f"{mean:.1f} ± {std:.1f}" if len(results) > 1
                                 else f"{mean:.1f}")  # one seed: no spread to show
                paper = "/".join(f"{p:.1f}" if p else "-" for p in variant.paper or ()) or "-"
                lines.append(f"| {variant.name} | {_seeds(results)} | "
                             + " | ".join(cells) + f" | {paper} |")
            runs = [r for _, results in rows for r in results]
            minutes = sum(r["seconds"] or 0 for r in runs) / 60
            untimed = sum(r["seconds"] is None for r in runs)
            lines += ["", f"Wall time of these runs (training + evaluation): {minutes:.0f} min"
                      + (f" ({untimed} run{'s' * (untimed > 1)} reconstructed without their "
                         "time)." if untimed
                         else ".")]
            plot = out / f"{data}_{study.name}.png"
            _plot(study, rows, plot)
            lines += ["", f"![{study.title}, {data}]({plot.name})", ""]
    return "\n".join(lines)


def _seeds(results: list[dict]) -> str:
    """'3 x 500 it' (how many seeds, of how many iterations)."""
    if not results:
        return "0"
    iters = "/".join(str(i) for i in sorted({r["iters"] for r in results}))
    return f"{len(results)} x {iters} it"


def _plot(study: Study, rows: list, path: Path) -> None:
    """Mask AP per variant: ours (mean, std over seeds) and the paper's, side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = range(len(rows))
    ours = [_mean_std([100 * r["segm_AP"] for r in results]) if results else (0.0, 0.0)
            for _, results in rows]
    ax.bar([p - 0.2 for p in positions], [m for m, _ in ours], 0.4,
           yerr=[s for _, s in ours], capsize=3, label="ours (mean ± std over seeds)")
    paper = [v.paper[0] if v.paper else 0.0 for v, _ in rows]
    if any(paper):
        ax.bar([p + 0.2 for p in positions], paper, 0.4, label="paper (COCO)", alpha=0.6)
    ax.set_xticks(list(positions), [v.name for v, _ in rows], fontsize=8, rotation=10)
    ax.set_ylabel("mask AP (%)")
    ax.set_title(study.title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["b", "c", "e"],
                        choices=sorted(STUDIES), help="which studies to run (default b c e)")
    parser.add_argument("--data", choices=["shapes", "nuclei"], default="shapes")
    parser.add_argument("--nuclei", type=Path, default=Path("../shared/data/nuclei"),
                        help="folder of the nuclei set (--data nuclei)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="only the variants whose name is given (e.g. RoIPool 'RoIAlign avg')")
    parser.add_argument("--iters", type=int, help="iterations per run (default: shapes 500, "
                        "nuclei 400)")
    parser.add_argument("--size", type=int, help="image size (default: shapes 192, nuclei 384)")
    parser.add_argument("--amp", choices=["on", "off"], default="off",
                        help="bfloat16 autocast (default off: float32 gives the same runs on "
                        "every CPU; on is 1.5x faster with AVX512-BF16, 10-20x slower without)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="only write OUT/ablations.md")
    args = parser.parse_args()
    known = {v.name for name in args.studies for v in STUDIES[name].variants}
    if args.variants and set(args.variants) - known:
        parser.error(f"--variants: {sorted(set(args.variants) - known)} not in studies "
                     f"{' '.join(args.studies)} (their variants: {sorted(known)})")
    if not args.report:
        if args.data == "shapes":
            data = shapes_data(args.out / "data_shapes", args.size or 192)
        else:
            data = nuclei_data(args.nuclei, args.size or 384)
        iters = args.iters or (500 if args.data == "shapes" else 400)
        start = time.perf_counter()
        from maskrcnn.engine.trainer import TrainingInterrupted

        try:
            for seed in args.seeds:  # seed-major: every variant gets a first seed early
                for name in args.studies:
                    for variant in STUDIES[name].variants:
                        if args.variants and variant.name not in args.variants:
                            continue
                        train_variant(data, variant, seed, iters, args.out, args.amp == "on")
        except TrainingInterrupted as stop:  # the run resumes when the command is run again
            print(f"\n{stop}; run the same command again to continue", file=sys.stderr)
            return stop.exit_code
        print(f"\nstudies {' '.join(args.studies)} on {data.name}: "
              f"{(time.perf_counter() - start) / 60:.1f} min this session")
    args.out.mkdir(parents=True, exist_ok=True)
    table = report(args.out)
    (args.out / "ablations.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
