"""What a run shows a person: a progress bar, TensorBoard scalars and images, ``metrics.jsonl`` and
preview PNGs, all under the run directory and all written by rank 0 only.

    run_dir/tensorboard/     event files (scalars train/*, val/*, images preview)
    run_dir/metrics.jsonl    one JSON line per log point: {"step", "split", metric: value...}
    run_dir/previews/step_00000100.png
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from specbert.configs.audio import AudioConfig
from specbert.messages import progress_bars
from specbert.pipeline.plots import show_spectrogram


class RunLogger:
    """Rank 0's outputs; with ``enabled=False`` (other ranks) every method does nothing."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, audio: AudioConfig,
                 enabled: bool = True):
        self.enabled = enabled
        self.run_dir, self.audio = run_dir, audio
        if not enabled:
            return
        # A resumed run forgets what a killed run logged after its checkpoint.
        purge = start_step + 1 if start_step else None
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        self.jsonl = _jsonl_until(run_dir / "metrics.jsonl", start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", mininterval=1.0,
                        dynamic_ncols=True, disable=not progress_bars())

    def scalars(self, step: int, split: str, values: dict[str, float]) -> None:
        """``values`` to TensorBoard as ``split/name`` and to ``metrics.jsonl``."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.tb.add_scalar(f"{split}/{name}", value, step)
        self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.jsonl.flush()

    def progress(self, step: int, total: int, postfix: dict[str, float]) -> None:
        """Move the bar to ``step`` of ``total`` (a time budget's estimate moves; the ETA follows) and
        show ``postfix``."""
        if not self.enabled:
            return
        self.bar.total = total
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def preview(self, step: int, panels: dict[str, np.ndarray]) -> Path | None:
        """Render spectrogram panels (``[model bins, frames]``, values in [0, 1]) to a PNG and TensorBoard."""
        if not self.enabled:
            return None
        image = render_panels(panels, self.audio, title=f"step {step}")
        path = self.run_dir / "previews" / f"step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        imsave(path, image)
        self.tb.add_image("preview", image, step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()
            self.jsonl.close()


def _jsonl_until(path: Path, step: int):
    """Open ``path`` for appending after dropping its records past ``step`` (and any torn last line)."""
    if path.exists():
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        path.write_text("".join(kept))
    return open(path, "a")  # closed in RunLogger.close()


def render_panels(panels: dict[str, np.ndarray], audio: AudioConfig, title: str = "") -> np.ndarray:
    """Stack named spectrogram images ``[bins, frames]`` (values in [0, 1]) top to bottom, with time and
    frequency axes; RGB ``uint8 [H, W, 3]``."""
    fig = Figure(figsize=(10, 2.2 * len(panels) + 0.4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, panel) in zip(axes, panels.items(), strict=True):
        show_spectrogram(ax, panel, audio.sample_rate, audio.n_fft, audio.hop, vmin=0.0, vmax=1.0,
                         cmap="magma")
        ax.set_title(name, fontsize="medium")
        ax.label_outer()
    fig.suptitle(title)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class Throughput:
    """Samples and frames per second since the last ``rates()`` call (paused time excluded)."""

    def __init__(self):
        self.samples = self.frames = 0
        self.seconds = 0.0
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, samples: int, frames: int) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.samples += samples
        self.frames += frames

    def rates(self) -> dict[str, float]:
        secs = max(self.seconds, 1e-9)
        out = {"samples_per_s": self.samples / secs, "frames_per_s": self.frames / secs}
        self.samples = self.frames = 0
        self.seconds = 0.0
        return out
