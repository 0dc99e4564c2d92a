"""Fine-tuning on real stems shards of the example set: the augmentation's mixtures are exact, --init says
what it loaded, a fine-tune beats the mixture floor, resumes exactly, and `specbert compare` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from specbert.cli import main
from specbert.configs import Config, load_config
from specbert.configs.finetune import FinetuneConfig
from specbert.inference.export import save_model_file
from specbert.model import build_model
from specbert.pipeline.example_library import write_example_stems
from specbert.pipeline.ingest import ingest_stems
from specbert.pipeline.manifest import read_manifest
from specbert.pipeline.shards import iter_shard
from specbert.pipeline.spectral import normalise
from specbert.pipeline.stems_loader import build_stems_loader, crop_stems, remix, stems_pair
from specbert.train.finetune import FinetuneTask, load_init
from specbert.train.rng import seed_all

ROOT = Path(__file__).resolve().parents[1]
# Six example tracks: four train (one of them instrumental), one validation (ingest.val_fraction=0.1 holds
# out its artist), one test.  Short crops and batches keep CPU steps short.
SMALL = ["loader.crop_frames=64", "loader.crops_per_segment=4", "loader.shuffle_buffer=8",
         "train.batch_size=4", "train.num_workers=1", "train.log_every=1", "train.preview_every=0"]


@pytest.fixture(scope="module")
def stems_root(tmp_path_factory) -> Path:
    return write_example_stems(tmp_path_factory.mktemp("stems") / "stems", seed=0, tracks=6)


@pytest.fixture(scope="module")
def manifest(stems_root) -> Path:
    cfg = load_config("tiny", ["ingest.workers=1", "ingest.val_fraction=0.1"])
    summary = ingest_stems([stems_root], [stems_root.parent / "shards"], cfg, progress=False,
                           log=lambda _: None)
    return summary.manifest


@pytest.fixture(scope="module")
def samples(manifest) -> list[dict]:
    """Decoded stems samples of the train split, one per track."""
    shards = [s["path"] for s in read_manifest(manifest).shards("train") if s["kind"] == "stems"]
    return [sample for path in shards for sample in iter_shard(path)]


@pytest.fixture(scope="module")
def init_file(tmp_path_factory) -> Path:
    """An exported tiny model with random weights: what --init reads."""
    cfg = load_config("tiny")
    torch.manual_seed(1)
    return save_model_file(build_model(cfg), cfg, tmp_path_factory.mktemp("init") / "model.safetensors")


def crops(samples, frames=64) -> list[dict]:
    rng = np.random.default_rng(0)
    return [crop_stems(s, frames, swap=0.0, rng=rng) for s in samples]


def magnitude(x: np.ndarray, peak: float) -> torch.Tensor:
    return normalise(torch.from_numpy(np.abs(x)), peak)


def test_the_loader_gives_remixed_crops_of_the_stems_shards(manifest):
    cfg = load_config("tiny", SMALL)
    batch = next(iter(build_stems_loader(manifest, cfg, "train", batch_size=4, num_workers=1, seed=0)))
    for name in ("mixture", "accompaniment", "vocals"):
        assert batch[name].shape == (4, 2, 1024, 64) and batch[name].dtype == torch.float16
        assert 0 <= batch[name].min() and batch[name].max() <= 1
    assert batch["mixture"].float().amax() > 0.01


def test_a_stems_segment_shorter_than_the_crop_is_padded_with_silence(samples):
    sample = samples[0]
    short = {**sample, "record": {**sample["record"], "frames": 20},
             "stems": {name: x[..., :20] for name, x in sample["stems"].items()}}
    crop = crop_stems(short, 64, swap=0.0, rng=np.random.default_rng(0))
    whole = stems_pair(sample["stems"], 0, 20)
    for got, expected in zip((crop["accompaniment"], crop["vocals"]), whole, strict=True):
        assert got.shape == (2, 1024, 64)
        np.testing.assert_array_equal(got[..., :20], expected[:, :1024])
        assert not got[..., 20:].any()


def test_the_mixture_is_the_exact_sum_of_the_stems(samples):
    cfg = FinetuneConfig(remix_prob=0.0, no_vocals_prob=0.0, gain_db=0.0)
    originals = crops(samples)
    out = list(remix(originals, cfg, np.random.default_rng(0)))
    for crop, sample in zip(originals, out, strict=True):
        mixture = crop["accompaniment"] + crop["vocals"]
        peak = max(float(np.abs(mixture).max()), crop["peak"])
        assert torch.equal(sample["mixture"], magnitude(mixture, peak))
        assert torch.equal(sample["accompaniment"], magnitude(crop["accompaniment"], peak))
        assert sample["vocals_track"] == sample["track"]


def test_phase_targets_are_what_the_best_mask_on_the_mixture_reaches(samples):
    """With ``finetune.target`` "phase" the targets add up to the mixture's magnitude (where neither is
    clipped at 0), and the mask that meets them (clipped to [0, 1]) separates the complex stem better than
    the magnitude ratio does."""
    cfg = FinetuneConfig(remix_prob=1.0, no_vocals_prob=0.0, gain_db=0.0, target="phase")
    originals = crops(samples)
    out = list(remix(originals, cfg, np.random.default_rng(0)))
    by_track = {crop["track"]: crop for crop in originals}
    overlaps, errors = 0, np.zeros(2)  # errors of the masks that meet the targets and of the ratio
    for crop, sample in zip(originals[1:], out[1:], strict=True):
        accompaniment = crop["accompaniment"]
        mixture = accompaniment + by_track[sample["vocals_track"]]["vocals"]
        peak = max(float(np.abs(mixture).max()), crop["peak"])
        x, a, v = (sample[name].float().numpy() for name in ("mixture", "accompaniment", "vocals"))
        inside = (x > 1e-2) & (a > 0) & (v > 0)  # neither clipped at 0; float16 steps far below x
        assert np.abs(a + v - x)[inside].max(initial=0) < 2e-3
        overlaps += int(inside.sum())
        assert (a + v >= x - 2e-3).all()  # clipping a negative part at 0 only adds
        assert (a <= magnitude(accompaniment, peak).float().numpy() + 2e-3).all()
        ratio = np.clip(np.abs(accompaniment) / np.maximum(np.abs(mixture), 1e-12), 0, 1)
        best = np.clip(a / np.maximum(x, 1e-6), 0, 1)
        errors += [float(np.sum(np.abs(mask * mixture - accompaniment) ** 2)) for mask in (best, ratio)]
    assert overlaps > 1000 and errors[0] < 0.9 * errors[1]


def test_the_stems_add_up_to_the_stored_mixture(samples):
    for sample in samples:
        accompaniment, vocals = stems_pair(sample["stems"], 0, 64)
        stored = sample["stems"]["mixture"][:, :, :, :64].astype(np.float32)
        error = np.abs(stored[0] + 1j * stored[1] - (accompaniment + vocals)).max()
        assert error < 0.02 * np.abs(stored[0] + 1j * stored[1]).max()  # float16 codec rounding only


def test_sometimes_no_vocals(samples):
    cfg = FinetuneConfig(no_vocals_prob=1.0, gain_db=0.0)
    for sample in remix(crops(samples), cfg, np.random.default_rng(0)):
        assert sample["vocals_track"] == "" and not sample["vocals"].any()
        assert torch.equal(sample["mixture"], sample["accompaniment"])


def test_vocals_come_from_another_track(samples):
    cfg = FinetuneConfig(remix_prob=1.0, no_vocals_prob=0.0, gain_db=0.0)
    originals = crops(samples)
    out = list(remix(originals, cfg, np.random.default_rng(0)))
    assert out[0]["vocals_track"] == out[0]["track"]  # nothing in the pool yet
    by_track = {crop["track"]: crop for crop in originals}
    for crop, sample in zip(originals[1:], out[1:], strict=True):
        other = by_track[sample["vocals_track"]]
        assert sample["vocals_track"] != sample["track"]
        mixture = crop["accompaniment"] + other["vocals"]
        peak = max(float(np.abs(mixture).max()), crop["peak"])
        assert torch.equal(sample["vocals"], magnitude(other["vocals"], peak))
        assert torch.equal(sample["mixture"], magnitude(mixture, peak))


def test_gains_change_the_balance_of_the_stems(samples):
    rng = np.random.default_rng(0)
    cfg = FinetuneConfig(remix_prob=0.0, no_vocals_prob=0.0, gain_db=6.0)
    ratios = [float(s["vocals"].float().sum() / s["accompaniment"].float().sum())
              for s in remix(crops(samples) * 4, cfg, rng) if s["vocals"].float().sum() > 1]
    assert max(ratios) / min(ratios) > 2.0


def test_init_reports_loaded_new_unused_and_mismatched(init_file):
    source = load_file(str(init_file))
    # one more encoder block at the deepest level (new), no decoder block at level 3 (unused), wider level 4
    cfg = load_config("tiny", ["model.encoder_blocks=[0, 0, 1, 1, 2]", "model.decoder_blocks=[0, 0, 0, 0]",
                               "model.channels=[2, 2, 4, 8, 24]"])
    model = build_model(cfg)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    report = load_init(model, init_file)
    state = model.state_dict()
    mismatched = {name for name, _, _ in report.mismatched}
    assert set(report.new) == set(state) - set(source)
    assert any(n.startswith("encoders.4.blocks.1.") for n in report.new)
    assert set(report.unused) == set(source) - set(state)
    assert any(n.startswith("decoders.3.blocks.") for n in report.unused)
    assert "encoders.4.conv.0.weight" in mismatched
    assert set(report.loaded) | mismatched | set(report.new) == set(state)
    assert all(torch.equal(state[n], source[n]) for n in report.loaded)
    assert all(torch.equal(state[n], before[n]) for n in mismatched | set(report.new))
    assert any(line.startswith("  shape mismatch: encoders.4.conv.0.weight (") for line in report.lines())


def test_init_leaves_fresh_modules_new(init_file):
    model = build_model(load_config("tiny"))
    before = model.mask_head.proj.weight.detach().clone()
    report = load_init(model, init_file, fresh=["mask_head"])
    assert report.new == ["mask_head.proj.weight", "mask_head.proj.bias"] and not report.unused
    assert torch.equal(model.mask_head.proj.weight, before)


def test_init_blend_starts_between_the_loaded_weights_and_fresh_ones(init_file):
    """``finetune.init_blend``: every loaded tensor starts at ``blend * source + (1 - blend) * fresh``."""
    source = load_file(str(init_file))
    model = build_model(load_config("tiny"))
    fresh = {n: t.clone() for n, t in model.state_dict().items()}
    report = load_init(model, init_file, blend=0.25)
    state = model.state_dict()
    assert report.loaded and "blended 0.25 : 0.75 with fresh weights" in report.lines()[0]
    for name in report.loaded:
        if state[name].is_floating_point():
            assert torch.allclose(state[name], 0.25 * source[name] + 0.75 * fresh[name]), name
        else:
            assert torch.equal(state[name], source[name]), name


def test_a_warm_start_draws_its_fresh_weights_apart_from_the_pretraining_start(init_file):
    """``init_file`` is the untrained start of seed 1, as a pretraining of ``train.seed=1`` begins.  A
    fine-tune of the same seed blends it with fresh weights of its own stream, so every randomly
    initialised tensor moves (with the trainer's stream they would be the same weights, and stay put)."""
    cfg = load_config("tiny", ["train.seed=1", "finetune.init_blend=0.5"])
    seed_all(cfg.train.seed)  # as the trainer does before build_models
    model = FinetuneTask(cfg, "unused", init=init_file, log=lambda line: None).build_models()["model"]
    source, state = load_file(str(init_file)), model.state_dict()
    drawn = [n for n, t in source.items() if t.is_floating_point() and t.numel() > 1 and t.std() > 0]
    assert drawn and all(not torch.allclose(state[n], source[n]) for n in drawn)


def finetune_args(manifest, run_dir, steps, *sets) -> list[str]:
    args = ["finetune", "--config", "tiny", "--manifest", str(manifest), "--run-dir", str(run_dir),
            "--steps", str(steps), "--device", "cpu"]
    for s in [*SMALL, *sets]:
        args += ["--set", s]
    return args


def test_init_from_a_model_file_with_a_frozen_encoder(manifest, init_file, tmp_path, one_thread):
    run_dir = tmp_path / "run"
    args = finetune_args(manifest, run_dir, 2, "finetune.freeze_encoder_steps=2", "finetune.init_blend=1",
                         "train.val_every=0")
    result = CliRunner().invoke(main, [*args, "--init", str(init_file)])
    assert result.exit_code == 0, result.output
    # finetune.fresh is empty by default: pretraining's default head is the vocal remover's mask
    assert "tensors loaded, 0 new, 0 unused, 0 shape mismatches" in result.output
    assert json.loads((run_dir / "init.json").read_text())["new"] == []
    source = load_file(str(init_file))
    trained = load_file(str(run_dir / "checkpoints/step_00000002/model.safetensors"))
    params = dict(build_model(load_config("tiny")).named_parameters())
    encoder = [n for n in params if n.startswith("encoders.")]
    assert all(torch.equal(trained[n], source[n]) for n in encoder)  # frozen: not one update
    assert not torch.equal(trained["decoders.0.conv.0.weight"], source["decoders.0.conv.0.weight"])


@pytest.mark.parametrize("distance", ["l1", "rmse"])
def test_the_fine_tune_loss_is_the_chosen_distance_of_both_stems(manifest, distance, one_thread):
    cfg = load_config("tiny", [*SMALL, f"finetune.distance={distance}", "finetune.vocal_weight=0.5"])
    task = FinetuneTask(cfg, manifest)
    batch = next(iter(task.train_batches(0)))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        out = task.losses({"model": model}, batch)
        x = batch["mixture"].double()
        mask = model(batch["mixture"].float())[0].double()
    errors = {"instrumental": mask * x - batch["accompaniment"].double(),
              "vocals": (1 - mask) * x - batch["vocals"].double()}
    expected = {stem: (e.abs().mean() if distance == "l1" else e.square().mean().sqrt()).item()
                for stem, e in errors.items()}
    assert set(out) == {f"{distance}_instrumental", f"{distance}_vocals", "loss"}
    for stem, value in expected.items():
        assert out[f"{distance}_{stem}"].item() == pytest.approx(value, rel=1e-4)
    assert out["loss"].item() == pytest.approx(expected["instrumental"] + 0.5 * expected["vocals"], rel=1e-4)


def test_a_resumed_finetune_matches_an_uninterrupted_one(manifest, tmp_path, one_thread):
    sets = ("train.val_every=0", "train.checkpoint_every=3")
    whole, split = tmp_path / "whole", tmp_path / "split"
    for args in (finetune_args(manifest, whole, 6, *sets), finetune_args(manifest, split, 3, *sets),
                 [*finetune_args(manifest, split, 6, *sets), "--resume"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    a = load_file(str(whole / "checkpoints/step_00000006/model.safetensors"))
    b = load_file(str(split / "checkpoints/step_00000006/model.safetensors"))
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert not (split / "init.json").exists()


def test_a_finetune_of_the_tiny_model_beats_the_mixture_floor(manifest, tmp_path, one_thread):
    run_dir = tmp_path / "run"
    args = finetune_args(manifest, run_dir, 60, "train.val_every=30", "train.checkpoint_every=60")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["split"] == "val"]
    assert [r["step"] for r in val] == [30, 60] and val[-1]["val_tracks"] == 1
    last = val[-1]
    # seeds 0, 1, 2 gave +2.1, +1.8, +1.4 dB (instrumental) and +5.9, +5.6, +5.2 dB (vocals) over the floor
    assert last["usdr_instrumental"] > last["floor_usdr_instrumental"] + 1.0, val
    assert last["usdr_vocals"] > last["floor_usdr_vocals"] + 3.0, val
    assert "validation uSDR instrumental" in result.output


def test_compare_runs_both_arms_for_each_seed_and_scores_the_test_split(manifest, stems_root, init_file,
                                                                       tmp_path):
    run_dir = tmp_path / "cmp"
    args = ["compare", "--config", "tiny", "--manifest", str(manifest), "--init", str(init_file),
            "--run-dir", str(run_dir), "--steps", "2", "--seeds", "2", "--test", str(stems_root),
            "--device", "cpu", "--set", "train.val_every=2", "--set", "train.val_batches=1"]
    for s in SMALL:
        args += ["--set", s]
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "compare.json").read_text())
    assert report["seeds"] == [0, 1]
    assert [(r["seed"], r["arm"]) for r in report["runs"]] == [(0, "pretrained"), (0, "scratch"),
                                                                (1, "pretrained"), (1, "scratch")]
    for run in report["runs"]:
        arm_dir = run_dir / f"seed_{run['seed']}" / run["arm"]
        assert run["final"]["step"] == 2 and np.isfinite(run["final"]["usdr_instrumental"])
        assert (arm_dir / "init.json").exists() == (run["arm"] == "pretrained")
        # the test figures are `specbert evaluate`'s on the exported model of the arm
        evaluation = json.loads((arm_dir / "evaluation.json").read_text())
        assert evaluation["split"] == "test" and evaluation["tracks_count"] == 1
        assert run["test"]["usdr_vocals"] == evaluation["overall"]["model"]["vocals"]["usdr"]
        assert run["test"]["floor_usdr_vocals"] == evaluation["overall"]["mixture"]["vocals"]["usdr"]
    runs = {(r["seed"], r["arm"]): r for r in report["runs"]}
    test = {key: run["test"]["usdr_instrumental"] for key, run in runs.items()}
    gains = [test[s, "pretrained"] - test[s, "scratch"] for s in (0, 1)]
    assert report["gain_db"]["test_usdr_instrumental"]["mean"] == pytest.approx(np.mean(gains))
    assert report["gain_db"]["test_usdr_instrumental"]["std"] == pytest.approx(np.std(gains, ddof=1))
    assert runs[0, "scratch"]["final"] != runs[1, "scratch"]["final"]  # the seeds differ
    assert (run_dir / "compare.png").stat().st_size > 0
    text = (run_dir / "compare.md").read_text()
    assert "| pretrained |" in text and "±" in text and "test instrumental" in text
    assert text.startswith("# Pretrained vs scratch: 2 fine-tuning steps per arm")
    assert "mixture (floor)" in result.stdout
    # run again, it continues every arm: finished ones (each holding its exported model) take no step
    again = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                           cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((run_dir / "compare.json").read_text())["runs"]
    assert [r["final"] for r in rerun] == [r["final"] for r in report["runs"]]
    assert [r["test"]["usdr_instrumental"] for r in rerun] == pytest.approx(
        [r["test"]["usdr_instrumental"] for r in report["runs"]], abs=1e-4)


def test_the_python_api_is_importable_from_anywhere(tmp_path):
    code = ("import specbert, specbert.inference.separate as s; "
            "assert specbert.Separator is s.Separator")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_config_has_a_finetune_section():
    cfg = load_config("tiny", ["finetune.lr=0.01"])
    assert isinstance(cfg, Config) and cfg.finetune.lr == 0.01 and cfg.finetune.steps == 100
    assert cfg.train.lr == 1e-3  # the pretraining schedule is another fact
