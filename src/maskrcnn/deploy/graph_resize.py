"""The resized image size of the eager model, floor(size * scale) with scale =
min(min_size / short side, max_size / long side) in float64, computed exactly in integer
arithmetic: OpenVINO's CPU plugin has no float64, runs int64 as int32 and divides integers
in float32 (exact below 2^24), and float32 gives another size for ~6 % of image sizes. So
products stay below 2^31, divisions on operands below 2^23, and large values are compared
by the sign of their difference.

How, for one side x of an image with scale q = fl64(S / c) (S the target size, c the side
it constrains): x * S / c = n + r / c with integers n, r. If r > 0, the rounding of q and
of the product (relative 2^-52) cannot cross an integer: the result is n. If r = 0, the
double product may fall just below n. With a = 52 - e, e = floor(log2(S / c)), the
division rounds S * 2^a / c to an integer mantissa, off by D / c, where D = c - r2 when it
rounds up (2 r2 > c) and -r2 otherwise, r2 = (S * 2^a) mod c (exact ties cannot happen:
2^a has more factors of two than c). Then x * q = n + x D / (c 2^a), which rounds below n
exactly when D < 0 and x |D| / (c 2^a) exceeds half the spacing of doubles below n:
2^(p - 53) for n in [2^p, 2^(p+1)), half that when n = 2^p (a tie rounds to n).
Valid for image sides up to MAX_SIDE (2^15 - 1) and target sizes below 2^13.
"""

from __future__ import annotations

import numpy as np

from ..config import InputConfig
from .onnx_builder import INT64, GraphBuilder, Value

_E_RANGE = np.arange(-16, 14, dtype=np.int64)  # floor(log2(S / c)) for S < 2^13, c < 2^15
_POW2 = (2 ** np.arange(31, dtype=np.int64)).astype(np.int64)


def _pow2(g: GraphBuilder, exponent: str) -> str:
    """2 ** exponent for int64 exponents in [0, 30] (a table look-up)."""
    return g.gather(_POW2, exponent)


def _positive(g: GraphBuilder, a: str, b: Value) -> str:
    """a > b for int64 values up to 2^31, by the sign of a - b."""
    return g.op("Greater", g.op("Sub", a, b), np.int64(0))


def _floor_log2_ratio(g: GraphBuilder, numerator: int, c: str) -> str:
    """floor(log2(numerator / c)) for int64 c [B] >= 1."""
    left = (numerator * 2 ** np.maximum(-_E_RANGE, 0)).astype(np.int64)  # [E]
    right = 2 ** np.maximum(_E_RANGE, 0)  # [E]
    holds = g.op("Not", _positive(g, g.op("Mul", g.unsqueeze(c, [1]), right), left))
    count = g.reduce("ReduceSum", g.cast(holds, INT64), [1])  # [B]
    return g.op("Add", count, np.int64(_E_RANGE[0] - 1))


def _times_pow2_mod(g: GraphBuilder, value: str, exponent: str, c: str) -> str:
    """value * 2^exponent mod c for 0 <= value < c < 2^15, exponent in [0, 72], in steps
    of at most 2^8 (every product below 2^23)."""
    for _ in range(9):
        part = g.min(exponent, np.int64(8))
        value = g.divmod_int(g.op("Mul", value, _pow2(g, part)), c)[1]
        exponent = g.op("Sub", exponent, part)
    return value


def _division_residue(g: GraphBuilder, numerator: int, c: str) -> tuple[str, str]:
    """(e, D) of fl64(numerator / c) for int64 c [B] (see the module doc)."""
    e = _floor_log2_ratio(g, numerator, c)
    start = g.divmod_int(g.op("Expand", np.int64(numerator), g.shape(c)), c)[1]
    r2 = _times_pow2_mod(g, start, g.op("Sub", np.int64(52), e), c)  # S 2^a mod c
    up = _positive(g, g.op("Mul", r2, np.int64(2)), c)
    return e, g.where(up, g.op("Sub", c, r2), g.op("Neg", r2))


def _floor_product_ratio(g: GraphBuilder, x: str, target: str, c: str) -> tuple[str, str]:
    """(x * target // c, x * target % c) for x < 2^15, target < 2^13, by long division
    with operands below 2^23."""
    x_quotient, x_rest = g.divmod_int(x, c)  # x = xq c + xr
    high, low = g.divmod_int(target, np.int64(128))  # target = high 128 + low
    q1, r1 = g.divmod_int(g.op("Mul", x_rest, high), c)
    q2, r2 = g.divmod_int(g.op("Add", g.op("Mul", r1, np.int64(128)),
                             g.op("Mul", x_rest, low)), c)
    n = g.op("Add", g.op("Mul", x_quotient, target),
             g.op("Add", g.op("Mul", q1, np.int64(128)), q2))
    return n, r2


def _scaled_side(g: GraphBuilder, x: str, target: str, c: str, e: str, residue: str) -> str:
    """floor(fl64(x * fl64(target / c))) for int64 [B] tensors (see the module doc)."""
    n, remainder = _floor_product_ratio(g, x, target, c)
    exact = g.op("Equal", remainder, np.int64(0))
    at_least = g.op("Not", _positive(g, _POW2, g.unsqueeze(n, [1])))  # [B, 31]: n >= 2^j
    p = g.op("Sub", g.reduce("ReduceSum", g.cast(at_least, INT64), [1]), np.int64(1))
    power_of_two = g.op("Equal", n, _pow2(g, g.max(p, np.int64(0))))
    shift = g.op("Sub", g.op("Add", e, g.where(power_of_two, np.int64(2), np.int64(1))), p)
    # x |D| 2^shift > c with both sides below 2^31: x |D| < 2^29; for shift > 0 (at most
    # 2), x |D| >= 2^16 > c already decides, so it is capped there before the shift
    deficit = g.op("Mul", x, g.op("Neg", residue))
    capped = g.op("Mul", g.min(deficit, np.int64(2**16)),
                  _pow2(g, g.min(g.max(shift, np.int64(0)), np.int64(14))))
    left = g.where(g.op("Greater", shift, np.int64(0)), capped, deficit)
    right = g.op("Mul", c, _pow2(g, g.min(g.max(g.op("Neg", shift), np.int64(0)),
                                          np.int64(15))))
    below = g.op("And", g.op("Less", residue, np.int64(0)), _positive(g, left, right))
    return g.op("Sub", n, g.cast(g.op("And", exact, below), INT64))


def resized_sizes(g: GraphBuilder, image_sizes: str, cfg: InputConfig) -> str:
    """int64 [B, 2] (h, w) of each image after the eager model's resize."""
    heights, widths = g.split_last(image_sizes, 2)
    short, long = g.min(heights, widths), g.max(heights, widths)
    # short side's scale S / short <= M / long (rounding keeps the order; min() keeps the
    # first of equals)
    short_wins = g.op("Not", _positive(g, g.op("Mul", long, np.int64(cfg.min_size_test)),
                                       g.op("Mul", short, np.int64(cfg.max_size))))
    target = g.where(short_wins, np.int64(cfg.min_size_test), np.int64(cfg.max_size))
    c = g.where(short_wins, short, long)
    e, residue = _division_residue_per_image(g, cfg, short, long, short_wins)
    sides = [_scaled_side(g, x, target, c, e, residue) for x in (heights, widths)]
    return g.stack_last(sides)


def _division_residue_per_image(g: GraphBuilder, cfg: InputConfig, short: str, long: str,
                                short_wins: str) -> tuple[str, str]:
    """(e, D) of the scale each image uses."""
    short_e, short_d = _division_residue(g, cfg.min_size_test, short)
    long_e, long_d = _division_residue(g, cfg.max_size, long)
    return g.where(short_wins, short_e, long_e), g.where(short_wins, short_d, long_d)
