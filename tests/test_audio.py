"""The audio module: decoding any format to the project's rate/channels, and the STFT."""

import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from specbert.configs.audio import AudioConfig
from specbert.pipeline.audio import AudioError, read_audio, to_channels
from specbert.pipeline.spectral import istft, num_frames, stft

AUDIO = AudioConfig()


def tone(seconds, rate, channels, freq=441.0):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)])


def test_stft_matches_torch_and_inverts():
    wave = np.random.default_rng(0).standard_normal((2, 44100 * 3 + 123)).astype(np.float32)
    spec = stft(wave, AUDIO)
    ref = torch.stft(torch.from_numpy(wave), AUDIO.n_fft, AUDIO.hop, window=torch.hann_window(AUDIO.n_fft),
                     center=True, return_complex=True).numpy()
    assert spec.shape == ref.shape == (2, AUDIO.bins, num_frames(wave.shape[1], AUDIO))
    np.testing.assert_allclose(spec, ref, atol=2e-4 * np.abs(ref).max())
    back = istft(spec, wave.shape[1], AUDIO)
    assert np.abs(back - wave).max() < 1e-3


@pytest.mark.parametrize("audio, length", [
    (AUDIO, 1000), (AUDIO, AUDIO.n_fft // 2 + 1),  # too short to reflect (zeros); the shortest that reflects
    (AUDIO, 64 * AUDIO.hop - 1), (AUDIO, 64 * AUDIO.hop + 5),  # around the block boundary
    (AudioConfig(n_fft=256, hop=256), 129), (AudioConfig(n_fft=256, hop=64), 70 * 64 + 200),
])
def test_stft_pads_edges_of_interleaved_input(audio, length):
    """Edge frames are padded as torch pads the whole wave; a decoder's ``[N, C]`` buffer is used as is."""
    wave = np.random.default_rng(length).standard_normal((length, 2)).astype(np.float32).T
    mode = "reflect" if length > audio.n_fft // 2 else "constant"
    ref = torch.stft(torch.from_numpy(np.ascontiguousarray(wave)), audio.n_fft, audio.hop, center=True,
                     pad_mode=mode, window=torch.hann_window(audio.n_fft), return_complex=True).numpy()
    np.testing.assert_allclose(stft(wave, audio), ref, rtol=0, atol=1e-6 * np.abs(ref).max())  # FFT rounding


def test_stft_of_very_short_input():
    assert stft(np.zeros((2, 10), np.float32), AUDIO).shape == (2, AUDIO.bins, 1)


def test_channel_conversion():
    mono = tone(0.1, 44100, 1)
    assert np.array_equal(to_channels(mono, 2), np.repeat(mono, 2, axis=0))
    six = np.ones((6, 100), np.float32)
    down = to_channels(six, 2)
    assert down.shape == (2, 100) and np.allclose(down, 1.0)  # a constant field stays constant
    assert to_channels(tone(0.1, 44100, 2), 1).shape[0] == 1


@pytest.mark.parametrize("ext, rate, channels", [("wav", 48000, 1), ("flac", 22050, 6), ("ogg", 44100, 2)])
def test_read_audio_converts_rate_and_channels(tmp_path, ext, rate, channels):
    path = tmp_path / f"x.{ext}"
    sf.write(path, tone(1.0, rate, channels).T, rate)
    wave = read_audio(path, AUDIO)
    assert wave.dtype == np.float32 and wave.shape[0] == 2
    assert abs(wave.shape[1] - 44100) <= 50
    spectrum = np.abs(np.fft.rfft(wave[0]))
    assert abs(np.argmax(spectrum) * 44100 / wave.shape[1] - 441.0) < 2.0  # pitch survives resampling


def test_m4a_through_ffmpeg(tmp_path):
    wav, m4a = tmp_path / "x.wav", tmp_path / "x.m4a"
    sf.write(wav, tone(1.0, 44100, 2).T, 44100)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    wave = read_audio(m4a, AUDIO)
    assert wave.shape[0] == 2 and abs(wave.shape[1] - 44100) < 4096  # AAC priming/padding


@pytest.mark.parametrize("ext, content", [("flac", b""), ("mp3", b"not audio" * 100), ("m4a", b"junk")])
def test_unusable_files_raise_one_line_errors(tmp_path, ext, content):
    path = tmp_path / f"bad.{ext}"
    path.write_bytes(content)
    with pytest.raises(AudioError) as err:
        read_audio(path, AUDIO)
    assert "\n" not in str(err.value) and str(err.value)


def test_zero_duration(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 44100)
    with pytest.raises(AudioError, match="zero duration"):
        read_audio(path, AUDIO)
