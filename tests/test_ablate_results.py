"""benchmarks/ablate.py's bookkeeping: where results are kept, and how the report merges
them (no training here: the study itself is a benchmark, docs/ablations.md)."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ablate():
    spec = importlib.util.spec_from_file_location("ablate", ROOT / "benchmarks" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _result(variant: str, seed: int, mask_ap: float, seconds: float | None) -> dict:
    return {"data": "shapes", "variant": variant, "seed": seed, "iters": 500, "amp": False,
            "seconds": seconds, "segm_AP": mask_ap, "segm_AP50": 0.5, "segm_AP75": 0.2,
            "bbox_AP": 0.3}


def test_a_trial_out_keeps_its_results_apart_from_the_committed_ones(tmp_path):
    ablate = _ablate()
    assert ablate.kept_results(ablate.DEFAULT_OUT) == ablate.RESULTS
    assert ablate.RESULTS == ROOT / "docs" / "ablations" / "results"
    assert ablate.kept_results(tmp_path) == tmp_path / "results"


def test_report_merges_runs_and_kept_results_one_per_seed(tmp_path):
    ablate = _ablate()
    pool = next(v for v in ablate.STUDIES["d"].variants if v.name == "RoIPool")
    run_dir = tmp_path / "shapes" / pool.key / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(_result(pool.key, 1, 0.10, 60.0)))
    kept = tmp_path / "results" / "shapes" / pool.key
    kept.mkdir(parents=True)
    # seed 1 also kept (the same run); seed 0 reconstructed without its time
    (kept / "seed1.json").write_text(json.dumps(_result(pool.key, 1, 0.10, 60.0)))
    (kept / "seed0.json").write_text(json.dumps(_result(pool.key, 0, 0.08, None)))

    found = ablate.collect(tmp_path)
    assert [r["seed"] for r in found["shapes", pool.key]] == [0, 1]
    table = ablate.report(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| RoIPool |"))
    assert "| 2 x 500 it | 9.0 ± 1.4 |" in row  # mean and sample std of 8 and 10
    assert "1 min (1 run reconstructed without their time)" in table
    assert (tmp_path / "shapes_d.png").is_file()
