"""Configuration: defaults, presets, --set overrides and errors that name the bad key."""

import pytest

from specbert.configs import Config, ConfigError, load_config, preset_names, read_yaml


def test_defaults_follow_the_reference_design():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert (cfg.audio.sample_rate, cfg.audio.channels) == (44100, 2)
    assert (cfg.audio.n_fft, cfg.audio.hop, cfg.audio.window) == (2048, 1024, "hann")
    assert (cfg.audio.bins, cfg.audio.model_bins) == (1025, 1024)
    assert cfg.loader.mask_rate == 0.15


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    assert isinstance(load_config(name), Config)


def test_set_overrides_reach_the_typed_config():
    cfg = load_config("tiny", ["loader.mask_rate=0.4", "loader.next_segment=false", "ingest.format=zarr"])
    assert cfg.loader.mask_rate == 0.4 and isinstance(cfg.loader.mask_rate, float)
    assert cfg.loader.next_segment is False
    assert cfg.ingest.format == "zarr"
    assert load_config("tiny").loader.mask_rate == 0.15  # nothing leaks between loads


def test_int_given_for_float_is_converted():
    assert load_config(None, ["loader.mask_rate=1"]).loader.mask_rate == 1.0


@pytest.mark.parametrize("text, value", [("3e-3", 3e-3), ("1E4", 1e4), ("+2e-1", 0.2), ("5.", 5.0)])
def test_exponent_without_a_dot_is_a_number(text, value):
    assert load_config(None, [f"train.lr={text}"]).train.lr == value  # YAML 1.1 reads "3e-3" as a string


@pytest.mark.parametrize(
    "override, named",
    [
        ("loader.mask_ratee=0.3", "loader.mask_ratee"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("loader.mask_rate=abc", "loader.mask_rate"),
        ("loader.crop_frames=1.5", "loader.crop_frames"),
        ("loader.next_segment=maybe", "loader.next_segment"),
        ("ingest.format=parquet", "ingest.format"),
        ("audio.n_fft=1000", "n_fft"),
        ("loader.mask_rate=1.5", "mask_rate"),
    ],
)
def test_bad_key_or_value_names_it(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_malformed_set_is_refused():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["loader.mask_rate"])


def test_yaml_file_with_extends(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("extends: tiny\nloader:\n  mask_rate: 0.25\n")
    cfg = load_config(child)
    assert cfg.loader.mask_rate == 0.25
    assert cfg.loader.crop_frames == read_yaml("tiny")["loader"]["crop_frames"]


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loader: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="nope"):
        load_config("nope")


def test_to_dict_round_trips():
    cfg = load_config("tiny", ["loader.mask_rate=0.2"])
    from specbert.configs import from_dict

    assert from_dict(Config, cfg.to_dict()) == cfg
