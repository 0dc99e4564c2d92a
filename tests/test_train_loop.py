"""The trainer on in-memory batches and a micro model: NaN skipping, the adversarial path, exact
resumption and DDP (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from specbert.configs import load_config
from specbert.train.checkpoint import list_checkpoints, load_state
from specbert.train.distributed import Dist
from specbert.train.pretrain import PretrainTask, SyntheticData
from specbert.train.trainer import BatchStream, Trainer

MICRO = ["model.channels=[4,8]", "model.encoder_blocks=[0,1]", "model.decoder_blocks=[0]",
         "model.num_heads=4", "model.expansion=1", "model.dropout=0.1", "model.max_distance=64",
         "model.disc_channels=4", "model.disc_layers=2", "loader.crop_frames=32", "loader.token_frames=4",
         "train.batch_size=2", "train.warmup_steps=2", "train.lr=1.0e-3", "train.log_every=1",
         "train.val_every=0", "train.preview_every=0", "train.checkpoint_every=0", "train.val_batches=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def micro_config(*overrides: str):
    return load_config("tiny", MICRO + list(overrides))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_nan_batch_is_skipped_without_touching_weights_or_statistics(tmp_path):
    cfg = micro_config()
    data = SyntheticData(cfg, 3)
    data.batches[1]["input"][0, :, :, 5] = float("nan")
    trainer = Trainer(PretrainTask(cfg, data), cfg, tmp_path, Dist())
    stream = BatchStream(data.train, 0, trainer.progress)
    assert trainer.train_step(stream)[0] is not None
    before, opt_before = snapshot(trainer.raw["model"]), trainer.optimizers["model"].state_dict()["state"][0]
    before_opt = {k: v.clone() for k, v in opt_before.items()}
    assert trainer.train_step(stream)[0] is None
    assert trainer.progress.skipped == 1
    after = trainer.raw["model"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BatchNorm buffers
    opt_after = trainer.optimizers["model"].state_dict()["state"][0]
    assert all(torch.equal(before_opt[k], opt_after[k]) for k in before_opt)
    metrics = trainer.train_step(stream)[0]
    assert metrics is not None and torch.isfinite(metrics["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.raw["model"].parameters())


def test_the_adversarial_path_updates_both_models(tmp_path):
    # The reference design's adversarial variant (input x mask): the residual head starts at zero, so
    # its first step would leave the layers below it unchanged.
    cfg = micro_config("train.adv_weight=1.0", "train.l1_weight=100", "train.reconstruct=mask")
    data = SyntheticData(cfg, 1)
    trainer = Trainer(PretrainTask(cfg, data), cfg, tmp_path, Dist())
    assert set(trainer.raw) == {"model", "disc"}
    before = {name: snapshot(m) for name, m in trainer.raw.items()}
    metrics = trainer.train_step(BatchStream(data.train, 0, trainer.progress))[0]
    assert {"adv", "disc", "grad_norm_disc"} <= set(metrics)
    for name, model in trainer.raw.items():
        changed = [k for k, p in model.named_parameters() if not torch.equal(p, before[name][k])]
        trained = [k for k, p in model.named_parameters() if p.requires_grad]  # the next head: task off
        assert changed == trained and len(trained) >= len(list(model.parameters())) - 4, name


def test_compiled_training_steps_equal_eager_ones(tmp_path):
    """``train.compile`` runs the training steps under torch.compile ("aot_eager" here: tracing and
    compiled autograd without code generation, seconds on CPU; "inductor" on GPUs)."""
    losses = {}
    for backend in ("", "aot_eager"):
        cfg = micro_config("model.dropout=0.0", *([f"train.compile={backend}"] if backend else []))
        data = SyntheticData(cfg, 2)
        trainer = Trainer(PretrainTask(cfg, data), cfg, tmp_path / (backend or "eager"), Dist())
        assert isinstance(trainer.models["model"], torch._dynamo.eval_frame.OptimizedModule) == bool(backend)
        stream = BatchStream(data.train, 0, trainer.progress)
        losses[backend] = [float(trainer.train_step(stream)[0]["loss"]) for _ in range(3)]
    assert losses["aot_eager"] == pytest.approx(losses[""], rel=1e-5)
    assert losses[""][2] != losses[""][0]


class SignalAt:
    """Training data that sends this process SIGTERM while the ``at``-th batch is being fetched."""

    def __init__(self, data: SyntheticData, at: int):
        self.data, self.at, self.fetched = data, at, 0

    def train(self, epoch: int):
        for batch in self.data.train(epoch):
            self.fetched += 1
            if self.fetched == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    def val(self):
        return self.data.val()

    def stats(self):
        return {}


@pytest.mark.parametrize("average", [[], ["train.ema_decay=0.8"]], ids=["trained", "averaged"])
def test_a_run_stopped_by_sigterm_and_resumed_matches_an_uninterrupted_one(tmp_path, average):
    """SIGTERM during step 3 of 6: the step finishes, a checkpoint is saved, the run returns; resuming
    gives the same losses and weights as 6 steps straight (epochs of 2 batches: it resumes mid-epoch);
    with a weight average, the same validation of the average and the same trained weights."""
    cfg = micro_config("train.steps=6", "train.val_every=3", "train.grad_accum=1", *average)
    data = SyntheticData(cfg, 3)
    assert Trainer(PretrainTask(cfg, data), cfg, tmp_path / "straight", Dist()).fit() is None
    stopped = Trainer(PretrainTask(cfg, SignalAt(data, 3)), cfg, tmp_path / "resumed", Dist()).fit()
    assert stopped == signal.SIGTERM
    assert [p.name for p in list_checkpoints(tmp_path / "resumed/checkpoints")] == ["step_00000003"]
    assert Trainer(PretrainTask(cfg, data), cfg, tmp_path / "resumed", Dist()).fit(resume=True) is None

    def records(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["split"], r["step"], r.get("loss"), r.get("l1_masked")) for r in map(json.loads, lines)]

    assert records("straight") == records("resumed")
    a = load_file(tmp_path / "straight/checkpoints/step_00000006/model.safetensors")
    b = load_file(tmp_path / "resumed/checkpoints/step_00000006/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_state(tmp_path / run / "checkpoints/step_00000006/state.pt")
            for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and ("trained" in a) == bool(average)
    assert all(torch.equal(a["trained"][k], b["trained"][k]) for k in a.get("trained", {}))


def test_checkpoints_hold_the_running_average_of_the_weights_and_the_trained_ones_beside(tmp_path):
    """``train.ema_decay``: after each step the average moves towards the trained weights by 1 - d, with
    d = min(decay, (1 + n) / (10 + n)) at update n; validation sees the average, the checkpoint's weights
    file holds it (what export and --init read) and its state the trained weights."""
    decay = 0.5
    cfg = micro_config(f"train.ema_decay={decay}", "model.dropout=0.0")
    data = SyntheticData(cfg, 4)
    trainer = Trainer(PretrainTask(cfg, data), cfg, tmp_path, Dist())
    expected = snapshot(trainer.raw["model"])
    stream = BatchStream(data.train, 0, trainer.progress)
    for n in range(1, 5):  # d: 2/11, 3/12, 4/13, then the decay 0.5
        trainer.train_step(stream)
        d = min(decay, (1 + n) / (10 + n))
        trained = snapshot(trainer.raw["model"])
        expected = {k: d * v + (1 - d) * trained[k] if v.is_floating_point() else trained[k]
                    for k, v in expected.items()}
    average = trainer.delivered()["model"]
    assert average is not trainer.raw["model"] and not average.training
    moved = [k for k, v in average.state_dict().items() if not torch.equal(v, trained[k])]
    assert moved and all(torch.allclose(average.state_dict()[k], expected[k], atol=1e-7) for k in expected)
    folder = trainer.save()
    weights, state = load_file(folder / "model.safetensors"), load_state(folder / "state.pt")
    assert all(torch.equal(weights[k], average.state_dict()[k]) for k in weights)
    assert all(torch.equal(state["trained"][k], trained[k]) for k in trained)
    assert state["average_updates"] == 4


def _ddp_rank(rank: int, world: int, port: int, tmp: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from specbert.train.distributed import close_distributed, init_distributed

    cfg = micro_config("train.steps=2", "train.grad_accum=2", "train.adv_weight=0.5")
    data = SyntheticData(cfg, 2, seed=rank)  # every rank sees other batches
    trainer = Trainer(PretrainTask(cfg, data), cfg, f"{tmp}/run", init_distributed("cpu"))
    both = {f"{name}.{k}": v for name, m in trainer.raw.items() for k, v in snapshot(m).items()}
    save_file(both, f"{tmp}/init{rank}.safetensors")
    trainer.fit()
    both = {f"{name}.{k}": v for name, m in trainer.raw.items() for k, v in snapshot(m).items()}
    save_file(both, f"{tmp}/rank{rank}.safetensors")
    close_distributed()


def test_ddp_ranks_hold_identical_weights_after_training(tmp_path):
    """Two gloo ranks, other batches on each, accumulation and the discriminator: same weights after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    init, r0, r1 = (load_file(tmp_path / f"{name}.safetensors") for name in ("init0", "rank0", "rank1"))
    params = [k for k in r0 if "running" not in k and "num_batches" not in k]  # BatchNorm stats: per rank
    assert all(torch.equal(r0[k], r1[k]) for k in params)
    trained = [k for k in params if k.endswith("weight") and ".next_head." not in k]  # next segment: off
    assert not any(torch.equal(init[k], r0[k]) for k in trained)
    assert (tmp_path / "run/checkpoints/step_00000002/model.safetensors").exists()


class SlowSteps(PretrainTask):
    """Each training step takes at least ``seconds`` (a slow machine, in a test's time)."""

    def __init__(self, cfg, data, seconds: float):
        super().__init__(cfg, data)
        self.seconds = seconds

    def losses(self, models, batch):
        time.sleep(self.seconds)
        return super().losses(models, batch)


def test_a_time_budget_ends_the_run_and_spends_the_schedule(tmp_path):
    """train.minutes: the run stops at the first step past the budget, far short of train.steps, saves a
    checkpoint there, and the learning rate has decayed over the budget (cosine towards 0); resumed, it
    takes no further step (``compare`` run again continues only unfinished arms)."""
    cfg = micro_config("train.steps=100000", "train.minutes=0.1", "train.warmup_steps=1",
                       "train.schedule=cosine", "train.checkpoint_every=0")
    trainer = Trainer(SlowSteps(cfg, SyntheticData(cfg, 2), 0.05), cfg, tmp_path, Dist())
    started = time.monotonic()
    assert trainer.fit() is None
    step = trainer.progress.step
    assert 3 <= step <= 121  # 6 s of budget at >= 0.05 s a step
    assert 6.0 <= trainer.progress.seconds <= time.monotonic() - started
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [f"step_{step:08d}"]
    lrs = [r["lr_model"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train"]
    assert lrs[-1] < 0.5 * max(lrs)
    again = Trainer(SlowSteps(cfg, SyntheticData(cfg, 2), 0.05), cfg, tmp_path, Dist())
    assert again.fit(resume=True) is None and again.progress.step == step  # a spent budget stays spent
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [f"step_{step:08d}"]
