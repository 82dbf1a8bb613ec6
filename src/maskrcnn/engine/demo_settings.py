"""The demo's defaults, importable without torch (the command line's help shows them)."""

# A fixed number of iterations, not a time budget: the same model on every machine (a slow
# machine takes longer and says so at the start). 1000 iterations reached mask AP50 0.88.
DEMO_ITERS = 1000
