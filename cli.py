"""The ``specbert`` command line: one subcommand per job, thin wrappers over the packages.

Every subcommand takes ``--config NAME|FILE`` (a preset in configs/ or a YAML path), any number of
``--set section.key=value`` overrides, and ``-v``/``-q`` for more or fewer messages. Results go to
stdout; messages (through ``logging``, logger ``specbert``), warnings and progress bars to stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from specbert.configs import ConfigError, load_config, preset_names
from specbert.messages import log, progress_bars


def setup_logging(verbose: int, quiet: int) -> None:
    """specbert's messages at INFO by default, DEBUG with -v, WARNING with -q (no progress bars either),
    ERROR with -qq; other libraries' (Dask's INFO chatter) at WARNING and above only, and Python warnings
    (a loader's skips) as log records, all on stderr."""
    level = min(max(logging.INFO + 10 * (quiet - verbose), logging.DEBUG), logging.CRITICAL)
    others = logging.StreamHandler(sys.stderr)
    others.setLevel(max(level, logging.WARNING))
    logging.basicConfig(format="%(message)s", handlers=[others], force=True)
    mine = logging.StreamHandler(sys.stderr)
    mine.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [mine]
    log.propagate = False
    log.setLevel(level)
    logging.captureWarnings(True)


def config_options(command):
    """Add ``--config``, ``--set`` and ``-v``/``-q`` to a command: set up logging and pass it the loaded
    ``cfg``."""

    @click.option("-v", "--verbose", count=True, help="More messages (debug).")
    @click.option("-q", "--quiet", count=True, help="Fewer messages: warnings only, no progress bars (-qq: "
                  "errors only).")
    @click.option(
        "--config", "config_source", metavar="NAME|FILE", default=None,
        help=f"Preset name ({', '.join(preset_names())}) or a YAML file. Default: built-in defaults.",
    )
    @click.option(
        "--set", "overrides", metavar="KEY=VALUE", multiple=True,
        help="Override one setting, e.g. --set loader.mask_rate=0.3 (repeatable).",
    )
    @functools.wraps(command)
    def wrapper(*args, config_source, overrides, verbose, quiet, **kwargs):
        setup_logging(verbose, quiet)
        try:
            cfg = load_config(config_source, overrides)
        except ConfigError as err:
            raise click.BadParameter(str(err), param_hint="--config/--set") from None
        return command(*args, cfg=cfg, **kwargs)

    return wrapper


def check_device(ctx, param, value: str | None) -> str | None:
    """``--device`` of the training commands: refuse, in one line, a device this machine does not have
    (as ``separate`` does: ``inference.separate.pick_device``) instead of a failure deep inside the job."""
    if value is None:
        return value
    from specbert.inference.separate import pick_device

    try:
        pick_device(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="specbert", message="%(prog)s %(version)s")
def main():
    """specbert: turn your own music library into a vocal-removal model.

    \b
    1. ingest     a music library into STFT shards (Dask, several drives)
    2. pretrain   BERT-style on those shards (masked spans reconstructed from context)
    3. finetune   on mixture/stems pairs, then export, separate and evaluate
    """


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--artists", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--albums", "albums_per_artist", type=click.IntRange(min=1), default=2, show_default=True,
              help="Albums per artist.")
@click.option("--songs", "songs_per_album", type=click.IntRange(min=1), default=2, show_default=True,
              help="Songs per album.")
@click.option("--seconds", type=click.FloatRange(min=1.0), default=12.0, show_default=True,
              help="Length of each song.")
@click.option("--stems", "stem_tracks", type=click.IntRange(min=0), default=4, show_default=True,
              help="Tracks of the MUSDB18-HQ-layout stems set written to OUT/stems (0: none).")
@config_options
def example(out, seed, artists, albums_per_artist, songs_per_album, seconds, stem_tracks, cfg):
    """Write a small synthetic example library to OUT (no downloads).

    OUT/library holds Artist/Album/NN - Title.{flac,mp3,ogg,wav}; OUT/stems holds
    train/ and test/ tracks with mixture, vocals, drums, bass, other and accompaniment.
    """
    from specbert.pipeline.example_library import write_example_library, write_example_stems

    rate = cfg.audio.sample_rate
    files = write_example_library(out / "library", seed=seed, artists=artists,
                                  albums_per_artist=albums_per_artist, songs_per_album=songs_per_album,
                                  seconds=seconds, sample_rate=rate)
    click.echo(f"wrote {len(files)} songs ({len(files) * seconds / 60:.1f} min) under {out / 'library'}")
    if stem_tracks:
        root = write_example_stems(out / "stems", seed=seed, tracks=stem_tracks, seconds=seconds,
                                   sample_rate=rate)
        click.echo(f"wrote {stem_tracks} stem tracks under {root}")


@main.command()
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest written by `specbert ingest`.")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoints, TensorBoard logs, metrics.jsonl and preview PNGs go here.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Step budget (default: train.steps).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --run-dir (if any).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None, callback=check_device,
              help="Default: cuda when available.")
@config_options
def pretrain(manifest, run_dir, steps, resume, device, cfg):
    """Pretrain the model on the shards listed in --manifest (masked spans reconstructed from context;
    validation reports context_gain against trivial rules, see train/context.py).

    \b
    Several GPUs or nodes: torchrun --nproc_per_node N $(which specbert) pretrain ...
    Exit code 0 at the step budget; 143 (SIGTERM) or 130 (SIGINT) after a signal stopped the run
    and a checkpoint was saved: run again with --resume to continue.
    """
    from specbert.pipeline.manifest import ManifestError
    from specbert.train.checkpoint import CheckpointError
    from specbert.train.pretrain import ManifestData, PretrainTask
    from specbert.train.trainer import launch

    if steps is not None:
        cfg.train.steps = steps
    try:
        code = launch(lambda c, dev: PretrainTask(c, ManifestData(c, manifest, dev)), cfg, run_dir, resume,
                      device)
    except (CheckpointError, FileExistsError, ConfigError, ManifestError) as err:
        raise click.ClickException(str(err)) from None
    sys.exit(code)


def _finetune_summary(run_dir: Path) -> None:
    """Print a run's validation uSDR over the steps (rank 0 only)."""
    import os

    from specbert.train.finetune import validation_history

    if os.environ.get("RANK", "0") != "0":
        return
    for r in validation_history(run_dir):
        click.echo(f"step {r['step']:>6}: validation uSDR instrumental {r['usdr_instrumental']:6.2f} dB, "
                   f"vocals {r['usdr_vocals']:6.2f} dB (mixture floor {r['floor_usdr_instrumental']:.2f} / "
                   f"{r['floor_usdr_vocals']:.2f} dB, best gain {r['gain_usdr_instrumental']:.2f} / "
                   f"{r['gain_usdr_vocals']:.2f} dB)")


@main.command()
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Stems manifest written by `specbert ingest-stems`.")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoints, TensorBoard logs, metrics.jsonl, preview PNGs and init.json go here.")
@click.option("--init", "init", type=click.Path(exists=True, path_type=Path), default=None,
              help="Start from a pretraining run or checkpoint folder, or an exported model file "
                   "(default: from scratch); the start blends its weights with fresh ones "
                   "(finetune.init_blend, finetune.fresh).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Step budget (default: finetune.steps).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --run-dir (if any).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None, callback=check_device,
              help="Default: cuda when available.")
@config_options
def finetune(manifest, run_dir, init, steps, resume, device, cfg):
    """Fine-tune for vocal removal on the stems shards of --manifest: the mask times |mixture| learns
    |accompaniment| on remixed, augmented crops; validation reports uSDR against the mixture floor.

    \b
    The schedule is the finetune section (steps, lr, warmup_steps, schedule, freeze_encoder_steps);
    batch size, checkpoints and logging are the train section's.  Several GPUs:
    torchrun --nproc_per_node N $(which specbert) finetune ...   Exit codes as for pretrain.
    """
    from specbert.inference.export import ExportError
    from specbert.pipeline.manifest import ManifestError
    from specbert.train.checkpoint import CheckpointError
    from specbert.train.finetune import finetune as run

    if steps is not None:
        cfg.finetune.steps = steps
    try:
        code = run(cfg, manifest, run_dir, init, resume, device, log=log.info)
    except (CheckpointError, ExportError, FileExistsError, ConfigError, ManifestError) as err:
        raise click.ClickException(str(err)) from None
    _finetune_summary(run_dir)
    sys.exit(code)


@main.command()
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Stems manifest written by `specbert ingest-stems`.")
@click.option("--init", "init", required=True, type=click.Path(exists=True, path_type=Path),
              help="The pretraining run (or checkpoint, or exported model) the pretrained arm starts from.")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="RUN_DIR/seed_S/{pretrained,scratch} hold the fine-tunes; the report goes here.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Step budget of each arm.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-clock budget of each arm (train.minutes; the learning-rate decay runs over it); "
                   "--steps then only caps the steps (default: no cap).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run both arms for this many seeds (train.seed and up); the report gives mean and spread.")
@click.option("--test", "test", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A MUSDB18-HQ-layout stems folder: score every arm's exported model on its --split tracks "
                   "as `specbert evaluate` does.")
@click.option("--split", default="test", show_default=True, help="Subfolder of --test (if present).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None, callback=check_device,
              help="Default: cuda when available.")
@config_options
def compare(manifest, init, run_dir, steps, minutes, seeds, test, split, device, cfg):
    """Does pretraining help?  Fine-tune from --init and from scratch with the same budget, data and seed, for
    --seeds seeds, and report validation uSDR over the steps, and with --test the test-split uSDR of the
    exported models: per arm the mean and spread over seeds, and the gain (compare.json, compare.md,
    compare.png).

    Run it again to continue every arm (they resume from their checkpoints).
    """
    from specbert.configs.train import UNCAPPED_STEPS
    from specbert.inference.export import ExportError
    from specbert.pipeline.manifest import ManifestError
    from specbert.train.checkpoint import CheckpointError
    from specbert.train.compare import compare as run

    if minutes is not None:
        cfg.train.minutes = minutes
        cfg.finetune.steps = steps or UNCAPPED_STEPS
    elif steps is not None:
        cfg.finetune.steps = steps
    try:
        report, paths = run(cfg, manifest, init, run_dir, seeds, test, split, device, log=log.info)
    except (CheckpointError, ExportError, ConfigError, FileNotFoundError, ManifestError) as err:
        raise click.ClickException(str(err)) from None
    from specbert.train.compare import markdown

    click.echo(markdown(report))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


def ingest_options(command):
    """Options shared by ``ingest`` and ``ingest-stems``."""
    options = [
        click.option("--out", "outs", multiple=True, required=True,
                     type=click.Path(file_okay=False, path_type=Path),
                     help="Output folder (repeat for several drives: shards spread by free space)."),
        click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Manifest file. Default: <first --out>/manifest.jsonl."),
        click.option("--format", "fmt", type=click.Choice(["tar", "zarr"]), default=None,
                     help="Shard format (default: ingest.format, tar)."),
        click.option("--codec", default=None,
                     help="Storage codec: f16, f16r1..f16r9 (default: ingest.codec, f16r6)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="LocalCluster workers, one thread each (default: ingest.workers)."),
        click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="Use an existing Dask cluster (its workers must see the paths)."),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_ingest(run, roots, outs, manifest, fmt, codec, workers, scheduler, progress, cfg, **more):
    """Shared body of the ingest commands: print the summary, exit 1 when a file failed.  ``more``: other
    ``ingest`` settings given as options (None leaves them)."""
    from specbert.configs import ConfigError
    from specbert.pipeline.ingest import IngestError, with_options

    try:
        cfg = with_options(cfg, format=fmt, codec=codec, workers=workers, scheduler=scheduler, **more)
        summary = run(roots, outs, cfg, manifest=manifest, progress=progress and progress_bars(),
                      log=log.info)
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None
    except IngestError as err:
        raise click.ClickException(str(err)) from None
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@main.command()
@click.argument("library", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@ingest_options
@config_options
def ingest(library, outs, manifest, fmt, codec, workers, scheduler, progress, cfg):
    """Turn music libraries (folders of FLAC, MP3, OGG/Opus, WAV/AIFF, M4A...) into STFT shards.

    Runs again on the same library and outputs, it skips what is done and finishes the rest.
    Exit code 1 when any file failed or a folder could not be read (the summary and the manifest say
    which, and why); the summary also counts what was left out (non-audio and hidden files).
    """
    from specbert.pipeline.ingest import ingest_library

    _run_ingest(ingest_library, library, outs, manifest, fmt, codec, workers, scheduler, progress, cfg)


@main.command("ingest-stems")
@click.argument("dataset", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@ingest_options
@click.option("--synthetic-vocals", is_flag=True, default=None,
              help="DATASET is a library of instrumental music: each file becomes the accompaniment of a "
                   "track whose vocals are a synthetic voice (ingest.synthetic_vocals). Fine-tuned on, "
                   "it pretrains a vocal remover from music without vocals.")
@config_options
def ingest_stems(dataset, outs, manifest, fmt, codec, workers, scheduler, progress, synthetic_vocals, cfg):
    """Turn stems datasets (MUSDB18-HQ folders, MUSDB18 .stem.mp4 files, or mixtures/ + instruments/) into
    complex STFT shards.

    The stems stored are ingest.stems (default mixture, vocals, accompaniment), aligned in one sample.
    """
    from specbert.pipeline.ingest import ingest_stems as run

    _run_ingest(run, dataset, outs, manifest, fmt, codec, workers, scheduler, progress, cfg,
                synthetic_vocals=synthetic_vocals)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Render a spectrogram of one sample to this PNG file.")
@click.option("--sample", "sample_index", default=0, show_default=True, help="Which sample --png renders.")
@config_options
def inspect(paths, png, sample_index, cfg):
    """Counts, hours, splits and sizes of a manifest or of shards; --png shows a sample."""
    from specbert.pipeline.inspect import describe, render_png
    from specbert.pipeline.manifest import ManifestError

    try:
        for line in describe(paths):
            click.echo(line)
        if png is not None:
            click.echo(render_png(paths, png, sample_index))
    except (ValueError, OSError, ManifestError) as err:
        raise click.ClickException(str(err)) from None


def stored_config_overrides() -> dict:
    """``--config`` and ``--set`` as a nested dict, for commands that merge them over a model's stored config
    (``config_options`` has already checked them)."""
    from specbert.configs import merge, parse_override, read_yaml

    params = click.get_current_context().params
    data = read_yaml(params["config_source"]) if params["config_source"] else {}
    for text in params["overrides"]:
        data = merge(data, parse_override(text))
    return data


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--onnx", is_flag=True, help="Also write the mask network as OUT.onnx (needs onnx).")
@click.option("--torchscript", is_flag=True, help="Also write the mask network as OUT.torchscript.pt.")
@config_options
def export(checkpoint, out, onnx, torchscript, cfg):
    """Export CHECKPOINT (a step_* folder, or a run folder: its latest) as the model file OUT.

    OUT is one self-contained safetensors file: the weights, and a JSON header with the config, the
    STFT, the sample rate, the format version and a hash; loading it runs no pickle.  --config and --set
    are merged over the checkpoint's config.
    """
    from specbert.inference.export import ExportError, export_onnx, export_torchscript, load_model
    from specbert.train.checkpoint import export_checkpoint

    try:
        path = export_checkpoint(checkpoint, out, stored_config_overrides())
    except ExportError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {path}")
    model, config = load_model(path)
    if onnx:
        try:
            click.echo(f"wrote {export_onnx(model, config.audio, path.with_suffix('.onnx'))}")
        except ImportError as err:
            raise click.ClickException(f"--onnx needs the onnx package (pip install 'specbert[onnx]'): {err}"
                                       ) from None
    if torchscript:
        click.echo(f"wrote {export_torchscript(model, config.audio, path.with_suffix('.torchscript.pt'))}")


def separator_options(command):
    """Options of the separation itself, shared by ``separate`` and ``evaluate``."""
    options = [
        click.option("--shifts", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Average N passes whose chunks are shifted by 1/N of a step (N times the time)."),
        click.option("--tta", is_flag=True, help="Two shifted passes: --shifts 2."),
        click.option("--wiener", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Iterations of the multichannel Wiener post-filter (0: the mask alone)."),
        click.option("--chunk-frames", type=click.IntRange(min=1), default=None,
                     help="Frames per model call. Default: the crop the model was trained on."),
        click.option("--overlap", type=click.IntRange(min=0), default=None,
                     help="Frames shared by neighbouring chunks (cross-faded). Default: a quarter chunk."),
        click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("-d", "--device", default="auto", show_default=True,
                     help="Any torch device (cpu, cuda, cuda:1, mps); auto: cuda, else mps, else cpu."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="auto: bf16 (else fp16) on cuda, fp16 on mps, fp32 on cpu."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _separator(model_path, **options):
    """The ``Separator`` of the CLI options; --config/--set merged over the model's stored config."""
    from specbert.inference.export import ExportError
    from specbert.inference.separate import Separator

    try:
        return Separator(model_path, overrides=stored_config_overrides(), **options)
    except (ExportError, ValueError) as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_dir", default="separated", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (never searched for inputs).")
@click.option("--filename", default="{track}_{stem}.{ext}", show_default=True,
              help="Output path under --out: {track} (the input's folder within the folder given and its "
                   "name; inputs of the same name keep apart), {stem}, {ext}, {model}.")
@click.option("--stems", multiple=True, type=click.Choice(["instrumental", "vocals"]),
              default=("instrumental", "vocals"), show_default=True, help="Stems to write (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["wav", "flac", "mp3", "ogg", "opus", "m4a"]),
              default=None, help="Output format (default: wav); mp3, ogg, opus and m4a go through ffmpeg.")
@click.option("--mp3", is_flag=True, help="Same as --format mp3.")
@click.option("--bitrate", "--mp3-bitrate", "bitrate", type=click.IntRange(min=8), default=320,
              show_default=True, help="kb/s of mp3, ogg, opus and m4a outputs.")
@click.option("--bits", type=click.Choice(["16", "24", "float"]), default="16", show_default=True,
              help="Sample format of wav and flac outputs (float: WAV only).")
@click.option("--clip", type=click.Choice(["rescale", "clamp"]), default="rescale", show_default=True,
              help="Keep samples in [-1, 1]: rescale a file's stems by one gain, or clamp each sample.")
@click.option("--skip-existing", is_flag=True,
              help="Skip inputs whose outputs all exist (from an earlier run).")
@separator_options
@config_options
def separate(model_path, inputs, out_dir, filename, stems, fmt, mp3, bitrate, bits, clip, skip_existing, cfg,
             **options):
    """Split audio files (or folders, recursively) into instrumental and vocals with MODEL.

    Any format and sample rate the ingest reads; outputs go to OUT/--filename at the input's rate (mono
    stays mono, other layouts become stereo), streamed in chunks so that memory does not grow with the
    length, and appear only when complete.  --config and --set are merged over the model's stored
    config.  Exit code 1 when a file failed.
    """
    if mp3 and fmt not in (None, "mp3"):
        raise click.BadParameter(f"--mp3 and --format {fmt} disagree", param_hint="--mp3")
    fmt = "mp3" if mp3 else fmt or "wav"
    if fmt == "flac" and bits == "float":
        raise click.BadParameter("FLAC stores integers only: use --bits 16 or 24", param_hint="--bits")
    separator = _separator(model_path, **options)
    try:
        done, skipped, failed = separator.separate_files(
            inputs, out_dir, stems=stems, filename=filename, skip_existing=skip_existing,
            progress=progress_bars(), fmt=fmt, bits=bits, clip=clip, bitrate=bitrate)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    for path, outputs in done.items():
        click.echo(f"{path} -> {', '.join(str(p) for p in outputs.values())}")
    if skipped:
        log.info("skipped %d inputs whose outputs exist (--skip-existing)", len(skipped))
    for path, reason in failed.items():
        log.error("failed: %s: %s", path, reason)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Subfolder of DATASET (if present).")
@click.option("-o", "--out", "out_dir", default="evaluation", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where the JSON, Markdown and PNG go.")
@click.option("--museval/--no-museval", "use_museval", default=True, show_default=True,
              help="Also the BSSEval v4 SDR (slow: it runs for the model, the floor and the ceiling).")
@click.option("--png", is_flag=True,
              help="Also draw a bar chart, and spectrograms of the first track (true and separated).")
@separator_options
@config_options
def evaluate(model_path, dataset, split, out_dir, use_museval, png, cfg, **options):
    """Score MODEL on a stems DATASET (MUSDB18-HQ folders, MUSDB18 .stem.mp4 files, or mixtures/ +
    instruments/), between a floor (the mixture) and a ceiling (the ideal
    ratio mask with the mixture's phase): uSDR (whole-track, mean over tracks) and museval SDR (BSSEval
    v4, median over 1 s windows, median over tracks), for instrumental and vocals.
    """
    from specbert.inference.evaluate import evaluate as run
    from specbert.inference.evaluate import markdown, write_report

    separator = _separator(model_path, **options)
    try:
        picture = Path(out_dir) / "evaluation_spectrograms.png" if png else None
        if picture is not None:
            picture.parent.mkdir(parents=True, exist_ok=True)
        report = run(separator, dataset, split, use_museval, progress=progress_bars(), picture=picture)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    paths = write_report(report, out_dir, png) + ([picture] if png else [])
    click.echo(markdown(report).split("\n## ")[0].rstrip())
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


@main.command("model-info")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Sequence length of the FLOP count (default: the loader's crop_frames).")
@config_options
def model_info(frames, cfg):
    """Parameter counts (per part and level) and forward FLOPs of the configured model.

    The model is built on the meta device: nothing is allocated, so even the large config is instant.
    """
    import torch

    from specbert.model import build_discriminator, build_model, count_parameters, describe
    from specbert.model.flops import forward_flops

    frames = frames or cfg.loader.crop_frames
    with torch.device("meta"):
        model = build_model(cfg)
        disc = build_discriminator(cfg)
        x = torch.empty(1, cfg.audio.channels, cfg.audio.model_bins, frames)
        flops = forward_flops(model.eval(), x)
    click.echo(describe(model))
    click.echo(f"{'discriminator':<16}{count_parameters(disc):>14,}  (adversarial loss only)")
    click.echo(
        f"forward: {flops / 1e9:.2f} GFLOP per {frames}-frame crop, "
        f"{flops / frames / 1e6:.1f} MFLOP per frame (a training step costs about 3x)"
    )


@main.command("show-config")
@config_options
def show_config(cfg):
    """Print the resolved configuration as YAML (defaults + --config + --set)."""
    import yaml

    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
