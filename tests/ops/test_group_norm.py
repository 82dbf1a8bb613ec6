"""The channels_last GroupNorm: gradients against float64 numerics and PyTorch's GroupNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from maskrcnn.modeling.group_norm import GroupNorm
from maskrcnn.ops.group_norm import ChannelsLastGroupNorm, group_norm

CL = torch.channels_last


def inputs(dtype, shape, seed=0, offset=2.0):
    """Channels_last x (mean `offset`, std 3) and affine parameters, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + offset
    x = x.to(dtype).contiguous(memory_format=CL).requires_grad_()
    weight = torch.randn(shape[1], generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(shape[1], generator=gen, dtype=torch.float64).requires_grad_()
    return x, weight, bias


def test_backward_matches_float64_numerical_gradients():
    x, weight, bias = inputs(torch.float64, shape=(2, 16, 3, 4))
    assert torch.autograd.gradcheck(
        lambda x, w, b: ChannelsLastGroupNorm.apply(x, w, b, 8, 1e-5), (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda x: ChannelsLastGroupNorm.apply(x, None, None, 4, 1e-5), (x,))


def test_float64_equals_pytorch_group_norm_and_stays_channels_last():
    x, weight, bias = inputs(torch.float64, shape=(3, 32, 6, 4))
    grad_out = torch.randn(x.shape, dtype=torch.float64).contiguous(memory_format=CL)
    ours = ChannelsLastGroupNorm.apply(x, weight, bias, 16, 1e-5)
    theirs = F.group_norm(x, 16, weight, bias, 1e-5)
    assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert ours.is_contiguous(memory_format=CL)
    ours_grads = torch.autograd.grad(ours, (x, weight, bias), grad_out)
    theirs_grads = torch.autograd.grad(theirs, (x, weight, bias), grad_out)
    for a, b in zip(ours_grads, theirs_grads):
        assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert ours_grads[0].is_contiguous(memory_format=CL)


@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_bfloat16_gradients_as_close_to_float64_as_pytorchs(offset):
    """bfloat16 input: our gradients' error against float64 is no larger than that of
    PyTorch's own bfloat16 GroupNorm (channels_last and NCHW), mean far from 0 included."""
    x64, weight, bias = inputs(torch.float64, shape=(2, 64, 12, 10), offset=offset)
    x16 = x64.detach().to(torch.bfloat16).contiguous(memory_format=CL)
    grad16 = torch.randn(x64.shape, dtype=torch.float64).to(torch.bfloat16)
    grad16 = grad16.contiguous(memory_format=CL)
    # the reference: float64 on the very values the bfloat16 runs see
    ref_x = x16.double().requires_grad_()
    ref = torch.autograd.grad(F.group_norm(ref_x, 32, weight, bias), (ref_x, weight, bias),
                              grad16.double())

    def errors(fn, x, grad):
        x = x.detach().requires_grad_()
        out = fn(x, 32, weight.float(), bias.float())
        got = torch.autograd.grad(out, x, grad)[0].double()
        return (got - ref[0]).abs().max().item() / ref[0].abs().max().item()

    ours = errors(group_norm, x16, grad16)
    pytorch_cl = errors(F.group_norm, x16, grad16)
    pytorch_nchw = errors(F.group_norm, x16.contiguous(), grad16.contiguous())
    assert ours <= max(pytorch_cl, pytorch_nchw) * 1.5 + 1e-3, (ours, pytorch_cl, pytorch_nchw)

    w32, b32 = weight.detach().float().requires_grad_(), bias.detach().float().requires_grad_()
    x = x16.detach().requires_grad_()
    out = group_norm(x, 32, w32, b32)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=CL)
    _, grad_w, grad_b = torch.autograd.grad(out, (x, w32, b32), grad16)
    assert_close(grad_w.double(), ref[1], rtol=1e-4, atol=1e-4)
    assert_close(grad_b.double(), ref[2], rtol=1e-4, atol=1e-4)


def test_only_reduced_precision_channels_last_takes_the_custom_backward():
    def grad_fn(x):
        return type(group_norm(x, 8, torch.ones(16), torch.zeros(16)).grad_fn).__name__

    base = torch.randn(2, 16, 4, 4)
    bf16_cl = base.bfloat16().contiguous(memory_format=CL).requires_grad_()
    assert "ChannelsLastGroupNorm" in grad_fn(bf16_cl)
    assert "ChannelsLastGroupNorm" not in grad_fn(base.bfloat16().requires_grad_())
    assert "ChannelsLastGroupNorm" not in grad_fn(
        base.contiguous(memory_format=CL).requires_grad_())  # float32: PyTorch's is as fast
    with torch.no_grad():
        assert group_norm(bf16_cl, 8, torch.ones(16), torch.zeros(16)).grad_fn is None


def test_module_keeps_torch_keys_and_results():
    torch.manual_seed(0)
    ours, theirs = GroupNorm(8, 16), torch.nn.GroupNorm(8, 16)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 16, 5, 5).bfloat16().contiguous(memory_format=CL)
    assert_close(ours.bfloat16()(x), theirs.bfloat16()(x))
