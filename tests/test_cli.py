"""The command line, run as a user runs it: subprocesses of the installed `specbert`."""

import subprocess
import sys
from pathlib import Path

import pytest

from specbert.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECBERT = Path(sys.executable).with_name("specbert")


def run(*args, cwd=ROOT):
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_top_level_help_lists_every_subcommand():
    out = run(str(SPECBERT), "--help")
    assert out.returncode == 0, out.stderr
    for name in main.commands:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_subcommand_has_help(name):
    out = run(str(SPECBERT), name, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: specbert " + name in out.stdout
    assert "--config" in out.stdout and "--set" in out.stdout


def test_cli_module_runs_as_a_script(tmp_path):
    out = run(sys.executable, str(ROOT / "cli.py"), "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Commands:" in out.stdout


def test_bad_override_is_a_clear_error():
    out = run(str(SPECBERT), "show-config", "--set", "loader.mask_ratee=0.3")
    assert out.returncode == 2
    assert "loader.mask_ratee" in out.stderr


def test_show_config_reflects_overrides():
    out = run(str(SPECBERT), "show-config", "--config", "tiny", "--set", "loader.mask_rate=0.25")
    assert out.returncode == 0, out.stderr
    assert "mask_rate: 0.25" in out.stdout


def test_model_info_prints_the_parameter_count_and_flops():
    import torch

    from specbert.configs import load_config
    from specbert.model import build_model, count_parameters
    from specbert.model.flops import forward_flops

    out = run(str(SPECBERT), "model-info", "--config", "tiny", "--frames", "64")
    assert out.returncode == 0, out.stderr
    model = build_model(load_config("tiny")).eval()
    assert f"total{count_parameters(model):>25,}" in out.stdout  # column layout of model.describe
    flops = forward_flops(model, torch.rand(1, 2, 1024, 64))  # real compute on CPU vs meta in the CLI
    assert f"{flops / 1e9:.2f} GFLOP per 64-frame crop" in out.stdout
