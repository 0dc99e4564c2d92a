"""Streamed separation: exact streaming stages, no seams between chunks, any input, flat memory."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from specbert.cli import main
from specbert.configs import Config
from specbert.configs.audio import AudioConfig
from specbert.configs.model import ModelConfig
from specbert.inference.export import save_model_file
from specbert.inference.separate import ChunkedMasker, Separator, apply_mask
from specbert.model import build_model
from specbert.pipeline.audio import decode, resample, to_channels
from specbert.pipeline.example_library import render_song
from specbert.pipeline.spectral import StreamingISTFT, StreamingSTFT, istft, stft
from specbert.train.checkpoint import save_checkpoint

AUDIO = AudioConfig()
# Frame convolutions only: frames never mix, so the output cannot depend on the chunking at all.
LOCAL = ModelConfig(channels=(4, 8), encoder_blocks=(0, 0), decoder_blocks=(0,), num_heads=4, expansion=2)
# Smallest model there is: for the long files of the memory test.
MINIMAL = ModelConfig(channels=(2,), encoder_blocks=(0,), decoder_blocks=(), num_heads=4)


def config(model_cfg: ModelConfig) -> Config:
    cfg = Config()
    cfg.model = model_cfg
    cfg.loader.crop_frames = 64  # the default chunk: many chunks even in short tests
    return cfg


def write_model(path, model_cfg=LOCAL, ones=False):
    """Export a real model with random weights; ``ones``: its mask is 1 everywhere (sigmoid(30))."""
    torch.manual_seed(0)
    model = build_model(config(model_cfg))
    if ones:
        with torch.no_grad():
            model.mask_head.proj.weight.zero_()
            model.mask_head.proj.bias.fill_(30.0)
    return save_model_file(model, config(model_cfg), path)


def snr(reference, estimate):
    return 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - estimate) ** 2))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"local": write_model(root / "local.safetensors"),
            "ones": write_model(root / "ones.safetensors", ones=True)}


@pytest.fixture(scope="module")
def song():
    return render_song(3, seconds=8.0)["mixture"]


@pytest.mark.parametrize("block", [1000, 1024, 4097, 1 << 16])
def test_streaming_stft_and_istft_equal_the_whole_signal(block):
    wave = np.random.default_rng(0).standard_normal((2, 44100 * 2 + 333)).astype(np.float32)
    analysis = StreamingSTFT(AUDIO, 2)
    pieces = [analysis.push(wave[:, i : i + block]) for i in range(0, wave.shape[1], block)]
    spec = np.concatenate([*pieces, analysis.finish()], axis=2)
    np.testing.assert_array_equal(spec, stft(wave, AUDIO))
    synthesis = StreamingISTFT(AUDIO, 2)
    step = block // 700 + 1  # frames per push
    pieces = [synthesis.push(spec[:, :, i : i + step]) for i in range(0, spec.shape[2], step)]
    out = np.concatenate([*pieces, synthesis.finish(wave.shape[1])], axis=1)
    np.testing.assert_allclose(out, istft(spec, wave.shape[1], AUDIO), atol=1e-4)
    assert snr(wave, out) > 100


@pytest.mark.parametrize("chunk, overlap, shifts, batch, push",
                         [(16, 0, 1, 1, 7), (16, 5, 2, 3, 40), (50, 49, 2, 2, 1), (300, 10, 1, 1, 64),
                          (16, 4, 3, 2, 9), (20, 0, 5, 4, 33)])
def test_chunked_masker_cross_fades_to_exactly_a_frame_local_network(chunk, overlap, shifts, batch, push):
    x = np.random.default_rng(1).random((2, 8, 203), dtype=np.float32)
    masker = ChunkedMasker(lambda b: b**2, chunk, overlap, shifts, batch)
    assert len(masker.starts) == min(shifts, chunk - overlap)
    pieces = [masker.push(x[:, :, i : i + push]) for i in range(0, x.shape[2], push)]
    out = np.concatenate([*pieces, masker.finish()], axis=2)
    np.testing.assert_allclose(out, x**2, rtol=1e-5)


def test_a_mask_of_ones_returns_the_mixture(models, song):
    stems = Separator(models["ones"], tta=True).separate(song, 44100)
    assert stems["instrumental"].shape == song.shape
    assert snr(song, stems["instrumental"]) > 60
    assert np.abs(stems["vocals"]).max() < 1e-4


def test_chunk_sizes_do_not_change_the_output(models, song):
    a = Separator(models["local"], chunk_frames=64, overlap=16).separate(song, 44100)
    b = Separator(models["local"], chunk_frames=100, overlap=7, tta=True, batch_size=3).separate(song, 44100)
    assert np.abs(a["vocals"]).max() > 0.05  # a real, non-trivial mask
    for stem in a:
        np.testing.assert_allclose(a[stem], b[stem], atol=1e-5)
    np.testing.assert_allclose(a["instrumental"] + a["vocals"], song, atol=1e-5)


@pytest.mark.parametrize("channels, rate", [(1, 44100), (2, 48000), (6, 44100)])
def test_any_rate_and_channel_count(models, song, tmp_path, channels, rate):
    wave = resample(song, 44100, rate)
    if channels == 1:
        wave = wave.mean(axis=0, keepdims=True)
    elif channels == 6:
        wave = np.concatenate([wave, wave[::-1] * 0.5, wave * 0.25])
    sf.write(tmp_path / "in.wav", wave.T, rate, subtype="FLOAT")
    paths = Separator(models["ones"]).separate_file(tmp_path / "in.wav", tmp_path, bits="float")
    out, out_rate = sf.read(paths["instrumental"], dtype="float32", always_2d=True)
    assert out_rate == rate and out.shape == (wave.shape[1], 1 if channels == 1 else 2)
    expected = resample(resample(to_channels(wave, 2), rate, 44100), 44100, rate)
    expected = expected.mean(axis=0, keepdims=True) if channels == 1 else expected
    assert snr(expected, out.T) > 60


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_m4a_is_streamed_through_ffmpeg(models, song, tmp_path):
    pcm = (np.clip(song, -1, 1) * 32767).astype("<i2").T.tobytes()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "s16le", "-ar", "44100", "-ac", "2", "-i", "pipe:0",
                    "-c:a", "aac", str(tmp_path / "in.m4a")], input=pcm, check=True)
    decoded, _ = decode(tmp_path / "in.m4a")
    stems = Separator(models["ones"]).separate(tmp_path / "in.m4a")
    assert snr(decoded, stems["instrumental"]) > 60


def test_clipping_is_avoided_by_rescaling_or_clamping(models, song, tmp_path):
    loud = song / np.abs(song).max() * 2.0
    sf.write(tmp_path / "loud.wav", loud.T, 44100, subtype="FLOAT")
    separator = Separator(models["local"])
    rescaled = separator.separate_file(tmp_path / "loud.wav", tmp_path / "rescale", clip="rescale")
    clamped = separator.separate_file(tmp_path / "loud.wav", tmp_path / "clamp", clip="clamp")
    stems = separator.separate(loud, 44100)
    gain = 1 / max(np.abs(x).max() for x in stems.values())
    for stem, path in rescaled.items():
        out, _ = sf.read(path, dtype="float32", always_2d=True)
        assert snr(stems[stem] * gain, out.T) > 35  # one gain for both stems, 16-bit quantisation
    out, _ = sf.read(clamped["instrumental"], dtype="float32", always_2d=True)
    np.testing.assert_allclose(out.T, np.clip(stems["instrumental"], -1, 1), atol=1 / 16384)


def test_export_then_separate_from_the_command_line(song, tmp_path):
    torch.manual_seed(0)
    model = build_model(config(LOCAL))
    meta = {"config": config(LOCAL).to_dict()}
    save_checkpoint(tmp_path / "run" / "checkpoints", 10, {"model": model}, {}, meta, keep_last=1)
    (tmp_path / "music" / "album").mkdir(parents=True)
    sf.write(tmp_path / "music" / "album" / "a song.flac", song.T, 44100)
    sf.write(tmp_path / "music" / "b.wav", song[:, :30000].T, 44100)
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(tmp_path / "run"), str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["separate", str(tmp_path / "m.safetensors"), str(tmp_path / "music"),
                                  "-o", str(tmp_path / "out"), "--stems", "vocals", "--format", "flac",
                                  "--bits", "24", "--chunk-frames", "48", "--tta", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert written == ["album", "album/a song_vocals.flac", "b_vocals.flac"]
    info = sf.info(tmp_path / "out" / "album" / "a song_vocals.flac")
    assert (info.frames, info.samplerate, info.subtype) == (song.shape[1], 44100, "PCM_24")
    expected = Separator(tmp_path / "m.safetensors", chunk_frames=48, tta=True).separate(song, 44100)
    out, _ = sf.read(tmp_path / "out" / "album" / "a song_vocals.flac", dtype="float32")
    assert snr(expected["vocals"], out.T) > 60


# VmHWM: the probe's own peak (ru_maxrss would keep pytest's resident set at the fork, hiding growth).
MEMORY_PROBE = textwrap.dedent("""
    import sys
    from specbert.inference.separate import Separator
    Separator(sys.argv[1]).separate_file(sys.argv[2], sys.argv[3])
    print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
""")


def test_peak_memory_does_not_grow_with_the_length(tmp_path):
    model = write_model(tmp_path / "m.safetensors", MINIMAL)
    peaks = {}
    for seconds in (30, 180):
        path = tmp_path / f"{seconds}.wav"
        with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as f:
            for _ in range(seconds // 10):
                f.write(0.1 * np.random.default_rng(seconds).standard_normal((441000, 2)))
        probe = [sys.executable, "-c", MEMORY_PROBE, str(model), str(path), str(tmp_path / "out")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only contend on a busy machine
        out = subprocess.run(probe, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr
        peaks[seconds] = int(out.stdout.split()[-1]) / 1024  # MB (VmHWM is in kB)
    # Holding the 3-minute file whole would take 64 MB for the samples and 127 MB for the spectrogram.
    assert peaks[180] - peaks[30] < 40, peaks


# The Python API loads what separation needs, never the loaders', the ingest's or the trainer's libraries.
IMPORT_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    import specbert
    specbert.Separator(sys.argv[1]).separate(np.zeros((2, 22050), np.float32), 44100)
    heavy = ("webdataset", "dask", "distributed", "tensorboard", "torch.utils.tensorboard")
    print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(heavy)))
""")


def test_the_separator_loads_none_of_the_training_libraries(models, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(models["local"])], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "[]", out.stdout


SPECBERT = str(Path(sys.executable).with_name("specbert"))


def specbert(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([SPECBERT, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def outputs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_same_names_never_collide_and_the_output_folder_is_never_an_input(models, song, tmp_path):
    music = tmp_path / "music"
    for name in ("a/song.flac", "b/song.flac", "song.flac", "song.wav"):
        (music / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(music / name, song[:, :20000].T, 44100)
    files = [music / "a/song.flac", music / "b/song.flac", music / "song.flac", music / "song.wav"]
    out = music / "separated"  # inside the input folder
    first = specbert("separate", models["local"], *files, "-o", out, "--stems", "vocals", "-d", "cpu")
    assert first.returncode == 0, first.stderr
    assert outputs(out) == ["a/song.flac_vocals.wav", "b/song.flac_vocals.wav", "song.flac_vocals.wav",
                            "song.wav_vocals.wav"]
    again = specbert("separate", models["local"], music, "-o", out, "--stems", "vocals", "-d", "cpu",
                     "--skip-existing", "--filename", "{track}/{model}-{stem}.{ext}")
    assert again.returncode == 0, again.stderr
    assert outputs(out) == [  # the first run's outputs were not taken as inputs
        "a/song.flac_vocals.wav", "a/song/local-vocals.wav", "b/song.flac_vocals.wav",
        "b/song/local-vocals.wav", "song.flac/local-vocals.wav", "song.flac_vocals.wav",
        "song.wav/local-vocals.wav", "song.wav_vocals.wav"]
    before = {p: (out / p).stat().st_mtime_ns for p in outputs(out)}
    skip = specbert("separate", models["local"], *files, "-o", out, "--stems", "vocals", "-d", "cpu",
                    "--skip-existing")
    assert skip.returncode == 0 and "skipped 4 inputs whose outputs exist" in skip.stderr
    assert {p: (out / p).stat().st_mtime_ns for p in outputs(out)} == before
    clash = specbert("separate", models["local"], *files[:2], "-o", tmp_path / "x", "--filename",
                     "{stem}.{ext}")
    assert clash.returncode != 0 and "the same output" in clash.stderr and "{track}" in clash.stderr
    assert len(clash.stderr.strip().splitlines()) == 1


def test_mp3_output_with_a_bitrate_and_24_bit_and_float_kept(models, song, tmp_path):
    sf.write(tmp_path / "song.wav", song.T, 44100)
    run = specbert("separate", models["ones"], tmp_path / "song.wav", "-o", tmp_path / "mp3", "--mp3",
                   "--mp3-bitrate", "128", "-q")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                            "stream=codec_name,sample_rate,bit_rate", "-of", "csv=p=0",
                            str(tmp_path / "mp3" / "song_instrumental.mp3")],
                           capture_output=True, text=True, check=True).stdout.strip().split(",")
    assert probe[0] == "mp3" and probe[1] == "44100" and abs(int(probe[2]) - 128000) < 8000
    decoded, rate = decode(tmp_path / "mp3" / "song_instrumental.mp3")
    assert rate == 44100 and abs(decoded.shape[1] - song.shape[1]) < 2 * 1152  # encoder padding
    separator = Separator(models["ones"])
    for bits, subtype in (("24", "PCM_24"), ("float", "FLOAT")):
        paths = separator.separate_file(tmp_path / "song.wav", tmp_path / bits, bits=bits)
        assert sf.info(paths["vocals"]).subtype == subtype
    assert not [p for p in tmp_path.rglob(".*partial*")]


def test_devices_shifts_and_one_line_errors(models, song, tmp_path):
    sf.write(tmp_path / "song.wav", song[:, :30000].T, 44100)
    args = ["separate", models["local"], tmp_path / "song.wav", "-o", tmp_path / "out"]
    missing = specbert(*args, "-d", f"cuda:{torch.cuda.device_count()}")
    assert missing.returncode != 0 and "device 'cuda:" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    audio_as_model = specbert("separate", tmp_path / "song.wav", tmp_path / "song.wav")
    assert audio_as_model.returncode != 0 and "is an audio file, not a model" in audio_as_model.stderr
    assert len(audio_as_model.stderr.strip().splitlines()) == 1
    wider = "model: {channels: [4, 16], encoder_blocks: [0, 0], decoder_blocks: [0]}\n"
    (tmp_path / "wider.yaml").write_text(wider)
    mismatch = specbert(*args, "--config", tmp_path / "wider.yaml")  # merged over the model file's config
    assert mismatch.returncode != 0 and len(mismatch.stderr.strip().splitlines()) == 1
    assert "first mismatch encoders.1." in mismatch.stderr and "shape [" in mismatch.stderr
    a = Separator(models["local"], chunk_frames=48, shifts=3).separate(song, 44100)
    b = Separator(models["local"], chunk_frames=48).separate(song, 44100)
    for stem in a:  # a frame-local network: shifted chunks give the same masks
        np.testing.assert_allclose(a[stem], b[stem], atol=1e-5)
def test_the_wiener_post_filter_sharpens_a_blurred_mask_and_keeps_the_sum():
    """A ratio mask of the true stems, blurred over time (as a network's is): one Wiener iteration brings
    the instrumental closer to the truth, the stems still add up to the mixture, and 0 iterations is the
    plain mask."""
    stems = render_song(5, seconds=6.0)
    spec = stft(stems["mixture"], AUDIO)
    inst, voc = (np.abs(stft(stems[name], AUDIO))[:, :-1] for name in ("accompaniment", "vocals"))
    ratio = inst / np.maximum(inst + voc, 1e-8)
    kernel = np.ones(9) / 9
    blurred = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 2, ratio).astype(np.float32)
    n = stems["mixture"].shape[1]
    scores = {}
    for iterations in (0, 1):
        out = apply_mask(spec, blurred, wiener=iterations)
        np.testing.assert_allclose(out["instrumental"] + out["vocals"], spec, atol=1e-4)
        scores[iterations] = snr(stems["accompaniment"], istft(out["instrumental"], n, AUDIO))
    plain = spec * np.concatenate([blurred, blurred[:, -1:]], axis=1)
    np.testing.assert_allclose(apply_mask(spec, blurred)["instrumental"], plain)
    assert scores[1] > scores[0] + 0.2
