"""Forward+backward speed of the model against torch.nn.TransformerEncoder, and its FLOP rate.

    python -m benchmarks.bench_model                      # CPU: tiny and base vs vanilla; GPU: also large MFU
    python -m benchmarks.bench_model --configs tiny --threads 1
    python -m benchmarks.bench_model --configs --gpu-batch 8 16 --profile prof.txt   # GPU only
    python -m benchmarks.bench_model --configs --compile --gpu-runs ours              # compiled large only

FLOPs are counted analytically by ``model.flops.forward_flops`` (linear and convolution layers, the
attention matmuls; not norms and activations); a backward pass costs twice the forward.  The vanilla
reference has, for each d_model of our blocks, as many vanilla layers as we have blocks of that width.
A third row times our transformer blocks alone, without the U-Net around them (same widths and batch
as the vanilla reference; on a GPU, eager unless ``--gpu-runs`` names it): it tells the blocks' cost
from the U-Net's.

Timing: the models take turns step by step and each keeps its fastest step (a load change on a
shared machine hits both alike).  ``--clock cpu --threads 1`` times the main thread's CPU time, which
leaves out the time the process waits for a core on a busy machine (memory-bandwidth contention
remains); the default is wall time.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from torch import nn

from specbert.configs import load_config
from specbert.model import build_model
from specbert.model.blocks import EvolvedBlock
from specbert.model.flops import forward_flops

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # dense tensor-core FLOP/s


class VanillaStack(nn.Module):
    """The vanilla reference: per d_model of our blocks, a pre-norm ``nn.TransformerEncoder`` with as many
    layers as we have blocks of that width (same heads and dropout, feed-forward ``expansion * d``).

    ``x [B, T, d_max]`` -> scalar; each encoder reads the first d features of every frame.
    """

    def __init__(self, model: nn.Module, heads: int, expansion: int, dropout: float):
        super().__init__()
        widths = Counter(b.ffn.up.in_features for b in model.modules() if isinstance(b, EvolvedBlock))
        self.widths = sorted(widths.items(), reverse=True)  # [(d_model, layers)]
        self.encoders = nn.ModuleList(
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    d, heads, expansion * d, dropout, batch_first=True, norm_first=True
                ),
                layers,
                enable_nested_tensor=False,
            )
            for d, layers in self.widths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(enc(x[..., :d]).mean() for enc, (d, _) in zip(self.encoders, self.widths, strict=True))

    def flops(self, batch: int, length: int, expansion: int) -> int:
        """Forward FLOPs: projections, feed-forward, QK^T and AV."""
        tokens = batch * length
        return sum(
            layers * (2 * tokens * (4 + 2 * expansion) * d * d + 4 * batch * length * length * d)
            for d, layers in self.widths
        )


class BlockStack(nn.Module):
    """Our transformer blocks alone: each ``EvolvedBlock`` of ``model`` (the same modules) reads the first d
    features of every frame, decoder blocks the same tokens as memory.  ``x [B, T, d_max]`` -> scalar."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(b for b in model.modules() if isinstance(b, EvolvedBlock))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for block in self.blocks:
            tokens = x[..., : block.ffn.up.in_features]
            total = total + block(tokens, tokens if hasattr(block, "cross_attn") else None).mean()
        return total


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def one_step(model: nn.Module, x: torch.Tensor, bf16: bool = False, clock: str = "wall") -> float:
    """Seconds of one forward+backward of ``model(x)`` (first output averaged) by ``CLOCKS[clock]``."""
    if x.is_cuda:
        torch.cuda.synchronize()
    start = CLOCKS[clock]()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    loss = (out[0] if isinstance(out, tuple) else out).float().mean()
    loss.backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return CLOCKS[clock]() - start


def step_times(
    runs: list[tuple[nn.Module, torch.Tensor]], repeats: int, bf16: bool = False, clock: str = "wall"
) -> list[float]:
    """Fastest forward+backward step of each ``(model, x)``, after two warm-up steps.

    The models take turns step by step, so a load change on a shared machine hits all of them alike;
    the minimum is the least disturbed step.
    """
    times = [[] for _ in runs]
    for i in range(repeats + 2):
        for spent, (model, x) in zip(times, runs, strict=True):
            seconds = one_step(model, x, bf16, clock)
            if i >= 2:
                spent.append(seconds)
    return [min(spent) for spent in times]


LABELS = ("ours", "blocks", "vanilla")


def contestants(name: str, batch: int, frames: int, device: str, labels: tuple = LABELS) -> dict:
    """``label -> (module, input, FLOPs of a forward+backward step)`` for each of ``labels``: "ours"
    (config ``name``), "blocks" (its transformer blocks alone) and "vanilla" (the reference of the same
    widths)."""
    torch.manual_seed(0)
    config = load_config(name)
    model = build_model(config).to(device)
    x = torch.rand(batch, 2, 1024, frames, device=device)
    cfg = config.model
    vanilla = VanillaStack(model, cfg.num_heads, cfg.expansion, cfg.dropout).to(device)
    tokens = torch.randn(batch, frames, vanilla.widths[0][0], device=device)
    blocks = BlockStack(model)
    runs = {
        "ours": (model, x, 3 * forward_flops(model, x)),
        "blocks": (blocks, tokens, 3 * forward_flops(blocks, tokens)),
        "vanilla": (vanilla, tokens, 3 * vanilla.flops(batch, frames, cfg.expansion)),
    }
    return {label: runs[label] for label in labels}


def rates(runs: dict, repeats: int, **step_options) -> tuple[dict, dict]:
    """Fastest step's seconds and FLOP/s of each of ``contestants``, taking turns (``step_times``)."""
    times = step_times([(module, inputs) for module, inputs, _ in runs.values()], repeats, **step_options)
    seconds = dict(zip(runs, times, strict=True))
    return seconds, {label: runs[label][2] / seconds[label] for label in runs}


def ratio_line(rate: dict, target: str) -> str:
    """The FLOP-rate ratios of ours and blocks (those in ``rate``) to the vanilla reference's."""
    shown = [label for label in ("ours", "blocks") if label in rate]
    ratios = [f"{label}/vanilla {rate[label] / rate['vanilla']:.2f}" for label in shown]
    return f"  FLOP-rate ratio {'; '.join(ratios)}  ({target})"


def compare_cpu(name: str, batch: int, frames: int, repeats: int, clock: str) -> None:
    runs = contestants(name, batch, frames, "cpu")
    seconds, rate = rates(runs, repeats, clock=clock)
    per_frame = 1e3 / (batch * frames)
    notes = {"blocks": "(ours without the U-Net)", "vanilla": f"(d, layers): {runs['vanilla'][0].widths}"}
    threads = torch.get_num_threads()
    print(f"{name}: batch {batch} x {frames} frames, fwd+bwd, {threads} CPU threads, {clock} clock")
    for label, (module, _, flops) in runs.items():
        params = sum(p.numel() for p in module.parameters()) / 1e6
        line = (
            f"  {label:<8} {params:7.1f}M params  {seconds[label] * per_frame:8.3f} ms/frame  "
            f"{flops / 1e9:8.2f} GFLOP  {rate[label] / 1e9:7.2f} GFLOP/s  {notes.get(label, '')}"
        )
        print(line.rstrip())
    print(ratio_line(rate, "target >= 0.9"))


def mfu_gpu(
    name: str, batch: int, frames: int, repeats: int, compile_model: bool, profile: str | None, labels: tuple
) -> None:
    """Print the MFU in bf16 (forward+backward) of each of ``labels``: config ``name``, its transformer
    blocks alone, its vanilla reference.  Compiling takes minutes each (large: 6 minutes on an H100)."""
    torch.backends.cudnn.benchmark = True  # as the trainer does
    runs = contestants(name, batch, frames, "cuda", labels)
    if compile_model:
        runs = {label: (torch.compile(module), *rest) for label, (module, *rest) in runs.items()}
        for label, (module, x, _) in runs.items():  # the first step compiles (minutes for large)
            print(f"  {label}: compiled and ran its first step in {one_step(module, x, bf16=True):.0f} s")
    seconds, rate = rates(runs, repeats, bf16=True)
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    memory = torch.cuda.max_memory_allocated() / 2**30
    mode = "compiled" if compile_model else "eager"
    print(f"{name} on {gpu}, bf16 {mode}, batch {batch} x {frames} frames, peak memory {memory:.1f} GiB")
    for label in runs:
        mfu = f"MFU {rate[label] / peak:6.1%}" if peak else "MFU: unknown peak for this GPU"
        print(f"  {label:<8} {seconds[label] * 1e3:8.1f} ms/step {rate[label] / 1e12:7.1f} TFLOP/s  {mfu}")
    if "vanilla" in rate:
        print(ratio_line(rate, "MFU target >= 40%"))
    if profile and "ours" in runs:
        model, x, _ = runs["ours"]
        write_profile(model, x, profile)
    torch.cuda.reset_peak_memory_stats()


def write_profile(model: nn.Module, x: torch.Tensor, path: str) -> None:
    """Write the kernels of one bf16 forward+backward step, by GPU time, to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = one_step(model, x, bf16=True)
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=60)
    with open(path, "w") as f:
        f.write(f"one step: {wall * 1e3:.1f} ms wall (profiled)\n{table}\n")
    print(f"  profile of one step written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=["tiny", "base"], help="CPU comparison configs")
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpu-config", default="large")
    parser.add_argument("--gpu-frames", type=int, default=1024)
    parser.add_argument("--gpu-batch", type=int, nargs="+", default=[8], help="one GPU run per batch size")
    parser.add_argument("--compile", action="store_true", help="torch.compile the GPU models")
    parser.add_argument(
        "--gpu-runs", nargs="+", choices=LABELS,
        help="GPU: which to time (default: all eager; ours and vanilla compiled)",
    )
    parser.add_argument("--profile", metavar="FILE", help="GPU: kernel profile of one step")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="CPU comparison clock; cpu: the main thread's CPU time (with --threads 1 on a busy machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.configs:
        compare_cpu(name, args.batch, args.frames, args.repeats, args.clock)
    if torch.cuda.is_available():
        for i, batch in enumerate(args.gpu_batch):
            profile = args.profile if i == 0 else None
            labels = args.gpu_runs or (("ours", "vanilla") if args.compile else LABELS)
            mfu_gpu(args.gpu_config, batch, args.gpu_frames, args.repeats, args.compile, profile, labels)
    else:
        print("no GPU: MFU of the large config not measured")


if __name__ == "__main__":
    main()
