"""specbert's Python API.

    import specbert
    sep = specbert.Separator("model.safetensors")          # device="cuda:0", shifts=2, chunk_frames=...
    stems = sep.separate("song.flac")                      # {"instrumental": [C, N], "vocals": [C, N]}
    stems = sep.separate(wave, sample_rate=48000)          # an array [C, N] or [N]
    sep.separate_file("song.flac", "out/")                 # out/song_instrumental.wav, out/song_vocals.wav
"""

from specbert.inference.separate import Separator

__all__ = ["Separator"]
