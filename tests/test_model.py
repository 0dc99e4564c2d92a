"""The model: shapes, relative attention against a naive reference, gradients, context, sizes, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from specbert.configs import ConfigError, load_config
from specbert.model import build_discriminator, build_model, describe
from specbert.model.attention import Attention, TimeConv, skew
from specbert.model.frame_conv import FrameConv
from specbert.model.unet import FrameTransformer, blend_upsample, fold_bins, unfold_bins

STATED_SIZES = {"tiny": 1.8e6, "base": 50e6, "large": 200e6, "flat": 50e6}  # as the presets' comments say


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_config("tiny", overrides))


def spectrogram(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """Random magnitudes in [0, 1], ``[B, 2, 1024, T]``."""
    return torch.rand(batch, 2, 1024, frames, generator=torch.Generator().manual_seed(seed))


# --- relative attention -------------------------------------------------------------------------------


def naive_attention(attn: Attention, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
    """O(L^2 d) reference: an explicit table E[j - i] for every pair, softmax((q.k + q.E) / sqrt(Dh)) v."""
    batch, length, dim = x.shape
    q = attn.q_conv(attn.q(x))
    k, v = attn.kv_conv(attn.kv(x if memory is None else memory)).chunk(2, dim=-1)
    q, k, v = (t.reshape(batch, length, attn.heads, -1).transpose(1, 2) for t in (q, k, v))
    m = attn.position.max_distance
    frames = torch.arange(length)
    distance = (frames[None, :] - frames[:, None]).clamp(1 - m, m - 1)  # [i, j] -> j - i
    table = attn.position.embedding[:, distance + m - 1]  # [H, L, L, Dh]
    scores = (q @ k.transpose(-1, -2) + torch.einsum("bhid,hijd->bhij", q, table)) / q.shape[-1] ** 0.5
    y = scores.softmax(dim=-1) @ v
    return attn.out(y.transpose(1, 2).reshape(batch, length, dim))


def test_skew_matches_gather():
    length = 7
    rel = torch.randn(3, length, 2 * length - 1)
    frames = torch.arange(length)
    expected = rel[:, frames[:, None], frames[None, :] - frames[:, None] + length - 1]
    assert torch.equal(skew(rel), expected)


@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("length, max_distance", [(12, 16), (21, 8)])  # 8: distances beyond 7 are clipped
@pytest.mark.parametrize("cross", [False, True])
def test_relative_attention_equals_naive_reference(sdpa, length, max_distance, cross):
    torch.manual_seed(0)
    attn = Attention(32, 4, 0.0, "relative", max_distance, sdpa)
    with torch.no_grad():
        attn.position.embedding.normal_(0.0, 0.5)  # make the relative term matter
    x = torch.randn(2, length, 32, requires_grad=True)
    memory = torch.randn(2, length, 32) if cross else None
    ours, reference = attn(x, memory), naive_attention(attn, x, memory)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(y.square().sum(), (x, attn.position.embedding)) for y in (ours, reference)]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("position", ["relative", "rope"])
def test_sdpa_and_plain_paths_agree_in_the_model(position):
    x = spectrogram(2, 19)
    fast = tiny(f"model.position={position}").eval()
    plain = tiny(f"model.position={position}", "model.sdpa=false").eval()
    plain.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for a, b in zip(fast(x), plain(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_q_k_and_v_have_their_own_depthwise_kernels():
    torch.manual_seed(0)
    attn = Attention(32, 4, 0.0, "relative", 16, True)
    assert attn.q_conv.conv.weight.shape == (32, 1, 3) and attn.kv_conv.conv.weight.shape == (64, 1, 3)
    x = torch.randn(1, 10, 32)
    before = attn(x)
    for conv, channels in [
        (attn.q_conv, slice(0, 32)),
        (attn.kv_conv, slice(0, 32)),
        (attn.kv_conv, slice(32, 64)),
    ]:
        saved = conv.conv.weight.detach().clone()
        with torch.no_grad():
            conv.conv.weight[channels] += 0.5
        assert not torch.allclose(attn(x), before), f"kernel {channels} of {conv} is unused"
        with torch.no_grad():
            conv.conv.weight.copy_(saved)


@pytest.mark.parametrize("groups", ["depthwise", "dense"])
@pytest.mark.parametrize("kernel_size", [3, 9])
@pytest.mark.parametrize("length", [2, 13])  # 2: shorter than the kernel, every tap at an edge
def test_time_conv_equals_conv1d(groups, kernel_size, length):
    """TimeConv computes in [B, L, C] with its own maths; values and gradients are nn.Conv1d's."""
    torch.manual_seed(0)
    conv = TimeConv(16, 16 if groups == "depthwise" else 8, kernel_size, 16 if groups == "depthwise" else 1)
    x = torch.randn(2, length, 16, requires_grad=True)
    ours, reference = conv(x), conv.conv(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    inputs = (x, conv.conv.weight, conv.conv.bias)
    grads = [torch.autograd.grad(y, inputs, grad) for y in (ours, reference)]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels", [(2, 3), (9, 1)])
@pytest.mark.parametrize("kernel_size, stride", [(1, 1), (3, 1), (3, 2), (5, 2), (3, 3)])
@pytest.mark.parametrize("bins", [1, 12, 13])
@pytest.mark.parametrize("bias", [False, True])
def test_frame_conv_equals_conv2d(channels, kernel_size, stride, bins, bias):
    """A narrow FrameConv computes on CPU with its own maths; values and gradients are nn.Conv2d's."""
    torch.manual_seed(0)
    conv = FrameConv(*channels, kernel_size, stride, bias=bias)
    x = torch.randn(2, channels[0], bins, 5, requires_grad=True)
    ours, reference = conv(x), nn.Conv2d.forward(conv, x)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    inputs = [x, *conv.parameters()]
    grads = [torch.autograd.grad(y, inputs, grad) for y in (ours, reference)]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bins", [1, 2, 7])
def test_blend_upsample_equals_interpolate(layout, bins):
    """The compiled models' upsampling: bilinear interpolate's values and gradients, in the input's layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, bins, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ours = blend_upsample(x)
    reference = F.interpolate(x, scale_factor=(2, 1), mode="bilinear")
    assert ours.is_contiguous(memory_format=layout)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=0)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(reference, x, grad)[0], atol=1e-12, rtol=0
    )


# --- the whole model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [16, 21])
def test_tiny_shapes_odd_and_even_frames(frames):
    mask, next_logit = tiny()(spectrogram(2, frames))
    assert mask.shape == (2, 2, 1024, frames) and mask.dtype == torch.float32
    assert next_logit.shape == (2,) and next_logit.dtype == torch.float32


def test_bin_patch_folds_neighbouring_bins_into_channels_and_back():
    """``model.bin_patch``: bin ``p f + j`` of channel c is row f of channel ``c p + j`` (lossless), the
    levels work at half the bins, and the mask gives each bin its own value."""
    x = spectrogram(1, 9)
    folded = fold_bins(x, 2)
    assert torch.equal(folded[:, 1, 3], x[:, 0, 7]) and torch.equal(folded[:, 2, 3], x[:, 1, 6])
    assert torch.equal(unfold_bins(fold_bins(x, 4), 4), x)
    model = tiny("model.bin_patch=2")
    widths = [level.blocks[0].block.ffn.up.in_features for level in model.encoders if level.blocks]
    assert widths == [128, 64, 32]
    mask, _ = model(x)
    assert mask.shape == x.shape
    assert not torch.allclose(mask[..., 0::2, :], mask[..., 1::2, :])  # the two bins of a row differ


def test_inference_runs_channels_last_maps():
    """CPU training runs the maps NCHW (narrow convs by FrameConv's matrix products); inference, as CUDA
    always, channels-last through nn.Conv2d: every block keeps the layout, the values agree, and the mask
    comes back in the plain layout."""
    model = tiny().eval()
    layouts = []
    for block in model.modules():
        if isinstance(block, FrameTransformer):
            block.register_forward_hook(
                lambda _, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    x = spectrogram(2, 21)
    reference, reference_logit = model(x)  # gradients on: the training layout
    assert layouts and not any(layouts)
    layouts.clear()
    with torch.no_grad():
        mask, next_logit = model(x)
    assert layouts and all(layouts)
    assert mask.is_contiguous()
    # different kernels sum in different orders: float32 rounding only
    torch.testing.assert_close(mask, reference.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(next_logit, reference_logit.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["base", "large", "flat"])
def test_preset_shapes_without_computing(name):
    """Shapes of the big presets at an odd T (tiny covers both parities), traced with fake tensors."""
    with FakeTensorMode():
        mask, next_logit = build_model(load_config(name))(torch.rand(1, 2, 1024, 9))
    assert mask.shape == (1, 2, 1024, 9) and mask.dtype == torch.float32
    assert next_logit.shape == (1,)


@pytest.mark.parametrize("name", sorted(STATED_SIZES))
def test_parameter_counts_within_ten_percent_of_stated(name):
    with torch.device("meta"):
        model = build_model(load_config(name))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - STATED_SIZES[name]) <= 0.1 * STATED_SIZES[name], f"{name}: {count:,}"
    assert f"{count:,}" in describe(model)


def test_every_parameter_receives_a_gradient():
    model = tiny().train()
    mask, next_logit = model(spectrogram(2, 12))
    (mask.mean() + next_logit.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_mask_is_valid_for_extreme_inputs():
    model = tiny().eval()
    with torch.no_grad():
        for x in (torch.zeros(1, 2, 1024, 9), torch.ones(1, 2, 1024, 9), spectrogram(1, 9)):
            mask, next_logit = model(x)
            assert torch.isfinite(mask).all() and torch.isfinite(next_logit).all()
            assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_bidirectional_long_range():
    """Frame 0's output depends on the last frame and vice versa, beyond any conv's reach (BN in eval)."""
    model = tiny().eval()
    x = spectrogram(1, 64).requires_grad_()
    mask, _ = model(x)
    (from_first,) = torch.autograd.grad(mask[..., 0].sum(), x, retain_graph=True)
    (from_last,) = torch.autograd.grad(mask[..., -1].sum(), x)
    assert from_first[..., -1].abs().sum() > 0, "frame 0 ignores later frames"
    assert from_last[..., 0].abs().sum() > 0, "the last frame ignores earlier frames"


def test_masked_frames_use_their_context():
    """Whited-out frames (all 1.0, as pretraining masks them) get outputs that depend on the other frames."""
    model = tiny().eval()
    x = spectrogram(1, 32)
    x[..., 12:20] = 1.0
    x.requires_grad_()
    mask, _ = model(x)
    (grad,) = torch.autograd.grad(mask[..., 12:20].sum(), x)
    assert grad[..., :12].abs().sum() > 0 and grad[..., 20:].abs().sum() > 0


def test_bf16_autocast_training_step():
    model = tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask, next_logit = model(spectrogram(2, 12))
    (mask.mean() + next_logit.mean()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_autocast_forward():
    model = tiny().eval()
    x = spectrogram(1, 24)
    with torch.no_grad():
        reference, _ = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask, next_logit = model(x)
    assert mask.dtype == torch.float32 and next_logit.dtype == torch.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert (mask - reference).abs().max() < 0.05


def test_torch_compile_traces_the_whole_model():
    """One graph (no graph break) for forward and backward, with eager's values ("aot_eager": dynamo
    and AOT autograd without code generation, which takes minutes on CPU)."""
    model = tiny().train()
    x = spectrogram(1, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    grads = []
    for module in (model, compiled):
        mask, next_logit = module(x)
        (mask.mean() + next_logit.mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    torch.testing.assert_close(mask, model(x)[0])
    for eager, traced in zip(*grads, strict=True):
        torch.testing.assert_close(traced, eager)


def test_longer_than_max_distance_works():
    model = tiny().eval()  # tiny clips relative distances at 128 frames
    with torch.no_grad():
        mask, _ = model(spectrogram(1, 160))
    assert mask.shape[-1] == 160 and torch.isfinite(mask).all()


def test_discriminator_gives_per_frame_patch_logits():
    disc = build_discriminator(load_config("tiny"))
    logits = disc(spectrogram(2, 11))
    assert logits.shape == (2, 1024 // 2**4, 11) and logits.dtype == torch.float32
    logits.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="decoder_blocks"):
        load_config("tiny", ["model.decoder_blocks=[1]"])
    with pytest.raises(ConfigError, match="kernel_size"):
        load_config("tiny", ["model.kernel_size=4"])
    with pytest.raises(ConfigError, match="bin_patch"):
        load_config("tiny", ["model.bin_patch=3"])
    with pytest.raises(ValueError, match="num_heads"):
        tiny("model.num_heads=3")


def test_tiny_overfits_one_batch():
    """Real training steps on one BERT-style batch: the loss (L1 + next-segment BCE) falls 10x.

    Two of 16 frames are whited out; their exact bins cannot be memorised by tiny (no blocks at the top
    levels), which bounds how far the loss can fall.
    """
    model = tiny().train()
    target = spectrogram(1, 16)
    x = target.clone()
    x[..., 6:8] = 1.0
    is_next = torch.ones(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        mask, next_logit = model(x)
        loss = (x * mask - target).abs().mean() + F.binary_cross_entropy_with_logits(next_logit, is_next)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10, f"loss {losses[0]:.4f} -> {min(losses[-10:]):.4f}"
