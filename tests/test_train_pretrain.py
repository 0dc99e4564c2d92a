"""``specbert pretrain`` on real shards of the example library: validation scores the model against the
trivial rules (``context_gain``), a run stopped by SIGTERM and resumed matches an uninterrupted one, and the
run directory holds what a person looks at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from specbert.cli import main
from specbert.configs import load_config
from specbert.pipeline.example_library import write_example_library
from specbert.pipeline.ingest import ingest_library
from specbert.pipeline.masking import WHITE
from specbert.pipeline.voices import ACTIVE_DB, VOCAL_DB
from specbert.train.context import DB_FLOOR, TRIVIAL, db_error, interpolation, repetition
from specbert.train.pretrain import ManifestData, PretrainTask

# The tiny model on short crops and small batches, to keep CPU steps short.
SMALL = ["loader.crop_frames=32", "loader.token_frames=8", "loader.shuffle_buffer=8", "train.batch_size=2",
         "train.num_workers=1", "train.warmup_steps=3", "train.log_every=1"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("example")
    write_example_library(root / "library", seed=0, artists=4, albums_per_artist=1, songs_per_album=2)
    cfg = load_config("tiny", ["ingest.workers=1", "ingest.shard_bytes=2000000", "ingest.val_fraction=0.25",
                               "ingest.segment_frames=256"])
    summary = ingest_library([root / "library"], [root / "shards"], cfg, progress=False, log=lambda _: None)
    return summary.manifest


def records(run_dir: Path, split: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def pretrain_args(manifest: Path, run_dir: Path, steps: int, *sets: str) -> list[str]:
    args = ["pretrain", "--config", "tiny", "--manifest", str(manifest), "--run-dir", str(run_dir),
            "--steps", str(steps), "--device", "cpu"]
    for s in SMALL + list(sets):
        args += ["--set", s]
    return args


def test_validation_scores_the_model_against_trivial_rules_and_the_run_dir_shows_it(manifest, tmp_path,
                                                                                     one_thread):
    """Validation records carry the fixed measure (``db_error``) and the training loss of the model and of
    each trivial rule on the hidden frames, and ``context_gain``; so do TensorBoard's."""
    run_dir = tmp_path / "run"
    args = pretrain_args(manifest, run_dir, 40, "loader.crop_frames=64", "train.val_every=20",
                         "train.preview_every=20", "train.checkpoint_every=20", "train.val_batches=2")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    val = records(run_dir, "val")
    assert [r["step"] for r in val] == [20, 40]
    measures = ("db_error", "l1_masked")
    fields = {*measures, *(f"{measure}_{name}" for measure in measures for name in TRIVIAL)}
    for r in val:
        assert fields | {"context_gain"} <= set(r), r
        best = min(r[f"db_error_{name}"] for name in TRIVIAL)
        assert r["context_gain"] == pytest.approx(1 - r["db_error"] / best)
        assert best < r["db_error_silence"]  # on music a gap is better filled from around it than left silent
    assert val[-1]["db_error"] < val[-1]["db_error_silence"], val  # it learned more than silence
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/context_gain")] == [20, 40]
    train = records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, 41))
    assert all(r["samples_per_s"] > 0 and r["frames_per_s"] == pytest.approx(64 * r["samples_per_s"])
               for r in train)
    previews = sorted(p.name for p in (run_dir / "previews").iterdir())
    assert previews == ["step_00000020.png", "step_00000040.png"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step_00000020", "step_00000040"]
    again = CliRunner().invoke(main, args)  # the same run directory without --resume: refused
    assert again.exit_code != 0 and "already holds checkpoints" in again.output
    meta = json.loads((run_dir / "meta.json").read_text())
    head = subprocess.run(["git", "-C", str(Path(__file__).parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert meta["git"]["commit"] == head and meta["specbert"] == version("specbert")
    assert meta["torch"] == torch.__version__ and meta["cuda"] == torch.version.cuda
    assert meta["hardware"]["cpu_cores"] == os.cpu_count() and meta["world_size"] == 1


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "specbert.cli", *args], env=env,
                            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_a_run_stopped_by_sigterm_resumes_to_the_same_state(manifest, tmp_path):
    """With the reference design's objective (input x mask over white gaps, linear L1 on the masked frames,
    next segment, no mixing): still available."""
    steps = 6
    seed_design = ["train.reconstruct=mask", "train.loss_power=1.0", "train.next_weight=1.0",
                   "train.mix_prob=0", "train.unmasked_weight=0"]
    straight = spawn(pretrain_args(manifest, tmp_path / "straight", steps, *seed_design))
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err

    stopped = spawn(pretrain_args(manifest, tmp_path / "resumed", steps, *seed_design))
    deadline = time.monotonic() + 300
    while not (tmp_path / "resumed/metrics.jsonl").exists() or not records(tmp_path / "resumed", "train"):
        assert stopped.poll() is None and time.monotonic() < deadline, stopped.communicate()[1]
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    at = records(tmp_path / "resumed", "train")[-1]["step"]
    assert at < steps and (tmp_path / f"resumed/checkpoints/step_{at:08d}").is_dir()

    resumed = spawn(pretrain_args(manifest, tmp_path / "resumed", steps, *seed_design) + ["--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    meta = json.loads((tmp_path / "resumed/meta.json").read_text())
    assert len(meta["resumed"]) == 1 and meta["resumed"][0]["started"] >= meta["started"]
    a, b = records(tmp_path / "straight", "train"), records(tmp_path / "resumed", "train")
    assert all("next_bce" in r for r in b)
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    wa = load_file(tmp_path / f"straight/checkpoints/step_{steps:08d}/model.safetensors")
    wb = load_file(tmp_path / f"resumed/checkpoints/step_{steps:08d}/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


@pytest.mark.parametrize("guess", ["interpolation", "repetition"])
def test_the_residual_reconstruction_starts_at_its_guess_and_its_loss_is_the_fixed_measure(manifest, guess):
    """``train.reconstruct=residual``: before any step the model's reconstruction is the guess
    in each gap (``train.gap_guess``: the linear interpolation, or the copy of the best-matching stretch),
    so ``context_gain`` starts from that rule, not below it; the training loss is the dB error itself (on
    a unit scale); validation scores the copy either way."""
    cfg = load_config("tiny", [*SMALL, "train.num_workers=0", "loader.crop_frames=64", "train.val_batches=2",
                               f"train.gap_guess={guess}", "train.reconstruct=residual", "train.mix_prob=0"])
    task = PretrainTask(cfg, ManifestData(cfg, manifest, "cpu"))
    models = task.build_models()
    with torch.no_grad():
        metrics = task.validate(models, task.val_batches())
        assert metrics["db_error"] == pytest.approx(metrics[f"db_error_{guess}"], abs=1e-4)
        assert metrics["gain_over_repetition"] == pytest.approx(1 - metrics["db_error"]
                                                                / metrics["db_error_repetition"])
        assert metrics["db_error"] < metrics["db_error_silence"]
        batch = next(iter(task.train_batches(0)))
        loss = task.losses(models, batch)["l1_masked"]
        rule = (repetition if guess == "repetition" else interpolation)(
            batch["input"].float(), task.known_frames(batch["masked"]))
        expected = db_error(rule, batch["target"], batch["masked"]).item()
        assert loss.item() * -DB_FLOOR == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("start", "db_range"), [(0.5, (2.5, 9.0)), (0.95, (0.0, 1.5))])
def test_the_unmix_head_starts_at_unmix_start_and_db_weight_adds_the_l1_in_db(manifest, start, db_range):
    """``train.unmix_start``: before any step the mask keeps about that share of every bin, so with 0.95 the
    clean frames are kept nearly whole (the fixed measure on the known frames is small) where 0.5 takes
    6 dB off each; ``train.db_weight`` adds the dB L1 of the same regions to the loss."""
    cfg = load_config("tiny", [*SMALL, "train.num_workers=0", "loader.crop_frames=64", "train.mix_prob=0",
                               f"train.unmix_start={start}", "train.db_weight=0.5"])
    task = PretrainTask(cfg, ManifestData(cfg, manifest, "cpu"))
    models = task.build_models()
    batch = next(iter(task.train_batches(0)))
    with torch.no_grad():
        x, guess = task.network_input(batch)
        mask, _ = models["model"](x)
        out = task.losses(models, batch)
    assert mask.median().item() == pytest.approx(start, abs=0.1)
    known = task.known_frames(batch["masked"])
    low, high = db_range  # about -20 log10(start) (6.0, 0.45 dB), spread by the head's random weights
    assert low < db_error(x * mask, batch["target"], known).item() < high
    assert out["loss"].item() == pytest.approx(out["l1_masked"].item() + out["l1_unmasked"].item()
                                               + 0.5 * (out["db_masked"].item() + out["db_unmasked"].item()))


def test_utterance_mixing_adds_another_crop_where_the_input_shows_frames_and_leaves_context_gain_clean(
        manifest):
    """``train.mix_prob=1, mix_source=batch``: every frame the input shows gets the batch's previous crop
    added in power at the drawn gain, white gaps get the guess of that mixed input, and validation scores
    ``context_gain`` on inputs without the intruder (an untrained model stays at its guess there) and the
    mixture as it is beside the model's reconstruction (``unmix_gain`` 0 before any step: the residual head
    starts at no correction)."""
    cfg = load_config("tiny", [*SMALL, "train.num_workers=0", "loader.crop_frames=64", "train.val_batches=2",
                               "train.mix_prob=1", "train.mix_source=batch", "train.mix_db=[-6,-6]",
                               "train.reconstruct=residual", "train.gap_guess=interpolation"])
    task = PretrainTask(cfg, ManifestData(cfg, manifest, "cpu"))
    batch = next(iter(task.train_batches(0)))
    clean, _ = task.network_input(batch, mix=False)
    mixed, guess = task.network_input(batch)
    white = (batch["kinds"] == WHITE).repeat_interleave(8, dim=1)[:, None, None, :].expand_as(mixed)
    intruder = 10 ** (-6 / 20) * batch["target"].float().roll(1, dims=0)
    assert torch.allclose(mixed[~white], (clean.square() + intruder.square()).sqrt()[~white])
    shown = torch.where(white, 0.0, mixed)  # the white frames' own values play no part in the guess
    assert torch.equal(mixed[white], interpolation(shown, task.known_frames(batch["masked"]))[white])
    models = task.build_models()
    with torch.no_grad():
        metrics = task.validate(models, task.val_batches())
    assert metrics["db_error"] == pytest.approx(metrics["db_error_interpolation"], abs=1e-4)
    assert metrics["db_error_unmixed"] == pytest.approx(metrics["db_error_mixture"], abs=1e-4)
    assert metrics["db_error_mixture"] > 1.0 and metrics["unmix_gain"] == pytest.approx(0.0, abs=1e-4)


def test_pretraining_with_utterance_mixing_learns_to_take_the_intruder_out(manifest, tmp_path, one_thread):
    """A few dozen steps with the intruder and the unmasked frames' loss: the reconstruction of the mixed
    inputs comes closer to the crops alone than the mixtures are (``unmix_gain`` > 0)."""
    run_dir = tmp_path / "run"
    args = pretrain_args(manifest, run_dir, 40, "loader.crop_frames=64", "train.val_every=40",
                         "train.preview_every=0", "train.val_batches=2", "train.mix_prob=1",
                         "train.mix_source=batch", "train.reconstruct=residual",
                         "train.gap_guess=interpolation", "train.lr=1e-2")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (val,) = records(run_dir, "val")
    assert val["unmix_gain"] > 0.01, val  # 0 before any step (the residual head starts at no correction)


def test_a_synthetic_voice_is_mixed_in_at_a_vocal_ratio_where_the_input_shows_frames(manifest):
    """The default intruder (``train.mix_source=voice``): a stretch of a voice of the bank at a ratio to the
    crop within ``voices.VOCAL_DB`` over the frames where the voice sounds, added in power to the frames the
    input shows; the bank is the same for the same seed; the default head (``unmix``) is input x mask."""
    cfg = load_config("tiny", [*SMALL, "train.num_workers=0", "loader.crop_frames=64", "train.batch_size=4",
                               "train.mix_prob=1", "train.voice_bank=4"])
    task = PretrainTask(cfg, ManifestData(cfg, manifest, "cpu"))
    batch = next(iter(task.train_batches(0)))
    torch.manual_seed(1)
    voice = task.intruder(batch)
    target = batch["target"].float()
    power = voice.mean(1).square().sum(1)  # the voice's before panning, as voices.vocals_for measures it
    assert (power > 0).any(dim=1).all()  # every crop got a voice (mix_prob=1) ...
    active = power > power.amax(1, keepdim=True) * 10 ** (ACTIVE_DB / 10)
    ratio_db = 10 * torch.log10((power * active).sum(1) / (target.square().sum(2).mean(1) * active).sum(1))
    assert ((ratio_db > VOCAL_DB[0] - 0.01) & (ratio_db < VOCAL_DB[1] + 0.01)).all(), ratio_db
    assert ratio_db.std() > 0.1  # ... at ratios of its own
    assert (voice[:, 0] != voice[:, 1]).any()  # panned
    torch.manual_seed(1)
    mixed, guess = task.network_input(batch)
    clean, _ = task.network_input(batch, mix=False)
    shown = (batch["kinds"] != WHITE).repeat_interleave(8, dim=1)[:, None, None, :]
    assert torch.allclose(mixed, torch.where(shown, (clean.square() + voice.square()).sqrt(), guess))
    again = PretrainTask(cfg, ManifestData(cfg, manifest, "cpu")).voices(torch.device("cpu"))
    assert torch.equal(again, task.voices(torch.device("cpu")))
    model = task.build_models()["model"].eval()
    with torch.no_grad():
        _, linear, _ = task.predict(model, mixed, guess)
        mask, _ = model(mixed)
    assert torch.allclose(linear, mixed * mask)


@pytest.mark.parametrize("quiet_bins", ["train.loss_power=0.3", "train.db_weight=1"])
def test_pretraining_with_synthetic_voices_learns_to_take_them_out(manifest, tmp_path, one_thread,
                                                                   quiet_bins):
    """The default objective on the example library: after a few dozen steps the reconstruction of the mixed
    inputs is closer to the crops alone than at the first validation (the mask starts at 0.5, as a
    fine-tune's from scratch, so ``unmix_gain`` starts below 0).  With compressed magnitudes in the loss
    (``loss_power`` 0.3) or an L1 in dB beside the linear one (``db_weight``) the quiet bins, which the dB
    measure counts, train within these steps."""
    run_dir = tmp_path / "run"
    args = pretrain_args(manifest, run_dir, 40, "loader.crop_frames=64", "train.val_every=10",
                         "train.preview_every=0", "train.val_batches=2", "train.mix_prob=1",
                         "train.voice_bank=4", "train.lr=1e-2", quiet_bins)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    first, *_, last = records(run_dir, "val")
    assert last["unmix_gain"] > first["unmix_gain"] + 0.2, (first, last)
    assert last["db_error_unmixed"] < 0.9 * first["db_error_unmixed"], (first, last)
