"""Fine-tuning for vocal removal: a ``train.trainer.Task`` on the stems loader's batches.

Batches: ``pipeline.stems_loader`` (``mixture``, ``accompaniment``, ``vocals`` float16 ``[B, C, F, T]``
normalised magnitudes).  The model's mask ``m`` keeps the instrumental:

    loss = L1(m * |mix|, |accompaniment|) + finetune.vocal_weight * L1((1 - m) * |mix|, |vocals|)

with the magnitudes raised to ``finetune.loss_power`` inside each L1 (``finetune.distance=rmse``: root mean
squared errors instead).

``--init`` loads a pretraining checkpoint or an exported model by tensor name (``load_init`` reports what
was loaded, new and unused).  With ``finetune.freeze_encoder_steps`` the encoder levels get no gradient for
the first steps (their BatchNorm statistics still adapt).  Validation separates whole stored segments of
the validation tracks as ``specbert separate`` does (``ChunkedMasker`` over ``loader.crop_frames`` chunks,
mixture phase) and reports the uSDR of both stems, of the mixture as the estimate (the floor) and of the
mixture times the best single gain (all a constant mask can do).

    finetune(cfg, "stems/manifest.jsonl", "runs/ft", init="runs/pre")   # -> exit code, as launch()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from specbert.configs import Config
from specbert.inference.evaluate import usdr
from specbert.inference.export import ExportError
from specbert.inference.separate import ChunkedMasker, apply_mask
from specbert.model import build_model
from specbert.model.weights import CHECKPOINT, SEPARATOR, WeightsError, read_weights
from specbert.pipeline.schema import TRAIN
from specbert.pipeline.spectral import istft, model_input
from specbert.train.checkpoint import find_checkpoint, latest_checkpoint
from specbert.train.context import db_image
from specbert.train.distributed import unwrap
from specbert.train.losses import DISTANCES, compressed, frozen_call
from specbert.train.rng import derive_seed, seeded
from specbert.train.trainer import NoValidationData, launch

Batch = dict[str, Tensor]
ENCODER = "encoders."  # parameter names of the encoder levels
SILENT_DB = -60.0  # a stem this far below the mixture is silent: no uSDR for its track
VAL_METRICS = ("usdr_instrumental", "usdr_vocals", "floor_usdr_instrumental", "floor_usdr_vocals",
               "gain_usdr_instrumental", "gain_usdr_vocals")


def finetune_config(cfg: Config) -> Config:
    """``cfg`` with the ``finetune`` schedule in the ``train`` section the Trainer reads; the pretraining
    losses (next segment, adversarial) off."""
    ft = cfg.finetune
    train = dataclasses.replace(cfg.train, steps=ft.steps, lr=ft.lr, warmup_steps=ft.warmup_steps,
                                schedule=ft.schedule, next_weight=0.0, adv_weight=0.0)
    return dataclasses.replace(cfg, train=train)


@dataclasses.dataclass
class InitReport:
    """What ``load_init`` did, by tensor name (parameters and buffers of the ``state_dict``)."""

    source: str
    loaded: list[str]
    new: list[str]  # in the model, not in the source: freshly initialised
    unused: list[str]  # in the source, not in the model
    mismatched: list[tuple[str, list[int], list[int]]]  # (name, source shape, model shape): left new
    blend: float = 1.0  # the loaded tensors' share of the starting weights (the rest: fresh ones)

    def lines(self) -> list[str]:
        def groups(names: Iterable[str]) -> str:
            counts = Counter(".".join(name.split(".")[:2]) for name in names)
            return ", ".join(f"{group} ({n})" for group, n in sorted(counts.items())) or "none"

        blended = (f", blended {self.blend:g} : {1 - self.blend:g} with fresh weights"
                   if self.blend < 1 else "")
        return [f"init from {self.source}: {len(self.loaded)} tensors loaded, {len(self.new)} new, "
                f"{len(self.unused)} unused, {len(self.mismatched)} shape mismatches{blended}",
                f"  new: {groups(self.new)}", f"  unused: {groups(self.unused)}",
                *(f"  shape mismatch: {name} {tuple(src)} in the source, {tuple(dst)} in the model"
                  for name, src, dst in self.mismatched)]


def load_init(model: nn.Module, source: str | Path, fresh: Iterable[str] = (),
              blend: float = 1.0) -> InitReport:
    """Load the tensors of ``source`` whose names and shapes match ``model``'s (in place).

    ``source``: an exported model file, a checkpoint's ``step_*`` folder, or a run folder (its latest
    checkpoint).  Shape mismatches are left as initialised and reported; so are the tensors of the modules
    named in ``fresh`` (e.g. ``mask_head``: a new head for the new task), reported as new.  With ``blend``
    below 1 each loaded floating-point tensor becomes ``blend * source + (1 - blend) * model's own``
    (``finetune.init_blend``: shrink the warm start towards a fresh initialisation).
    """
    source = Path(source)
    file = source if source.is_file() else find_checkpoint(source) / "model.safetensors"
    try:
        tensors, _ = read_weights(file, (SEPARATOR, CHECKPOINT))
    except WeightsError as err:
        raise ExportError(str(err)) from None
    state = model.state_dict()
    prefixes = tuple(f"{name}." for name in fresh)
    tensors = {n: t for n, t in tensors.items() if not (n.startswith(prefixes) and n in state)}
    matched = [n for n in state if n in tensors]
    loaded = [n for n in matched if tensors[n].shape == state[n].shape]
    mismatched = [(n, list(tensors[n].shape), list(state[n].shape)) for n in matched if n not in loaded]
    start = {n: blend * tensors[n].to(state[n].dtype) + (1 - blend) * state[n]
             if blend != 1.0 and state[n].is_floating_point() else tensors[n] for n in loaded}
    model.load_state_dict(start, strict=False)
    return InitReport(str(file), loaded, [n for n in state if n not in tensors],
                      [n for n in tensors if n not in state], mismatched, blend)


class FinetuneTask:
    """``train.trainer.Task`` for vocal removal on the stems shards of ``manifest``.  ``init`` as
    ``load_init``'s ``source``, applied unless ``run_dir`` already holds a checkpoint (a resumed run); its
    report is logged and written to ``run_dir/init.json``."""

    def __init__(self, cfg: Config, manifest: str | Path, init: str | Path | None = None,
                 run_dir: str | Path | None = None, log: Callable[[str], None] = print):
        self.cfg, self.ft, self.manifest, self.init, self.log = cfg, cfg.finetune, manifest, init, log
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.frozen = False
        self.init_report: InitReport | None = None
        self._skipped: Counter = Counter()  # loader skips of the finished epochs
        self._loader = None

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        from specbert.pipeline.stems_loader import build_stems_loader

        self._skipped.update(self.stats())
        tc = self.cfg.train
        self._loader = build_stems_loader(self.manifest, self.cfg, TRAIN, tc.batch_size, tc.num_workers,
                                          derive_seed(tc.seed, 0, epoch))
        return self._loader

    def val_batches(self) -> Iterable[Batch]:
        from specbert.pipeline.loader import EmptySplit
        from specbert.pipeline.stems_loader import build_segments_loader

        tc = self.cfg.train
        try:
            return build_segments_loader(self.manifest, self.cfg, self.ft.val_split, min(tc.num_workers, 1),
                                         derive_seed(tc.seed, 1))
        except EmptySplit as err:
            raise NoValidationData(str(err)) from None

    def stats(self) -> dict[str, float]:
        return dict(self._skipped + Counter(self._loader.stats() if self._loader is not None else {}))

    def build_models(self) -> dict[str, nn.Module]:
        resumed = self.run_dir is not None and latest_checkpoint(self.run_dir / "checkpoints") is not None
        warm = self.init is not None and not resumed
        # A warm start draws its fresh weights (the new heads, the fresh half of init_blend) from a stream
        # of its own: with the trainer's seed they would be the very weights a pretraining of the same
        # train.seed started from, and the blend would only undo half of what pretraining learned.
        with seeded(derive_seed(self.cfg.train.seed, 3)) if warm else contextlib.nullcontext():
            model = build_model(self.cfg)
        model.next_head.requires_grad_(False)  # no loss reaches it
        if self.ft.freeze_encoder_steps and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ValueError("finetune.freeze_encoder_steps needs a single process (DDP needs every "
                             "parameter's gradient)")
        if warm:
            self.init_report = load_init(model, self.init, self.ft.fresh, self.ft.init_blend)
            if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
                for line in self.init_report.lines():
                    self.log(line)
                if self.run_dir is not None:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    report = dataclasses.asdict(self.init_report)
                    (self.run_dir / "init.json").write_text(json.dumps(report, indent=1))
        return {"model": model}

    def optimizer_settings(self, name: str) -> dict:
        tc = self.cfg.train
        return {"lr": self.ft.lr, "betas": tc.betas, "weight_decay": tc.weight_decay}

    def begin_step(self, step: int) -> None:
        self.frozen = step < self.ft.freeze_encoder_steps

    def count(self, batch: Batch) -> tuple[int, int]:
        b, _, _, t = batch["mixture"].shape
        return b, b * t

    def losses(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, Tensor]:
        x = batch["mixture"].float()
        mask = self._mask(models["model"], x)
        name, distance, power = self.ft.distance, DISTANCES[self.ft.distance], self.ft.loss_power

        def error(pred: Tensor, target: Tensor) -> Tensor:
            return distance(compressed(pred, power), compressed(target, power))

        out = {f"{name}_instrumental": error(mask * x, batch["accompaniment"])}
        loss = out[f"{name}_instrumental"]
        if self.ft.vocal_weight > 0:
            out[f"{name}_vocals"] = error((1 - mask) * x, batch["vocals"])
            loss = loss + self.ft.vocal_weight * out[f"{name}_vocals"]
        out["loss"] = loss
        return out

    def _mask(self, model: nn.Module, x: Tensor) -> Tensor:
        """The model's mask; while frozen, with the encoder's parameters detached (no gradient, so AdamW
        leaves them exactly as they are)."""
        if not self.frozen:
            return model(x)[0]
        return frozen_call(unwrap(model), x, prefix=ENCODER)[0]

    def validate(self, models: dict[str, nn.Module], batches: Iterable[Batch]) -> dict[str, float]:
        """uSDR (dB) of the separated instrumental and vocals on whole validation tracks (the segments
        seen, joined per track; mean over tracks), of the mixture as the estimate (the floor), and of the
        mixture times the best single gain per track (what a constant mask reaches at best).

        Tracks where a stem is silent (below ``SILENT_DB`` of the mixture: an instrumental track) have no
        finite uSDR and are left out; ``val_tracks`` counts the tracks scored."""
        audio = self.cfg.audio
        waves: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        for batch in batches:
            spec = {name: batch[name][0].cpu().numpy() for name in ("mixture", "accompaniment", "vocals")}
            mask = self.separation_mask(models["model"], spec["mixture"], float(batch["peak"][0]))
            estimate = apply_mask(spec["mixture"], mask)
            length = (spec["mixture"].shape[-1] - 1) * audio.hop
            parts = {"instrumental": spec["accompaniment"], "vocals": spec["vocals"],
                     "mixture": spec["mixture"], "estimate_instrumental": estimate["instrumental"],
                     "estimate_vocals": estimate["vocals"]}
            for name, x in parts.items():
                waves[batch["track"][0]][name].append(istft(x, length, audio))
        scores = defaultdict(list)
        for track in waves.values():
            w = {name: np.concatenate(parts, axis=1) for name, parts in track.items()}
            if any(silent(w[stem], w["mixture"]) for stem in ("instrumental", "vocals")):
                continue
            for stem in ("instrumental", "vocals"):
                reference, mixture = w[stem], w["mixture"]
                scores[f"usdr_{stem}"].append(usdr(reference, w[f"estimate_{stem}"]))
                scores[f"floor_usdr_{stem}"].append(usdr(reference, mixture))
                scores[f"gain_usdr_{stem}"].append(usdr(reference, best_gain(reference, mixture) * mixture))
        metrics = {name: float(np.mean(scores[name])) if scores else float("nan") for name in VAL_METRICS}
        return {**metrics, "val_tracks": float(len(scores["usdr_vocals"]))}

    def separation_mask(self, model: nn.Module, spec: np.ndarray, peak: float) -> np.ndarray:
        """The mask ``specbert separate`` computes for complex ``spec [C, bins, T]`` of a track with peak
        magnitude ``peak``: ``[C, model_bins, T]`` float32."""
        device = next(model.parameters()).device
        chunk = self.cfg.loader.crop_frames

        def predict(x: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(x).to(device))[0].float().cpu().numpy()

        masker = ChunkedMasker(predict, chunk, chunk // 4)
        head = masker.push(model_input(spec, peak))
        return np.concatenate([head, masker.finish()], axis=2)

    def preview(self, models: dict[str, nn.Module], batch: Batch) -> dict[str, np.ndarray]:
        """Left channel of one crop of the first validation segment: mixture, true and predicted
        instrumental (dB scale) and the mask."""
        frames = self.cfg.loader.crop_frames
        spec = batch["mixture"][0, :, :, :frames].cpu().numpy()
        peak = float(batch["peak"][0])
        x = torch.from_numpy(model_input(spec, peak))
        mask = torch.from_numpy(self.separation_mask(models["model"], spec, peak))
        target = torch.from_numpy(model_input(batch["accompaniment"][0, :, :, :frames].cpu().numpy(), peak))
        return {"mixture": db_image(x[0]), "instrumental": db_image(target[0]),
                "predicted instrumental": db_image((mask * x)[0]), "mask": mask[0].numpy()}


def best_gain(reference: np.ndarray, mixture: np.ndarray) -> float:
    """The gain ``g`` that minimises ``|reference - g * mixture|^2``."""
    energy = float(np.sum(np.square(mixture, dtype=np.float64)))
    return float(np.sum(reference.astype(np.float64) * mixture)) / max(energy, 1e-20)


def silent(stem: np.ndarray, mixture: np.ndarray) -> bool:
    """``stem`` is more than ``-SILENT_DB`` dB below ``mixture`` (energies)."""
    return float(np.sum(np.square(stem, dtype=np.float64))) < 10 ** (SILENT_DB / 10) * float(
        np.sum(np.square(mixture, dtype=np.float64)))


def finetune(cfg: Config, manifest: str | Path, run_dir: str | Path, init: str | Path | None = None,
             resume: bool = False, device: str | None = None, log: Callable[[str], None] = print) -> int:
    """A whole fine-tuning job (one rank under ``torchrun``); the exit code of ``train.trainer.launch``."""
    cfg = finetune_config(cfg)
    return launch(lambda c, _dev: FinetuneTask(c, manifest, init, run_dir, log), cfg, Path(run_dir),
                  resume, device)


def validation_history(run_dir: str | Path) -> list[dict]:
    """The validation records of a run's ``metrics.jsonl``, by step."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if r.get("split") == "val"]
