"""Spectrogram pictures have labelled time and frequency axes (``pipeline.plots``, librosa.display)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from specbert.pipeline.plots import show_spectrogram  # noqa: E402


def test_axes_are_seconds_and_hertz_of_the_stft():
    ax = Figure().subplots()
    image = np.random.default_rng(0).random((1024, 431))  # model bins (no Nyquist), 10 s at hop 1024
    show_spectrogram(ax, image, sample_rate=44100, n_fft=2048, hop=1024, vmin=0.0, vmax=1.0)
    assert ax.get_xlabel() == "Time" and ax.get_ylabel() == "Hz"
    assert abs(ax.get_xlim()[1] - 10.0) < 0.05  # frame 430 is centred at 9.985 s (+ half a frame)
    assert abs(ax.get_ylim()[1] - 22050) < 50  # bin 1023 of 2048 at 44.1 kHz: 21.99 kHz (+ half a bin)
