"""conv2d_relu (oneDNN post-op fusion) against F.conv2d + ReLU (+ residual)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from maskrcnn.ops.conv_relu import _fused_dtype, conv2d_relu

CONVS = [  # in, out, kernel, stride, padding, dilation, groups
    (16, 32, 3, 1, 1, 1, 1),
    (16, 32, 1, 2, 0, 1, 1),
    (32, 32, 3, 2, 1, 1, 8),
    (8, 16, 7, 2, 3, 1, 1),
    (16, 16, 3, 1, 2, 2, 1),
]


def conv_inputs(spec, channels_last, seed=0):
    cin, cout, k, stride, padding, dilation, groups = spec
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cin, 19, 23, generator=gen)
    weight = torch.randn(cout, cin // groups, k, k, generator=gen) * 0.2
    bias = torch.randn(cout, generator=gen)
    if channels_last:
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    args = (weight, bias, (stride, stride), (padding, padding), (dilation, dilation), groups)
    return x, args


def reference(x, args, residual=None):
    out = F.conv2d(x, *args)
    return F.relu(out if residual is None else out + residual)


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_equals_conv_then_relu(spec, channels_last):
    x, args = conv_inputs(spec, channels_last)
    with torch.no_grad():
        assert _fused_dtype(x, args[0]) == torch.float32  # the fused call does run
        expected = reference(x, args)
        residual = torch.randn_like(expected)
        assert_close(conv2d_relu(x, *args), expected, rtol=1e-5, atol=1e-5)
        assert_close(conv2d_relu(x, *args, residual=residual),
                     reference(x, args, residual), rtol=1e-5, atol=1e-5)
        expected_sum = reference(x, args, residual)
        if channels_last:  # the output's layout, as the model's maps are
            residual = residual.contiguous(memory_format=torch.channels_last)
        summed = conv2d_relu(x, *args, residual=residual, sum_into_residual=True)
        assert summed.data_ptr() == residual.data_ptr()  # written into the residual's map
        assert_close(summed, expected_sum, rtol=1e-5, atol=1e-5)


def test_bfloat16_autocast_runs_fused_in_bfloat16():
    x, args = conv_inputs(CONVS[0], channels_last=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _fused_dtype(x, args[0]) == torch.bfloat16
        expected = reference(x, args)
        residual = torch.randn_like(expected)
        got = conv2d_relu(x, *args)
        got_residual = conv2d_relu(x, *args, residual=residual)
        expected_residual = reference(x, args, residual)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
    assert_close(got_residual.float(), expected_residual.float(), rtol=2e-2, atol=5e-2)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_autograd_and_tracing_take_the_separate_ops():
    x, args = conv_inputs(CONVS[0], channels_last=True)
    weight = args[0].clone().requires_grad_()
    out = conv2d_relu(x, weight, *args[1:])
    assert out.grad_fn is not None  # differentiable: the unfused ops ran
    out.sum().backward()
    assert weight.grad is not None
    with torch.no_grad():
        traced = torch.jit.trace(lambda x: conv2d_relu(x, *args), (x,))
    assert "mkldnn" not in str(traced.graph)
    assert_close(traced(x), reference(x, args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [18, 50])
def test_fused_body_keeps_its_stage_outputs(depth):
    """A folded, fused ResNet body (blocks writing residual sums in place, blocks after the
    first of a stage overwriting their input) gives the stage outputs of the plain one."""
    import copy

    from maskrcnn.config import BackboneConfig
    from maskrcnn.modeling.backbone import build_backbone, fold_frozen_batchnorm
    from maskrcnn.modeling.fusion import fuse_conv_relu

    torch.manual_seed(0)
    body = build_backbone(BackboneConfig(depth=depth, norm="frozen_bn")).body.eval()
    fused = fuse_conv_relu(fold_frozen_batchnorm(copy.deepcopy(body)))
    assert any(getattr(m, "input_is_temporary", False) for m in fused.modules())
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = body(x)
        got = fused(x)
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        assert_close(g, e, rtol=1e-4, atol=1e-4)
