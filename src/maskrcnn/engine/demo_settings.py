"""The demo's defaults, importable without torch (the command line's help shows them)."""

DEMO_ITERS = 1700  # about 8 minutes on 2 idle cores with bfloat16 (11.5 in float32)
