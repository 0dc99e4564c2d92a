"""The exported model file: self-contained, checked, never unpickled; ONNX and TorchScript agree with it."""

import os
import pickle
import stat

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from specbert.cli import main
from specbert.configs import Config
from specbert.configs.audio import AudioConfig
from specbert.configs.model import ModelConfig
from specbert.inference.export import (
    ExportError,
    export_onnx,
    export_torchscript,
    load_model,
    read_header,
    save_model_file,
)
from specbert.model import build_model
from specbert.model.weights import FORMAT_VERSION, SEPARATOR
from specbert.train.checkpoint import save_checkpoint

# Attention only at the 128-bin level: the small model keeps relative attention but stays fast.
SMALL = ModelConfig(channels=(2, 4, 4, 4), encoder_blocks=(0, 0, 0, 1), decoder_blocks=(0, 0, 1), num_heads=4,
                    expansion=2, max_distance=64)


def small_config() -> Config:
    cfg = Config()
    cfg.model = SMALL
    return cfg


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    return model, save_model_file(model, small_config(), path)


def test_header_carries_config_stft_rate_version_and_hash(model_file):
    _, path = model_file
    header = read_header(path)
    assert header["format"] == SEPARATOR and header["version"] == str(FORMAT_VERSION)
    assert header["audio"] == {"sample_rate": 44100, "channels": 2, "n_fft": 2048, "hop": 1024,
                               "window": "hann"}
    assert header["config"]["model"]["channels"] == [2, 4, 4, 4]
    assert len(header["sha256"]) == 64 and header["specbert"]


def test_load_gives_the_same_model_without_unpickling(model_file, monkeypatch):
    model, path = model_file

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model file must not unpickle anything")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded, config = load_model(path)
    assert config == small_config()
    x = torch.rand(1, 2, 1024, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)


def test_a_changed_weight_fails_the_hash(model_file, tmp_path):
    _, path = model_file
    with safe_open(str(path), "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = f.metadata()
    tensors["mask_head.proj.bias"] = tensors["mask_head.proj.bias"] + 1.0
    save_file(tensors, str(tmp_path / "tampered.safetensors"), metadata=metadata)
    with pytest.raises(ExportError, match="sha256"):
        load_model(tmp_path / "tampered.safetensors")


def test_other_files_are_refused_with_a_clear_message(tmp_path):
    (tmp_path / "state.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ExportError, match="not a safetensors file"):
        load_model(tmp_path / "state.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ExportError, match="not a specbert separation model"):
        load_model(tmp_path / "plain.safetensors")


def test_export_command_turns_a_trainer_checkpoint_into_a_model_file(tmp_path):
    torch.manual_seed(1)
    model = build_model(small_config())
    umask = os.umask(0o022)
    try:
        checkpoint = save_checkpoint(tmp_path / "run" / "checkpoints", 100, {"model": model}, {"step": 100},
                                     {"config": small_config().to_dict()}, keep_last=2)
        out = CliRunner().invoke(main, ["export", str(tmp_path / "run"), str(tmp_path / "m.safetensors"),
                                        "--set", "model.sdpa=false"])
    finally:
        os.umask(umask)
    assert out.exit_code == 0, out.output
    for file in (checkpoint / "model.safetensors", tmp_path / "m.safetensors"):  # not safetensors' own 0600
        assert stat.S_IMODE(file.stat().st_mode) == 0o644
    loaded, config = load_model(tmp_path / "m.safetensors")
    assert config.model.sdpa is False  # --set merged over the checkpoint's config
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_export_command_explains_a_missing_checkpoint(tmp_path):
    out = CliRunner().invoke(main, ["export", str(tmp_path), str(tmp_path / "m.safetensors")])
    assert out.exit_code == 1 and "no checkpoint" in out.output


def test_torchscript_gives_the_same_mask(model_file, tmp_path):
    model, _ = model_file
    path = export_torchscript(model, AudioConfig(), tmp_path / "mask.torchscript.pt", frames=16)
    scripted = torch.jit.load(str(path))
    x = torch.rand(2, 2, 1024, 23)  # another batch size and length than traced
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x)[0], rtol=1e-5, atol=1e-5)


def test_onnx_gives_the_same_mask(model_file, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _ = model_file
    path = export_onnx(model, AudioConfig(), tmp_path / "mask.onnx", frames=16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 2, 1024, 23)
    with torch.no_grad():
        expected = model(x)[0].numpy()
    (got,) = session.run(["mask"], {"magnitude": x.numpy()})
    assert got.shape == (2, 2, 1024, 23)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
