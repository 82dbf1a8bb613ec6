"""Run a test's body in a fresh Python process (multiprocessing's spawn, not fork: forking a
process with torch's threads running can deadlock the child)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def run_in_fresh_process(func: Callable[..., Any], *args: Any, timeout: float = 600) -> Any:
    """func(*args) in a spawned interpreter; its result, or its exception raised here.
    `func` must be a module-level function (it is imported by name in the child)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply_async(func, args).get(timeout)
