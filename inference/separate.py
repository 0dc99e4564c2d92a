"""Separation with an exported model, streamed: memory stays flat whatever the length of the audio.

    sep = Separator("model.safetensors")                 # device="cuda:0", shifts=2, chunk_frames=..., ...
    stems = sep.separate("song.m4a")                     # {"instrumental": [C, N], "vocals": [C, N]}
    stems = sep.separate(wave, sample_rate=48000)        # an array [C, N] or [N]
    sep.separate_file("song.m4a", "out/")                # out/song_instrumental.wav, out/song_vocals.wav

How (each streaming stage, ``inference.streaming`` and ``pipeline.spectral``, is exact whatever the block
sizes):

1. A first pass reads the file in blocks (downmix to stereo, resample to 44.1 kHz, STFT) to find the
   track's largest magnitude ``peak``: the model's input is ``clip(|X| / peak, 0, 1)`` exactly as in
   pretraining (``pipeline.spectral.model_input``).  It costs little next to the model.
2. The second pass computes the STFT again block by block; ``ChunkedMasker`` runs the network on chunks of
   ``chunk_frames`` frames that overlap by ``overlap`` frames and cross-fades their masks.
3. ``instrumental = m |X| e^{j phase(X)}`` and ``vocals = (1 - m) |X| e^{j phase(X)}`` (the mask is padded
   back to the Nyquist bin, ``full_bins``), inverse STFT by overlap-add, resampled back to
   the input's rate, mono for a mono input and stereo otherwise, and written as it comes.

Files are written to a float32 temporary next to the output first; when all stems are done the
temporary is copied into the final format (WAV or FLAC with soundfile at 16 or 24 bits or float, MP3,
Ogg Vorbis, Opus or AAC through ffmpeg at a bitrate), rescaled (one gain for all stems of a file, so
that they still add up to the mixture) or clamped so that nothing clips, under a temporary name that
is renamed when complete: an output that exists is whole.

Output names come from a template (``--filename``) with ``{track}`` (the input's folder within the
folder given, and its name without extension: ``track_names``), ``{stem}``, ``{ext}`` and ``{model}``
(the model file's name without extension); the default, ``{track}_{stem}.{ext}``, never gives two
inputs the same output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from specbert.configs.audio import AudioConfig
from specbert.inference.export import load_model
from specbert.inference.streaming import BLOCK, Resampler, Source, array_source, file_source
from specbert.pipeline.audio import AUDIO_EXTS, AudioError, to_channels
from specbert.pipeline.spectral import StreamingISTFT, StreamingSTFT, full_bins, max_magnitude, model_input

STEMS = ("instrumental", "vocals")
SOUNDFILE_FORMATS = {"wav": "WAV", "flac": "FLAC"}  # written by soundfile at ``bits``
FFMPEG_ENCODERS = {"mp3": "libmp3lame", "ogg": "libvorbis", "opus": "libopus", "m4a": "aac"}  # at ``bitrate``
FORMATS = (*SOUNDFILE_FORMATS, *FFMPEG_ENCODERS)
DEFAULT_TEMPLATE = "{track}_{stem}.{ext}"
SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "float": "FLOAT"}
CLIP_MODES = ("rescale", "clamp")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


def apply_mask(spec: np.ndarray, mask: np.ndarray, wiener: int = 0) -> dict[str, np.ndarray]:
    """Mixture ``[C, bins, T]`` and mask ``[C, model_bins, T]`` -> complex stems.

    ``wiener`` 0: the mask on the mixture, the mixture's phase.  ``wiener`` N > 0: the instrumental refined
    by N iterations of multichannel Wiener filtering (``norbert``'s EM over the frames given: each stem's
    spatial covariance per bin is fitted, then the stems are re-estimated from the stereo mixture, so the
    phase is no longer the mixture's).  The vocals are always the rest: the stems add up to the mixture.
    """
    full = full_bins(mask)
    instrumental = spec * full
    if wiener and spec.shape[-1]:
        import norbert

        magnitude = np.abs(spec)
        v = np.stack([full * magnitude, (1 - full) * magnitude], axis=-1)
        v = v.transpose(2, 1, 0, 3)  # [T, F, C, 2]
        x = spec.transpose(2, 1, 0).astype(np.complex128)  # [T, F, C]; norbert scales it in place
        y = norbert.wiener(v.astype(np.float64), x, iterations=wiener, use_softmask=False)
        instrumental = y[..., 0].transpose(2, 1, 0).astype(spec.dtype)
    return {"instrumental": instrumental, "vocals": spec - instrumental}


def crossfade_weights(length: int, overlap: int) -> np.ndarray:
    """Trapezoid ``[length]``: ramps up and down over ``overlap`` frames, never zero."""
    ramp = np.minimum(np.arange(1, length + 1), np.arange(length, 0, -1)) / (overlap + 1)
    return np.minimum(ramp, 1.0).astype(np.float32)


class ChunkedMasker:
    """The mask network over overlapping chunks of frames, cross-faded; fed and read in pieces.

    ``push(x [C, F, k]) -> mask [C, F, m]`` returns the frames no later chunk can reach; ``finish()``
    the rest.  Chunks of ``chunk`` frames start every ``chunk - overlap`` frames; with ``shifts`` = N > 1,
    N grids of chunks, each shifted by 1/N of that stride from the last (N = 2 is the reference's "second
    pass shifted by half a crop", kept apart from the first grid whatever the overlap); the last chunk ends
    at the last frame.  Each chunk's mask is weighted by ``crossfade_weights``; a frame's mask is the
    weighted mean over the chunks of all grids covering it.
    ``predict([B, C, F, L]) -> [B, C, F, L]`` runs the network on up to ``batch_size`` chunks at once.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], chunk: int, overlap: int,
                 shifts: int = 1, batch_size: int = 1):
        if chunk < 1 or not 0 <= overlap < chunk or shifts < 1:
            raise ValueError(f"need chunk >= 1, 0 <= overlap < chunk and shifts >= 1, got {chunk}, {overlap} "
                             f"and {shifts}")
        self.predict, self.chunk, self.overlap, self.batch_size = predict, chunk, overlap, batch_size
        self.stride = chunk - overlap
        # the next chunk of each grid (grids that would coincide, when the stride is short, are one)
        self.starts = sorted({k * self.stride // shifts for k in range(shifts)})
        self.ends = [0] * len(self.starts)  # where each grid's chunks so far end
        self.queue: list[int] = []  # starts of chunks ready to run
        self.input: np.ndarray | None = None  # frames from self.base on
        self.sum: np.ndarray | None = None  # weighted masks, likewise
        self.weight = np.zeros(0, np.float32)  # summed weights, likewise
        self.base = 0
        self.received = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        self._append(x)
        for grid, start in enumerate(self.starts):
            while start + self.chunk <= self.received:
                self.queue.append(start)
                self.ends[grid] = start + self.chunk
                start += self.stride
            self.starts[grid] = start
        while len(self.queue) >= self.batch_size:
            self._run(self.batch_size)
        # a later chunk starts at a grid's next start, a queued start, or (the last) >= received - chunk
        return self._emit(min(self.starts + self.queue + [self.received - self.chunk]))

    def finish(self) -> np.ndarray:
        last = max(0, self.received - self.chunk)
        if min(self.ends) < self.received and last not in self.queue:
            self.queue.append(last)
        while self.queue:
            self._run(self.batch_size)
        return self._emit(self.received)

    def _append(self, x: np.ndarray) -> None:
        if self.input is None:
            self.input, self.sum = x[:, :, :0], np.zeros_like(x[:, :, :0])
        self.input = np.concatenate([self.input, x], axis=2)
        self.sum = np.concatenate([self.sum, np.zeros_like(x)], axis=2)
        self.weight = np.concatenate([self.weight, np.zeros(x.shape[2], np.float32)])
        self.received += x.shape[2]

    def _run(self, count: int) -> None:
        """Run the first ``count`` queued chunks (all ``chunk`` long, or one shorter when the track is)."""
        starts, self.queue = self.queue[:count], self.queue[count:]
        stop = min(self.chunk, self.received)
        batch = np.stack([self.input[:, :, s - self.base : s - self.base + stop] for s in starts])
        masks = self.predict(batch)
        weights = crossfade_weights(stop, self.overlap)
        for s, mask in zip(starts, masks, strict=True):
            at = s - self.base
            self.sum[:, :, at : at + stop] += mask * weights
            self.weight[at : at + stop] += weights

    def _emit(self, stop: int) -> np.ndarray:
        if self.input is None:
            return np.zeros((0, 0, 0), np.float32)
        n = max(0, stop - self.base)
        out = self.sum[:, :, :n] / self.weight[:n]
        self.input, self.sum, self.weight = self.input[:, :, n:], self.sum[:, :, n:], self.weight[n:]
        self.base += n
        return out


class Analysis:
    """A source's blocks -> the model's channels and rate -> STFT frames ``[C, bins, k]``, in pieces.

    Iterate to get the frames; ``length`` is then the number of samples at the model's rate.
    """

    def __init__(self, source: Source, audio: AudioConfig):
        self.source, self.audio, self.length = source, audio, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        channels = self.audio.channels
        resampler = Resampler(self.source.rate, self.audio.sample_rate, channels)
        stft = StreamingSTFT(self.audio, channels)
        for block in self.source.blocks():
            yield stft.push(resampler.push(to_channels(block, channels)))
        yield stft.push(resampler.finish(channels))
        yield stft.finish()
        self.length = stft.length


class Synthesis:
    """Complex frames at the model's rate -> samples ``[channels, n]`` at ``rate``, in pieces."""

    def __init__(self, audio: AudioConfig, rate: int, channels: int):
        self.istft = StreamingISTFT(audio, audio.channels)
        self.resampler = Resampler(audio.sample_rate, rate, audio.channels)
        self.channels = channels

    def push(self, spec: np.ndarray) -> np.ndarray:
        return to_channels(self.resampler.push(self.istft.push(spec)), self.channels)

    def finish(self, length: int) -> np.ndarray:
        """The rest, given the signal's ``length`` at the model's rate."""
        wave = self.resampler.push(self.istft.finish(length))
        wave = np.concatenate([wave, self.resampler.finish(wave.shape[0])], axis=1)
        return to_channels(wave, self.channels)


class Separator:
    """Vocals and instrumental from any audio, with an exported model file (see the module's docstring).

    ``device`` is any torch device ("cpu", "cuda:1", "mps") or "auto" (``pick_device``).
    ``chunk_frames`` defaults to the crop the model was trained on (``loader.crop_frames``) and
    ``overlap`` to a quarter of it; ``shifts`` passes with shifted chunks are averaged (``tta`` is
    ``shifts=2``); ``precision`` "auto" is bf16 on CUDA where supported (else fp16), fp16 on MPS and fp32
    on the CPU.  ``overrides`` is merged over the model file's config.  ``wiener``: iterations of
    the multichannel Wiener post-filter (``apply_mask``; 0: the mask alone).
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", chunk_frames: int | None = None,
                 overlap: int | None = None, tta: bool = False, batch_size: int = 1, precision: str = "auto",
                 overrides: dict | None = None, shifts: int = 1, wiener: int = 0):
        self.device = pick_device(device)
        self.model_path = Path(model_path)
        self.model, self.config = load_model(model_path, self.device, overrides)
        self.audio = self.config.audio
        self.chunk = chunk_frames or self.config.loader.crop_frames
        self.overlap = self.chunk // 4 if overlap is None else overlap
        self.shifts, self.batch_size = max(shifts, 2 if tta else 1), batch_size
        self.wiener = wiener
        self.dtype = autocast_dtype(self.device, precision)
        ChunkedMasker(self._predict, self.chunk, self.overlap, self.shifts)  # check the chunk settings now

    def separate(self, audio: str | Path | np.ndarray, sample_rate: int | None = None,
                 stems: Iterable[str] = STEMS, progress: bool = False) -> dict[str, np.ndarray]:
        """Separate a file, or an array ``[C, N]`` / ``[N]`` at ``sample_rate``: float32 stems at the input's
        rate and length, shaped like the input for mono and ``[2, N]`` otherwise."""
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise ValueError("an array needs its sample_rate")
            source, name = array_source(audio, sample_rate), "array"
        else:
            source, name = file_source(audio), Path(audio).name
        parts = {stem: [] for stem in stems}
        with self._bar(source, progress, name) as bar:
            self.stream(source, lambda stem, block: parts[stem].append(block), parts, bar)
        out = {stem: fit_length(np.concatenate(parts[stem], axis=1), source.length) for stem in parts}
        if isinstance(audio, np.ndarray) and audio.ndim == 1:
            out = {stem: wave[0] for stem, wave in out.items()}
        return out

    def separate_file(self, path: str | Path, out_dir: str | Path, stems: Iterable[str] = STEMS,
                      fmt: str = "wav", bits: str = "16", clip: str = "rescale", bitrate: int = 320,
                      filename: str = DEFAULT_TEMPLATE, progress: bool = False) -> dict[str, Path]:
        """Separate ``path`` into ``out_dir/<filename>`` (default ``<name>_<stem>.<fmt>``) at the input's
        rate; the written paths."""
        path = Path(path)
        targets = output_paths(filename, path.stem, stems, fmt, self.model_path, out_dir)
        return self.write_stems(path, targets, fmt, bits, clip, bitrate, progress)

    def separate_files(self, inputs: Iterable[str | Path], out_dir: str | Path, stems: Iterable[str] = STEMS,
                       filename: str = DEFAULT_TEMPLATE, skip_existing: bool = False, progress: bool = True,
                       fmt: str = "wav", **options) -> tuple[dict[Path, dict[str, Path]], list[Path],
                                                             dict[Path, str]]:
        """Separate files and folders (recursively; never files under ``out_dir``) into ``out_dir``,
        named by the ``filename`` template (see ``output_paths``; the default keeps the folders' layout
        and never gives two inputs one output; a template that does would is a ValueError).

        ``options`` go to ``write_stems``.  Returns the outputs by input file, the inputs skipped because
        all their outputs exist (``skip_existing``), and the errors by input file or folder: a file that
        cannot be read, and a folder without audio files, are reported and the others go on.
        """
        found, empty = find_inputs(inputs, exclude=Path(out_dir))
        plan = {path: output_paths(filename, track, stems, fmt, self.model_path, out_dir)
                for (path, _), track in zip(found, track_names(found), strict=True)}
        owners: dict[Path, Path] = {}
        for path, targets in plan.items():
            for target in targets.values():
                if owners.setdefault(target, path) != path:
                    raise ValueError(f"--filename {filename!r} gives {owners[target]} and {path} the same "
                                     f"output {target}: put {{track}} in it")
        done, skipped, failed = {}, [], dict.fromkeys(empty, "no audio files in this folder")
        for path, targets in tqdm(plan.items(), desc="files", unit="file", disable=not progress):
            if skip_existing and all(target.exists() for target in targets.values()):
                skipped.append(path)
                continue
            try:
                done[path] = self.write_stems(path, targets, fmt, progress=progress, **options)
            except AudioError as err:
                failed[path] = str(err)
        return done, skipped, failed

    def write_stems(self, path: Path, targets: dict[str, Path], fmt: str = "wav", bits: str = "16",
                    clip: str = "rescale", bitrate: int = 320, progress: bool = False) -> dict[str, Path]:
        """Separate the file ``path`` into ``targets`` (stem -> output file) in format ``fmt``."""
        if fmt not in FORMATS or bits not in SUBTYPES or clip not in CLIP_MODES:
            raise ValueError(f"bad output settings {fmt!r}, {bits!r}, {clip!r}")
        if fmt == "flac" and bits == "float":
            raise ValueError("FLAC stores integers only: use 16 or 24 bits")
        source = file_source(path)
        with contextlib.ExitStack() as stack:
            channels = output_channels(source, self.audio)
            temps = {}
            for stem, target in targets.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                temps[stem] = stack.enter_context(_Temporary(target, source.rate, channels))
            with self._bar(source, progress, path.name) as bar:
                self.stream(source, lambda stem, block: temps[stem].write(block), temps, bar)
            peak = max(temp.peak for temp in temps.values())
            gain = 1.0 / peak if clip == "rescale" and peak > 1.0 else 1.0
            for stem, temp in temps.items():
                temp.copy_to(targets[stem], source.length, gain, fmt, bits, bitrate)
        log.debug("%s -> %s", path, ", ".join(map(str, targets.values())))
        return targets

    def stream(self, source: Source, write: Callable[[str, np.ndarray], None], stems: Iterable[str],
               bar: tqdm | None = None) -> None:
        """Separate ``source``, calling ``write(stem, block [C, n])`` as blocks of output are ready.

        The blocks of each stem add up to about ``source.length`` samples (the callers cut or pad the
        last few, see ``fit_length``).
        """
        peak = max((max_magnitude(np.abs(spec)) for spec in Analysis(source, self.audio)), default=0.0)
        masker = ChunkedMasker(self._predict, self.chunk, self.overlap, self.shifts, self.batch_size)
        channels = output_channels(source, self.audio)
        synthesis = {stem: Synthesis(self.audio, source.rate, channels) for stem in stems}
        pending = []  # mixture frames waiting for their mask

        def emit(mask: np.ndarray) -> None:
            if mask.shape[-1] == 0:
                return
            frames = np.concatenate(pending, axis=2)
            pending[:] = [frames[:, :, mask.shape[2] :]]
            for stem, spec in apply_mask(frames[:, :, : mask.shape[2]], mask, self.wiener).items():
                if stem in synthesis:
                    write(stem, synthesis[stem].push(spec))
            if bar is not None:  # seconds done: the last frame's centre is just before the end
                done = min(masker.base * self.audio.hop / self.audio.sample_rate, bar.total or np.inf)
                bar.update(done - bar.n)

        analysis = Analysis(source, self.audio)
        for spec in analysis:
            pending.append(spec)
            emit(masker.push(model_input(spec, peak)))
        emit(masker.finish())
        for stem, synth in synthesis.items():
            write(stem, synth.finish(analysis.length))

    @torch.inference_mode()
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """The network on ``[B, C, model_bins, L]`` -> mask of the same shape, float32 numpy."""
        x = torch.from_numpy(batch).to(self.device)
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)
        with autocast:
            mask, _ = self.model(x)
        return mask.float().cpu().numpy()

    def _bar(self, source: Source, enabled: bool, name: str):
        if not enabled:
            return contextlib.nullcontext()
        return tqdm(total=source.seconds, desc=name, unit="s", unit_scale=True, leave=False)


def pick_device(name: str | torch.device) -> torch.device:
    """A torch device by name ("cpu", "cuda", "cuda:1", "mps", ...), or "auto": cuda, else mps, else cpu.
    ValueError with a one-line reason for a device that does not exist here."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else
                            "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {name!r}: {str(err).splitlines()[0]}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: no CUDA device here (torch {torch.__version__}, "
                             f"CUDA {torch.version.cuda or 'not built in'})")
        if (device.index or 0) >= count:
            raise ValueError(f"device {name!r}: no such device, there are {count} "
                             f"(cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS (Apple GPU) is not available here")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto", "fp32", "bf16" or "fp16") on ``device``; None: fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else None
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def output_channels(source: Source, audio: AudioConfig) -> int:
    """Mono stays mono; everything else comes out with the model's channels (stereo)."""
    return 1 if source.channels == 1 else audio.channels


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad ``[C, n]`` to ``[C, length]``."""
    return np.pad(wave[:, :length], ((0, 0), (0, max(0, length - wave.shape[1]))))


def find_inputs(paths: Iterable[str | Path], exclude: Path | None = None
                ) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Files, and folders searched recursively for audio files -> ``(file, its folder within the input)``;
    nothing under the folder ``exclude`` (the output folder: a second run never separates the first's
    outputs); and the folders in which no audio file was found."""
    found, empty = [], []
    skip = exclude.resolve() if exclude is not None else None
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTS
                           and p.is_file() and not p.name.startswith(".")
                           and (skip is None or not p.resolve().is_relative_to(skip)))
            found += [(file, file.parent.relative_to(path)) for file in files]
            if not files:
                empty.append(path)
        elif path.exists():
            found.append((path, Path()))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found, empty


def track_names(found: list[tuple[Path, Path]]) -> list[str]:
    """``{track}`` of each input ``(file, its folder within the input given)``: that folder and the file's
    name without its extension (``Album/song``). Inputs that would share one use instead their path
    relative to the folder they all lie in, extension included (``song.flac`` and ``song.wav``;
    ``a/song.flac`` and ``b/song.flac``), so no two inputs get the same ``{track}``."""
    names = [(folder / file.stem).as_posix() for file, folder in found]
    counts = Counter(names)
    clashing = [file.resolve() for (file, _), name in zip(found, names, strict=True) if counts[name] > 1]
    if not clashing:
        return names
    shared = Path(os.path.commonpath([p.parent for p in clashing]))
    return [file.resolve().relative_to(shared).as_posix() if counts[name] > 1 else name
            for (file, _), name in zip(found, names, strict=True)]


def output_paths(template: str, track: str, stems: Iterable[str], fmt: str, model_path: Path,
                 out_dir: str | Path) -> dict[str, Path]:
    """stem -> ``out_dir / template`` filled with ``{track}``, ``{stem}``, ``{ext}`` (``fmt``) and
    ``{model}`` (the model file's name without extension); ValueError naming a bad template."""
    try:
        names = {stem: template.format(track=track, stem=stem, ext=fmt, model=Path(model_path).stem)
                 for stem in stems}
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--filename {template!r}: {err!r}; it may use {{track}}, {{stem}}, {{ext}} and "
                         "{model}") from None
    if len(set(names.values())) < len(names):
        raise ValueError(f"--filename {template!r} gives every stem the same file: put {{stem}} in it")
    return {stem: Path(out_dir) / name for stem, name in names.items()}


class _Temporary:
    """A float32 temporary next to ``target`` (W64: no 4 GB limit) that keeps track of its peak."""

    def __init__(self, target: Path, rate: int, channels: int):
        self.path = target.with_name(f".{target.name}.part.w64")
        self.file = sf.SoundFile(self.path, "w", rate, channels, subtype="FLOAT", format="W64")
        self.peak = 0.0

    def __enter__(self) -> _Temporary:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)

    def write(self, block: np.ndarray) -> None:
        self.file.write(block.T)
        self.peak = max(self.peak, float(np.abs(block).max(initial=0.0)))

    def copy_to(self, target: Path, length: int, gain: float, fmt: str, bits: str, bitrate: int) -> None:
        """Write the first ``length`` samples (zero-padded), times ``gain`` and clamped to [-1, 1], as
        ``fmt`` (``bits`` for WAV/FLAC, ``bitrate`` kb/s for the lossy formats) to a temporary name next to
        ``target``, renamed to ``target`` when complete."""
        self.file.close()
        partial = target.with_name(f".{target.stem}.partial{target.suffix}")
        try:
            with sf.SoundFile(self.path) as src, _encoder(partial, src.samplerate, src.channels, fmt, bits,
                                                          bitrate) as write:
                for start in range(0, length, BLOCK):
                    block = src.read(min(BLOCK, length - start), dtype="float32", always_2d=True)
                    block = np.pad(block, ((0, min(BLOCK, length - start) - len(block)), (0, 0)))
                    write(np.clip(block * np.float32(gain), -1.0, 1.0))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _encoder(path: Path, rate: int, channels: int, fmt: str, bits: str, bitrate: int):
    """``write(block [n, channels] float32)`` into a new file ``path`` of format ``fmt``: soundfile for WAV
    and FLAC, an ffmpeg process fed raw float32 for the others (AudioError when ffmpeg fails)."""
    if fmt in SOUNDFILE_FORMATS:
        subtype, container = SUBTYPES[bits], SOUNDFILE_FORMATS[fmt]
        with sf.SoundFile(path, "w", rate, channels, subtype=subtype, format=container) as f:
            yield f.write
        return
    if shutil.which("ffmpeg") is None:
        raise AudioError(f"writing {fmt} needs ffmpeg, which is not installed")
    command = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(rate), "-ac",
               str(channels), "-i", "pipe:0", "-c:a", FFMPEG_ENCODERS[fmt], "-b:a", f"{bitrate}k", str(path)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            yield lambda block: proc.stdin.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        except BrokenPipeError:
            pass  # ffmpeg stopped: its stderr says why
        finally:
            proc.stdin.close()
            error = proc.stderr.read().decode(errors="replace").strip().splitlines()
            proc.wait()
    if proc.returncode != 0:
        raise AudioError(f"ffmpeg could not write {fmt}: {error[-1] if error else proc.returncode}")

