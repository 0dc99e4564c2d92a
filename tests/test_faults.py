"""Faults that must never lose work: a full drive, a signal to the whole process group, a manifest
without a validation split, one corrupt sample in a shard, bad input given to a command.

Real components throughout: a full drive is a small tmpfs (mounted in a user and mount namespace with
``unshare``) or a file-size limit (``RLIMIT_FSIZE``) in a subprocess; signals go to real process groups;
corrupt files are real bytes flipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from specbert.configs import load_config
from specbert.inference.export import ExportError, load_model, save_model_file
from specbert.model import build_model
from specbert.model.weights import digest
from specbert.pipeline.example_library import write_example_library
from specbert.pipeline.ingest import ingest_library
from specbert.pipeline.manifest import ManifestWriter, read_manifest
from specbert.pipeline.scan import HIDDEN, identify, scan_library
from specbert.pipeline.shards import iter_shard
from specbert.pipeline.stages import Skips, decode_samples, read_shards
from specbert.pipeline.tasks import ShardJob, write_shard
from specbert.train.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from specbert.train.distributed import init_distributed
from specbert.train.finetune import load_init
from specbert.train.pretrain import PretrainTask, SyntheticData
from specbert.train.trainer import Trainer

SPECBERT = str(Path(sys.executable).with_name("specbert"))
INGEST = ["--config", "tiny", "--set", "loader.crop_frames=32", "--set", "ingest.segment_frames=64", "--set",
          "ingest.reserve_bytes=0", "--set", "ingest.shard_bytes=1", "--workers", "1", "--no-progress"]
# the tiny model on short crops and small batches: CPU steps of a fraction of a second
TRAIN = ["loader.crop_frames=32", "loader.token_frames=8", "loader.shuffle_buffer=4", "train.batch_size=2",
         "train.warmup_steps=1", "train.log_every=1"]


def specbert(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run([SPECBERT, *map(str, args)], capture_output=True, text=True, timeout=300, env=env,
                          **kwargs)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed with one error line, the last on stderr (no traceback); return it."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("Error: "), result.stderr
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], result.stderr
    return lines[-1]


def can_unshare(*flags: str) -> bool:
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """6 songs of 6 s (~258 frames), by 3 artists."""
    root = tmp_path_factory.mktemp("faults") / "library"
    write_example_library(root, seed=3, artists=3, albums_per_artist=1, songs_per_album=2, seconds=6.0,
                          formats=("flac", "wav"))
    return root


@pytest.fixture(scope="module")
def train_only(library, tmp_path_factory) -> Path:
    """A manifest of 6 one-track train shards and no validation split (ingest.val_fraction=0)."""
    cfg = load_config("tiny", ["ingest.workers=1", "ingest.shard_bytes=1", "ingest.val_fraction=0",
                               "ingest.segment_frames=64", "ingest.reserve_bytes=0", "loader.crop_frames=32"])
    out = tmp_path_factory.mktemp("train-only")
    return ingest_library([library], [out], cfg, progress=False, log=lambda _: None).manifest


def pretrain_args(manifest: Path, run_dir: Path, steps: int, *sets: str) -> list[str]:
    args = ["pretrain", "--config", "tiny", "--manifest", manifest, "--run-dir", run_dir, "--steps", steps,
            "--device", "cpu"]
    for setting in TRAIN + list(sets):
        args += ["--set", setting]
    return args


def records(run_dir: Path, split: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["split"] == split]


# 1. A full drive never tears the manifest.

FILL_UP = textwrap.dedent("""
    import json, resource, signal, sys
    from specbert.pipeline.manifest import ManifestWriter

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    writer = ManifestWriter(sys.argv[1], {"type": "config", "dataset": "0123abcd"})
    limit = int(sys.argv[2])
    returned = []
    for i in range(3):  # the drive fills up, then some room comes back (a partial shard deleted)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit * (i + 1), resource.RLIM_INFINITY))
        while True:
            entry = {"type": "batch", "shards": [], "tracks": [{"path": f"/music/{len(returned)}.flac",
                                                                "status": "ok", "pad": "x" * 300}]}
            try:
                writer.append(entry)
            except Exception as err:  # noqa: BLE001
                print(type(err).__name__, err, file=sys.stderr)
                break
            returned.append(entry["tracks"][0]["path"])
    print(json.dumps(returned))
""")


def test_a_full_drive_leaves_every_returned_manifest_line_readable(tmp_path):
    """Appends under a file-size limit that is reached, then raised twice: each append that returned is
    in the manifest, the ones that failed are not, and the manifest reads without error."""
    path = tmp_path / "manifest.jsonl"
    run = subprocess.run([sys.executable, "-c", FILL_UP, str(path), "2000"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    returned = json.loads(run.stdout)
    assert len(returned) >= 10 and run.stderr.count("cannot append to the manifest") == 3, run.stderr
    assert path.read_bytes().endswith(b"\n")
    assert [t["path"] for t in read_manifest(path).tracks()] == returned


def test_a_torn_last_line_is_ignored_with_a_warning_and_the_next_line_starts_fresh(tmp_path):
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path, {"type": "config", "dataset": "0123abcd"}) as writer:
        writer.append({"type": "batch", "shards": [], "tracks": [{"path": "/a.flac", "status": "ok"}]})
    with open(path, "ab") as f:
        f.write(b'{"type": "batch", "shards": [], "tra')  # a writer killed mid-line
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert [t["path"] for t in read_manifest(path).tracks()] == ["/a.flac"]
    with pytest.warns(RuntimeWarning, match="torn last line"), ManifestWriter(path, {}) as writer:
        writer.append({"type": "batch", "shards": [], "tracks": [{"path": "/b.flac", "status": "ok"}]})
    assert [t["path"] for t in read_manifest(path).tracks()] == ["/a.flac", "/b.flac"]


@pytest.mark.skipif(not can_unshare("-rm"), reason="needs user namespaces (unshare -rm) to mount a tmpfs")
def test_ingest_onto_a_full_manifest_drive_stops_in_one_line_and_the_rerun_finishes(library, tmp_path):
    """``--out SMALL --out BIG --out FULL``: SMALL, which holds the manifest, is a 4 KB tmpfs, FULL a full
    one. The shards go to BIG (SMALL never has room for one); the manifest fills SMALL up after a few
    tracks: the run stops with a one-line error, what the manifest holds is readable, and a rerun on a
    larger SMALL finishes the job without losing anything recorded before, and says FULL was not used."""
    small, big, full = tmp_path / "small", tmp_path / "big", tmp_path / "full"
    small.mkdir(), full.mkdir()
    outs = f"--out {small} --out {big} --out {full} {' '.join(INGEST)}"
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=4k tmpfs {small}
        mount -t tmpfs -o size=4k tmpfs {full}
        dd if=/dev/zero of={full}/filler bs=4k count=1 2>/dev/null
        {SPECBERT} ingest {library} {outs} >{tmp_path}/1.out 2>{tmp_path}/1.err
        echo $? >{tmp_path}/1.rc
        cp {small}/manifest.jsonl {tmp_path}/after-fault.jsonl
        mount -o remount,size=1m {small}
        {SPECBERT} ingest {library} {outs} >{tmp_path}/2.out 2>{tmp_path}/2.err
        echo $? >{tmp_path}/2.rc
        cp {small}/manifest.jsonl {tmp_path}/final.jsonl
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, timeout=600, env=env)
    first = subprocess.CompletedProcess([], int((tmp_path / "1.rc").read_text()),
                                        (tmp_path / "1.out").read_text(), (tmp_path / "1.err").read_text())
    error = one_line_error(first)
    assert f"{small}/manifest.jsonl: cannot append to the manifest: No space left on device" in error
    assert (tmp_path / "after-fault.jsonl").read_bytes().endswith(b"\n")
    recorded = read_manifest(tmp_path / "after-fault.jsonl")
    assert 1 <= len(recorded.tracks()) < 6
    assert (tmp_path / "2.rc").read_text().strip() == "0", (tmp_path / "2.err").read_text()
    unused = f"output folder not used: {full} (0.00 GB free, under the reserve)"
    assert unused in (tmp_path / "2.out").read_text()
    final = read_manifest(tmp_path / "final.jsonl")
    assert sorted(t["status"] for t in final.tracks()) == ["ok"] * 6
    assert {s["path"] for s in recorded.shards()} <= {s["path"] for s in final.shards()}
    for shard in final.shards():  # every shard recorded, before and after the fault, is on BIG and reads
        assert Path(shard["path"]).parent == big and len(list(iter_shard(shard["path"]))) == shard["samples"]


def test_no_room_on_any_folder_is_a_result_not_an_exception(library, tmp_path):
    """A task whose shard fits nowhere returns its tracks failed with the reason (an exception would
    be retried by Dask, for nothing)."""
    cfg = load_config("tiny", ["ingest.reserve_bytes=1000000000000000", "loader.crop_frames=32",
                               "ingest.segment_frames=64"])
    items = [{**identify(item), "split": "train"} for item in scan_library([library])[0][:2]]
    job = ShardJob("train-000000-0123abcd.tar", "train", tuple(items), (str(tmp_path),), 10**6)
    result = write_shard(job, cfg)
    assert result["shard"] is None and result["full"] == [str(tmp_path)] and list(tmp_path.iterdir()) == []
    assert [t["status"] for t in result["tracks"]] == ["failed", "failed"]
    assert all("no output folder has room" in t["reason"] for t in result["tracks"])


# 2. A signal to the process group saves a checkpoint.

def test_sigterm_to_the_process_group_saves_a_checkpoint(train_only, tmp_path):
    """What Slurm, Kubernetes and ``timeout`` do: SIGTERM to every process of the job, loader workers
    included. The workers ignore it; the main process saves and exits 143."""
    run_dir = tmp_path / "run"
    args = pretrain_args(train_only, run_dir, 1000, "train.num_workers=2", "train.val_every=0",
                         "train.preview_every=0", "train.checkpoint_every=0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    job = subprocess.Popen([SPECBERT, *map(str, args)], start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not records(run_dir, "train"):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        os.killpg(job.pid, signal.SIGTERM)  # the group: setsid made the job its leader
        out, err = job.communicate(timeout=120)  # and the job exits: its workers too
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "killed by signal" not in err and "checkpoint saved" in out
    step = records(run_dir, "train")[-1]["step"]
    assert (run_dir / f"checkpoints/step_{step:08d}/model.safetensors").is_file()


# 3. A manifest without a validation split trains without validation, decided before step 1.

def test_pretraining_without_a_validation_split_warns_and_trains_to_the_end(train_only, tmp_path):
    run_dir = tmp_path / "run"
    result = specbert(*pretrain_args(train_only, run_dir, 4, "train.num_workers=1", "train.val_every=2",
                                     "train.preview_every=2", "train.checkpoint_every=2"))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if line.startswith("warning:"))
    assert "no spectrogram shards in split 'validation'" in warning and "without validation" in warning
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2, 3, 4] and not records(run_dir, "val")
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002",
                                                                               "step_00000004"]


class BrokenValidation(SyntheticData):
    """Validation batches whose reading fails (e.g. a validation shard that went bad mid-run)."""

    def val(self):
        def batches():
            raise RuntimeError("the validation shards cannot be read")
            yield

        return batches()


def test_a_checkpoint_due_at_a_step_is_saved_before_validation_runs(tmp_path, one_thread):
    cfg = load_config("tiny", ["train.steps=4", "train.val_every=2", "train.checkpoint_every=2",
                               "train.preview_every=0", "train.batch_size=2", "loader.crop_frames=32",
                               "train.warmup_steps=1"])
    trainer = Trainer(PretrainTask(cfg, BrokenValidation(cfg, 2)), cfg, tmp_path, init_distributed("cpu"))
    with pytest.raises(RuntimeError, match="validation shards cannot be read"):
        trainer.fit()
    assert (tmp_path / "checkpoints/step_00000002/model.safetensors").is_file()


# 4. One corrupt zarr sample costs that sample only.

def test_a_corrupt_zarr_chunk_costs_its_sample_only(library, tmp_path):
    cfg = load_config("tiny", ["ingest.format=zarr", "ingest.segment_frames=64", "loader.crop_frames=32",
                               "ingest.reserve_bytes=0"])
    items = [{**identify(item), "split": "train"} for item in scan_library([library])[0][:1]]
    shard = write_shard(ShardJob("train-000000-0123abcd.zarr", "train", tuple(items), (str(tmp_path),), 1),
                        cfg)["shard"]
    assert shard["samples"] >= 4
    keys = sorted(p.name for p in Path(shard["path"]).iterdir() if p.is_dir())
    chunk = Path(shard["path"]) / keys[1] / "spec" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    middle = slice(len(data) // 3, len(data) // 3 + 16)  # compressed bytes: only the checksum can tell
    data[middle] = bytes(b ^ 0xFF for b in data[middle])
    chunk.write_bytes(bytes(data))
    skips = Skips()
    with pytest.warns(RuntimeWarning, match=f"{keys[1]}: ValueError: .*crc32c checksum mismatch"):
        samples = list(decode_samples(read_shards([shard], skips), skips))
    assert [s["key"] for s in samples] == keys[:1] + keys[2:]
    assert skips.counts["bad_shards"] == 0 and skips.counts["bad_samples"] == 1


# 5. One loader for model files checks format, version and a digest that covers the stored configuration.

def rewrite(path: Path, out: Path, edit) -> Path:
    """``path``'s tensors and header, ``edit(metadata)`` applied, written to ``out`` (its sha256 kept)."""
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {name: f.get_tensor(name) for name in f.keys()}, f.metadata()
    edit(metadata)
    save_file(tensors, str(out), metadata=metadata)
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    cfg = load_config("tiny")
    return save_model_file(build_model(cfg), cfg, tmp_path_factory.mktemp("model") / "model.safetensors")


def test_finetune_init_refuses_a_model_file_with_flipped_bytes(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    middle = len(data) // 2  # tensor data: the header is at the start
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    result = specbert("finetune", "--config", "tiny", "--manifest", model_file, "--run-dir", tmp_path / "run",
                      "--init", tmp_path / "flipped.safetensors", "--device", "cpu")
    error = one_line_error(result)
    assert "flipped.safetensors: the weights or the stored configuration do not match" in error
    assert not (tmp_path / "run" / "init.json").exists()


def test_every_reader_refuses_an_edited_header_or_another_version(model_file, tmp_path):
    def hop(metadata):
        metadata["audio"] = metadata["audio"].replace('"hop": 1024', '"hop": 512')
        metadata["config"] = metadata["config"].replace('"hop": 1024', '"hop": 512')

    def version(metadata):
        metadata["version"] = "99"

    edited = rewrite(model_file, tmp_path / "hop.safetensors", hop)
    future = rewrite(model_file, tmp_path / "future.safetensors", version)
    for path, cause in ((edited, "do not match the file's sha256"), (future, "model file version 99")):
        with pytest.raises(ExportError, match=cause):
            load_model(path)  # separate, evaluate, the Python API
        with pytest.raises(ExportError, match=cause):
            load_init(build_model(load_config("tiny")), path)  # finetune --init


def test_model_files_of_version_1_still_load_their_tensor_digest_checked(model_file, tmp_path):
    """Version 1 (before the digest covered the header) digested the tensors alone."""
    with safe_open(str(model_file), "pt") as f:
        tensors, metadata = {name: f.get_tensor(name) for name in f.keys()}, f.metadata()
    v1 = {**metadata, "version": "1", "sha256": digest(tensors, None)}
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=v1)
    assert load_model(tmp_path / "v1.safetensors")[1] == load_config("tiny")
    tensors["mask_head.proj.bias"] += 1
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=v1)
    with pytest.raises(ExportError, match="sha256"):
        load_model(tmp_path / "v1.safetensors")


def test_resume_refuses_checkpoint_weights_with_flipped_bytes(tmp_path):
    cfg = load_config("tiny")
    checkpoint = save_checkpoint(tmp_path / "checkpoints", 1, {"model": build_model(cfg)}, {}, {}, 2)
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-84] = bytes(b ^ 0xFF for b in data[-100:-84])
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the file's sha256"):
        load_checkpoint(checkpoint, {"model": build_model(cfg)})


# 6. One-line errors naming the file and the cause.

def test_unreadable_checkpoint_states_are_refused_in_one_line_without_unsafe_advice(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: unreadable \("):
        load_state(empty)
    hostile = tmp_path / "hostile.pt"
    torch.save({"step": 3, "hook": print}, hostile)  # a pickled global: weights-only loading refuses it
    with pytest.raises(CheckpointError) as refused:
        load_state(hostile)
    message = str(refused.value)
    assert "hostile.pt: refused" in message and "Unsupported global: GLOBAL print" in message
    assert "weights_only=False" not in message and "\n" not in message


def test_a_corrupt_model_file_in_a_checkpoint_is_a_one_line_error_for_export_and_resume(train_only, tmp_path):
    cfg = load_config("tiny")
    checkpoint = save_checkpoint(tmp_path / "run/checkpoints", 3, {"model": build_model(cfg)}, {},
                                 {"config": cfg.to_dict()}, 2)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short
    error = one_line_error(specbert("export", tmp_path / "run", tmp_path / "model.safetensors"))
    assert str(weights) in error
    resumed = specbert(*pretrain_args(train_only, tmp_path / "run", 4), "--resume")
    assert str(weights) in one_line_error(resumed)


@pytest.mark.parametrize("content", [b"", b"not json\n"])
def test_pretrain_and_inspect_on_an_unusable_manifest_fail_in_one_line(tmp_path, content):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(content)
    for args in (("inspect", manifest), pretrain_args(manifest, tmp_path / "run", 2)):
        error = one_line_error(specbert(*args))
        assert str(manifest) in error and ("not a specbert manifest" in error or "not JSON" in error), error


def test_pretrain_on_a_stems_manifest_fails_in_one_line_before_training(tmp_path):
    with ManifestWriter(tmp_path / "manifest.jsonl", {"type": "config", "dataset": "0123abcd",
                                                      "kind": "stems"}):
        pass
    error = one_line_error(specbert(*pretrain_args(tmp_path / "manifest.jsonl", tmp_path / "run", 2)))
    assert "a stems manifest" in error and "specbert ingest" in error
    assert not (tmp_path / "run/checkpoints").exists()


def test_a_missing_device_and_bad_example_options_are_usage_errors(tmp_path):
    (tmp_path / "some file").write_bytes(b"")
    if not torch.cuda.is_available():  # the training commands refuse it as separate does
        for args in (("pretrain", "--manifest", tmp_path / "some file", "--run-dir", tmp_path / "run"),
                     ("separate", tmp_path / "some file", tmp_path / "some file")):
            result = specbert(*args, "--device", "cuda")
            assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
            assert "device 'cuda': no CUDA device here" in result.stderr
    result = specbert("example", tmp_path / "ex", "--seconds", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--seconds" in result.stderr


def test_an_unreachable_scheduler_is_a_one_line_error(library, tmp_path):
    result = specbert("ingest", library, "--out", tmp_path / "out", *INGEST, "--scheduler", "tcp://127.0.0.1:9",
                      env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:9" in one_line_error(result)


# 7. Nothing is left out silently.

def test_hidden_files_and_unreadable_folders_are_counted_and_named(library, tmp_path):
    lib = tmp_path / "lib"
    (lib / "locked").mkdir(parents=True)
    song = next(library.rglob("*.flac")).read_bytes()
    (lib / "song.flac").write_bytes(song)
    (lib / ".hidden.flac").write_bytes(song)
    (lib / "locked" / "song.flac").write_bytes(b"x")
    (lib / "notes.txt").write_text("liner notes")
    os.chmod(lib / "locked", 0)
    # without capabilities over files (as root: an unmapped user namespace), as a user would scan it
    prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
    code = ("import json, sys; from specbert.pipeline.scan import scan_library; "
            "print(json.dumps(scan_library(sys.argv[1:])))")
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", code, str(lib)], capture_output=True, text=True,
                             check=True)
    finally:
        os.chmod(lib / "locked", 0o755)
    items, left_out = json.loads(out.stdout)
    assert [item["path"] for item in items] == [str(lib / "song.flac")]
    assert left_out == {"non-audio files ignored": [str(lib / "notes.txt")],
                        HIDDEN: [str(lib / ".hidden.flac")],
                        "unreadable folder (Permission denied)": [str(lib / "locked")]}



def test_separate_on_a_folder_without_audio_says_so_and_fails(model_file, tmp_path):
    (tmp_path / "empty").mkdir()
    result = specbert("separate", model_file, tmp_path / "empty", "-o", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 1
    assert f"failed: {tmp_path / 'empty'}: no audio files in this folder" in result.stderr


def test_unfinished_checkpoints_are_removed_and_resume_says_where_it_continues(tmp_path, capsys, one_thread):
    def train(steps: int, resume: bool):
        cfg = load_config("tiny", [f"train.steps={steps}", "train.checkpoint_every=1", "train.val_every=0",
                                   "train.preview_every=0", "train.batch_size=2", "loader.crop_frames=32",
                                   "train.warmup_steps=1"])
        Trainer(PretrainTask(cfg, SyntheticData(cfg, 2)), cfg, tmp_path, init_distributed("cpu")).fit(resume)

    train(2, False)
    killed = subprocess.Popen(["true"])
    killed.wait()  # a pid that no longer runs: the writer of the folder below was killed
    leftover = tmp_path / "checkpoints" / f".tmp-step_00000003-{killed.pid}"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(bytes(1000))
    capsys.readouterr()
    train(3, True)
    out = capsys.readouterr().out
    assert not leftover.exists()
    assert f"removed 1 unfinished checkpoint folders of a killed run: {leftover.name}" in out
    assert "checkpoints/step_00000002: 2 of 3 steps done, continuing with step 3" in out
