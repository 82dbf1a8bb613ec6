"""The demo's defaults, importable without torch (the command line's help shows them)."""

# A fixed number of iterations, not a time budget: the same model on every machine (a slow
# machine takes longer and says so at the start). 1000 iterations reached mask AP50 0.82-0.88,
# 1200 reached 0.93 (docs/benchmarks.md).
DEMO_ITERS = 1200
