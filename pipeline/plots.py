"""Spectrogram pictures with labelled axes (time in seconds, frequency in Hz), drawn by ``librosa.display``:
the pictures of ``specbert inspect --png``, the training previews and the evaluation report."""

from __future__ import annotations

import numpy as np


def show_spectrogram(ax, image: np.ndarray, sample_rate: int, n_fft: int, hop: int, **style):
    """Draw ``image`` ``[bins, frames]`` (row ``k`` is bin ``k`` of an ``n_fft`` STFT every ``hop`` samples;
    a model view without the Nyquist bin is fine) on the matplotlib axes ``ax``; ``style`` goes to
    ``specshow`` (cmap, vmin, vmax). Returns the drawn mesh, for a colour bar."""
    import librosa
    import librosa.display

    freqs = np.arange(image.shape[0]) * sample_rate / n_fft
    times = librosa.frames_to_time(np.arange(image.shape[1]), sr=sample_rate, hop_length=hop)
    return librosa.display.specshow(image, x_coords=times, y_coords=freqs, x_axis="time", y_axis="hz",
                                    sr=sample_rate, hop_length=hop, ax=ax, **style)
