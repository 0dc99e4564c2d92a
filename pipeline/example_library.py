"""Synthetic example music: the only data the tests and ``make demo`` use (nothing is downloaded).

Each song is rendered from a seed with numpy: a key, tempo and chord progression, then four stems --
``other`` (chords or arpeggios of harmonic tones with ADSR envelopes), ``bass`` (plucked chord roots),
``drums`` (kick, snare, hi-hat) and ``vocals`` (a sung melody: glottal-like harmonic source with
vibrato, vowel formants and breath noise, silent in instrumental sections). Timbres come from an
*artist* seed, so artists sound different.

``write_example_library`` writes a tagged library ``<Artist>/<Album>/<NN - Title>.<ext>`` in FLAC, MP3,
OGG, WAV (and M4A through ffmpeg); ``write_example_stems`` writes MUSDB18-HQ style stems.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

TABLE = 4096  # wavetable length (one period)
STEMS = ("vocals", "drums", "bass", "other")
SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10))  # major, natural minor
ARPEGGIO = (0, 1, 2, 3, 2, 1, 0, 1)  # indices into the voiced triad plus its octave, one per eighth
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (0, 5, 1, 4), (0, 3, 5, 4))
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
HIGH_FORMANTS = (3300, 3750)  # F4, F5: the same for every vowel
FORMANT_BANDWIDTHS = (90.0, 110.0, 160.0, 250.0, 300.0)
# Rhythms of sung bars as (start, length) in beats; the gaps are breaths.
VOCAL_RHYTHMS = (
    ((0, 1), (1, 1), (2, 1.75)),
    ((0, 2), (2, 1.5)),
    ((0, 0.5), (0.5, 0.5), (1, 1), (2, 1.75)),
    ((0, 1.5), (1.5, 0.5), (2, 2)),
    ((0, 3.5),),
    ((0.5, 1.5), (2, 1), (3, 0.75)),
)
# Output format: (libsndfile format, subtype); "m4a" goes through ffmpeg instead.
ENCODINGS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
FIRST_WORDS = "Velvet Silver Hollow Golden Quiet Electric Paper Crimson Northern Lonely Bright Wild".split()
SECOND_WORDS = "Owls Rivers Machines Lanterns Harbors Foxes Gardens Echoes Tigers Mirrors Kites Roads".split()


@dataclass(frozen=True)
class _Style:
    """Timbre and playing habits of one artist."""

    tempo: float  # typical BPM
    brightness: float  # harmonic roll-off exponent of the keys (lower is brighter)
    keys_pattern: str  # "arp", "pad" or "stabs"
    keys_attack: float
    bass_steps: tuple  # eighth-note positions of bass notes in a bar
    hats_per_beat: int
    kick_hz: float
    snare_hz: float
    voice_low: int  # lowest sung MIDI note (the range is 14 semitones)
    formant_scale: float
    vibrato_hz: float
    vibrato_depth: float  # relative pitch deviation (0.02 = +-2 %)


@dataclass(frozen=True)
class _Plan:
    """What one song plays: tempo, scale, one triad per bar, and which bars are sung."""

    beat: float  # seconds
    scale: tuple  # pitch classes
    chords: list  # per bar: three pitch classes, root first
    sung: np.ndarray  # per bar: bool


def _derive(*keys: int) -> int:
    """A 32-bit seed derived from a tuple of non-negative integers."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _pan(position: float) -> np.ndarray:
    """Equal-power (left, right) gains for a position in [-1, 1]."""
    angle = (position + 1) * np.pi / 4
    return np.array([np.cos(angle), np.sin(angle)])


def _style(artist: int) -> _Style:
    """The artist's timbres and habits, drawn from its seed."""
    rng = np.random.default_rng([artist, 0])
    voice_low = int(rng.integers(50, 63))
    return _Style(
        tempo=float(rng.uniform(90, 140)),
        brightness=float(rng.uniform(0.8, 2.0)),
        keys_pattern=str(rng.choice(["arp", "pad", "stabs"])),
        keys_attack=float(rng.uniform(0.005, 0.06)),
        bass_steps=((0, 3, 4, 6), (0, 2, 4, 6), (0, 4, 5, 7), (0, 1, 4, 5))[rng.integers(4)],
        hats_per_beat=int(rng.choice([2, 4])),
        kick_hz=float(rng.uniform(45, 60)),
        snare_hz=float(rng.uniform(160, 230)),
        voice_low=voice_low,
        formant_scale=float(1 + (voice_low - 50) / 60 + rng.uniform(-0.03, 0.03)),
        vibrato_hz=float(rng.uniform(4.8, 6.2)),
        vibrato_depth=float(rng.uniform(0.012, 0.022)),
    )


def _plan(rng: np.random.Generator, style: _Style, seconds: float) -> _Plan:
    """Key, tempo, chords and sung bars (the first bar is an intro; about 1 song in 6 is instrumental)."""
    beat = 60 / float(np.clip(style.tempo + rng.normal(0, 8), 80, 150))
    key = int(rng.integers(12))
    scale = tuple((key + p) % 12 for p in SCALES[rng.integers(2)])
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    bars = int(np.ceil(seconds / (4 * beat)))
    chords = [[scale[(progression[b % 4] + j) % 7] for j in (0, 2, 4)] for b in range(bars)]
    sung = (rng.random(bars) < 0.8) & (rng.random() >= 1 / 6)
    sung[0] &= bars < 3
    return _Plan(beat, scale, chords, sung)


def _adsr(n: int, sr: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Envelope of an ``n``-sample note whose last ``release`` seconds fade out linearly."""
    t = np.arange(n) / sr
    rise = np.minimum(t / attack, 1.0)
    fall = sustain + (1 - sustain) * np.exp(-t / decay)
    return rise * fall * np.clip((n / sr - t) / release, 0.0, 1.0)


def _wavetable(amps: np.ndarray, top_hz: float, sr: int) -> np.ndarray:
    """One period of ``sum amps[k-1] sin(k x)`` over harmonics below 0.45 sr (``TABLE + 1`` points)."""
    spectrum = np.zeros(TABLE // 2 + 1, complex)
    k = np.arange(1, len(amps) + 1)
    keep = k * top_hz < 0.45 * sr
    spectrum[k[keep]] = -0.5j * TABLE * amps[keep]
    table = np.fft.irfft(spectrum, TABLE)
    return np.append(table, table[0])


def _oscillator(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a wavetable at a running phase given in cycles."""
    return np.interp((cycles % 1.0) * TABLE, np.arange(TABLE + 1), table)


def _add(out: np.ndarray, start: int, mono: np.ndarray, pan: float, gain: float = 1.0) -> None:
    """Mix a mono sound into the stereo buffer ``out`` at sample ``start``, cut at the end of the song."""
    mono = mono[: max(out.shape[1] - start, 0)]
    out[:, start : start + len(mono)] += gain * _pan(pan)[:, None] * mono


def _tone(midi: int, n: int, sr: int, amps: np.ndarray, adsr: tuple, pluck: float) -> np.ndarray:
    """One ``n``-sample note of a harmonic timbre. With ``pluck`` > 0 the upper harmonics die away
    faster: the tone fades from bright to its fundamental with that time constant (seconds)."""
    t = np.arange(n) / sr
    cycles = _hz(midi) * t
    tone = _oscillator(_wavetable(amps, _hz(midi), sr), cycles)
    if pluck:
        fundamental = np.sin(2 * np.pi * cycles)
        tone = fundamental + (tone - fundamental) * np.exp(-t / pluck)
    return tone * _adsr(n, sr, *adsr)


def _notes(out: np.ndarray, sr: int, notes: list, amps: np.ndarray, adsr: tuple, pluck: float = 0.0):
    """Render ``(start_s, length_s, midi, velocity, pan)`` notes of one timbre into ``out``."""
    tones = {}
    for start, length, midi, velocity, pan in notes:
        n = int((length + adsr[-1]) * sr)
        if (midi, n) not in tones:
            tones[midi, n] = _tone(midi, n, sr, amps, adsr, pluck)
        _add(out, int(start * sr), tones[midi, n], pan, velocity)


def _keys(plan: _Plan, style: _Style, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Chords voiced around middle C, as arpeggios, held pads or off-beat stabs."""
    out = np.zeros((2, n))
    bar, eighth = 4 * plan.beat, plan.beat / 2
    notes = []
    for b, chord in enumerate(plan.chords):
        voicing = sorted(55 + (pc - 55) % 12 for pc in chord)
        if style.keys_pattern == "arp":
            tones = voicing + [voicing[0] + 12]
            notes += [(b * bar + i * eighth, eighth, tones[j], 0.8, 0.5 * (-1) ** i)
                      for i, j in enumerate(ARPEGGIO)]
        elif style.keys_pattern == "pad":
            notes += [(b * bar, bar, m, 0.5, (i - 1) * 0.6) for i, m in enumerate(voicing)]
        else:
            notes += [(b * bar + s * eighth, 0.6 * eighth, m, 0.6, (i - 1) * 0.3)
                      for s in (1, 3, 5, 7) for i, m in enumerate(voicing)]
    notes = [(s, d, m, v * rng.uniform(0.8, 1.0), p) for s, d, m, v, p in notes]
    amps = np.arange(1, 13, dtype=float) ** -style.brightness
    attack = 0.25 if style.keys_pattern == "pad" else style.keys_attack
    _notes(out, sr, notes, amps, (attack, 0.4, 0.5, 0.15))
    return out


def _bass(plan: _Plan, style: _Style, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Plucked notes on the chord roots (E1..D#2), sometimes an octave up."""
    out = np.zeros((2, n))
    eighth = plan.beat / 2
    steps = style.bass_steps + (8,)
    notes = []
    for b, chord in enumerate(plan.chords):
        root = 28 + (chord[0] - 4) % 12
        for s, next_s in zip(steps[:-1], steps[1:], strict=True):
            midi = root + 12 * (rng.random() < 0.2)
            notes.append((b * 8 * eighth + s * eighth, (next_s - s) * eighth * 0.9, midi, 1.0, 0.0))
    _notes(out, sr, notes, np.arange(1, 9, dtype=float) ** -1.2, (0.004, 0.25, 0.35, 0.05), pluck=0.08)
    return out


def _drum_sounds(style: _Style, rng: np.random.Generator, sr: int) -> dict:
    """One-shot kick (falling sine), snare (noise burst + tone) and hi-hat (high-passed noise)."""
    t = np.arange(int(0.35 * sr)) / sr
    kick_f = style.kick_hz + 110 * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(kick_f) / sr) * np.exp(-t / 0.12)
    kick += 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.003)
    snare_noise = np.diff(rng.standard_normal(len(t) + 1)) * 0.5
    snare = snare_noise * np.exp(-t / 0.08) + 0.6 * np.sin(2 * np.pi * style.snare_hz * t) * np.exp(-t / 0.04)
    sos = signal.butter(4, min(7000.0, 0.4 * sr), "highpass", fs=sr, output="sos")
    hat = signal.sosfilt(sos, rng.standard_normal(len(t))) * np.exp(-t / 0.03)
    return {"kick": kick, "snare": snare, "hat": hat}


def _drums(plan: _Plan, style: _Style, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Kick on 1 and 3 plus a song-specific extra, snare on 2 and 4, hats on 8ths or 16ths (intro: hats)."""
    out = np.zeros((2, n))
    sounds = _drum_sounds(style, rng, sr)
    sixteenth = plan.beat / 4
    pattern = {"kick": (0, 8, int(rng.choice([6, 10, 11]))), "snare": (4, 12),
               "hat": tuple(range(0, 16, 4 // style.hats_per_beat))}
    pans = {"kick": 0.0, "snare": -0.1, "hat": 0.4}
    gains = {"kick": 1.0, "snare": 0.7, "hat": 0.25}
    for b in range(len(plan.chords)):
        for name, steps in pattern.items():
            if b == 0 and name != "hat" and len(plan.chords) > 2:
                continue
            for s in steps:
                start = int((16 * b + s) * sixteenth * sr)
                _add(out, start, sounds[name], pans[name], gains[name] * rng.uniform(0.8, 1.0))
    return out


def _formant_filter(x: np.ndarray, vowel: tuple, scale: float, sr: int) -> np.ndarray:
    """Cascade of two-pole resonators (unit gain at DC) at the vowel's formants F1..F3 and at F4, F5."""
    sections = []
    for f, bw in zip((*vowel, *HIGH_FORMANTS), FORMANT_BANDWIDTHS, strict=True):
        r = np.exp(-np.pi * bw * scale / sr)
        theta = 2 * np.pi * min(f * scale, 0.45 * sr) / sr
        a = [1.0, -2 * r * np.cos(theta), r * r]
        sections.append([sum(a), 0.0, 0.0, *a])
    return signal.sosfilt(np.array(sections), x)


def _sung_note(midi: int, length: float, vowel: tuple, style: _Style, rng: np.random.Generator, sr: int):
    """One sung note: a harmonic source with 1/k roll-off, scooping into pitch, with delayed vibrato and
    slow drift, plus breath noise strongest at the onset, all through the vowel's formants; plus some air."""
    n = int((length + 0.08) * sr)
    t = np.arange(n) / sr
    depth = style.vibrato_depth * np.clip((t - 0.12) / 0.3, 0.0, 1.0)
    vibrato = depth * np.sin(2 * np.pi * style.vibrato_hz * t + rng.uniform(0, 2 * np.pi))
    drift = 0.003 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    f0 = _hz(midi) * (1 - 0.03 * np.exp(-t / 0.04) + vibrato + drift)
    source = _oscillator(_wavetable(1.0 / np.arange(1, 61), f0.max(), sr), np.cumsum(f0) / sr)
    breath = rng.standard_normal(n) * (0.4 * np.exp(-t / 0.06) + 0.04)
    air = 0.02 * np.diff(breath, prepend=0)
    voice = _formant_filter(source + breath, vowel, style.formant_scale, sr) + air
    return voice * _adsr(n, sr, 0.04, 0.3, 0.85, 0.08)


def _vocals(plan: _Plan, style: _Style, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A melody on the scale within the artist's range, landing on chord tones on beats 1 and 3."""
    out = np.zeros((2, n))
    lo = style.voice_low
    pitches = [m for m in range(lo, lo + 15) if m % 12 in plan.scale]
    idx = len(pitches) // 2
    for b in np.flatnonzero(plan.sung):
        for start, length in VOCAL_RHYTHMS[rng.integers(len(VOCAL_RHYTHMS))]:
            idx = int(np.clip(idx + rng.integers(-2, 3), 0, len(pitches) - 1))
            if start in (0, 2):
                tones = [i for i, m in enumerate(pitches) if m % 12 in plan.chords[b]]
                idx = min(tones, key=lambda i: abs(i - idx))
            vowel = VOWELS[rng.integers(len(VOWELS))]
            note = _sung_note(pitches[idx], length * plan.beat, vowel, style, rng, sr)
            _add(out, int((4 * b + start) * plan.beat * sr), note, rng.uniform(-0.1, 0.1))
    return out


def _active_rms(x: np.ndarray, block: int = 1024) -> float:
    """RMS over the blocks of a stem that are within 40 dB of its loudest block (0 for silence)."""
    starts = np.arange(0, x.shape[1], block)
    power = np.add.reduceat(np.square(x).sum(axis=0), starts) / np.diff(np.append(starts, x.shape[1]))
    return float(np.sqrt(power[power > 1e-4 * power.max()].mean())) if power.max() > 0 else 0.0


def _sums(stems: dict) -> dict[str, np.ndarray]:
    """The four stems plus accompaniment (drums + bass + other) and mixture (vocals + accompaniment)."""
    accompaniment = stems["drums"] + stems["bass"] + stems["other"]
    return {**stems, "accompaniment": accompaniment, "mixture": stems["vocals"] + accompaniment}


def _mix(stems: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Balance the stems by RMS, then scale so that every stem and sum peaks at <= 0.9."""
    levels = {"vocals": 0.1 * 10 ** (rng.uniform(-2, 2) / 20), "drums": 0.08, "bass": 0.07, "other": 0.05}
    for name, x in stems.items():
        rms = _active_rms(x)
        stems[name] = (x * (levels[name] / rms if rms else 0.0)).astype(np.float32)
    gain = np.float32(0.9 / max(np.abs(x).max() for x in _sums(stems).values()))
    return _sums({name: x * gain for name, x in stems.items()})


def render_song(seed: int, seconds: float = 12.0, sample_rate: int = 44100, *,
                artist: int | None = None) -> dict[str, np.ndarray]:
    """Render one song as float32 ``[2, N]`` stems: vocals, drums, bass, other, accompaniment
    (= drums + bass + other) and mixture (= vocals + accompaniment), peaking at <= 0.9.

    Timbres come from ``artist`` (default: ``seed``); everything is a pure function of the arguments.
    """
    style = _style(seed if artist is None else artist)
    rng = np.random.default_rng([seed, 1])
    plan = _plan(rng, style, seconds)
    n = round(seconds * sample_rate)
    parts = {"vocals": _vocals, "drums": _drums, "bass": _bass, "other": _keys}
    fade_out = np.clip((n - np.arange(n)) / (0.05 * sample_rate), 0.0, 1.0)
    stems = {name: render(plan, style, rng, n, sample_rate) * fade_out for name, render in parts.items()}
    return _mix(stems, rng)


def _names(rng: np.random.Generator, count: int, prefix: str = "") -> list[str]:
    """``count`` distinct two-word names (numbered once the word pairs run out)."""
    pairs = [f"{prefix}{a} {b}" for a in FIRST_WORDS for b in SECOND_WORDS]
    order = rng.permutation(len(pairs))
    return [pairs[order[i % len(pairs)]] + (f" {i // len(pairs) + 1}" if i >= len(pairs) else "")
            for i in range(count)]


_WRITE_FRAMES = 1 << 15  # frames per soundfile write (github.com/libsndfile/libsndfile/issues/1095)


def _write_audio(path: Path, audio: np.ndarray, sr: int, fmt: str, tags: dict) -> None:
    """Write ``[2, N]`` float audio with artist/album/title/tracknumber tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "m4a":
        pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").T.tobytes()
        meta = [arg for key, value in tags.items()
                for arg in ("-metadata", f"{'track' if key == 'tracknumber' else key}={value}")]
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", str(sr), "-ac", "2",
               "-i", "pipe:0", "-c:a", "aac", "-b:a", "160k", "-fflags", "+bitexact", "-flags:a", "+bitexact",
               *meta, str(path)]
        subprocess.run(cmd, input=pcm, check=True)
        return
    container, subtype = ENCODINGS[fmt]
    with sf.SoundFile(path, "w", sr, audio.shape[0], subtype=subtype, format=container) as f:
        for key, value in tags.items():
            setattr(f, key, value)
        for start in range(0, audio.shape[1], _WRITE_FRAMES):  # libvorbis overflows its stack on big writes
            f.write(audio[:, start : start + _WRITE_FRAMES].T)


def write_example_library(root, seed: int = 0, artists: int = 3, albums_per_artist: int = 2,
                          songs_per_album: int = 2, seconds: float = 12.0, sample_rate: int = 44100,
                          formats=("flac", "mp3", "ogg", "wav")) -> list[Path]:
    """Write a tagged stereo library ``root/<Artist>/<Album>/<NN - Title>.<ext>`` and return the paths.

    Formats rotate over the songs (so each appears once there are enough songs); "m4a" needs ffmpeg.
    """
    formats = [f.lower() for f in formats]
    unknown = set(formats) - set(ENCODINGS) - {"m4a"}
    if unknown or not formats:
        raise ValueError(f"formats must be among {sorted(ENCODINGS) + ['m4a']}, got {formats}")
    if "m4a" in formats and shutil.which("ffmpeg") is None:
        raise RuntimeError("writing m4a needs ffmpeg on the PATH")
    rng = np.random.default_rng([seed, 2])
    artist_names = _names(rng, artists, prefix="The ")
    album_names = _names(rng, artists * albums_per_artist)
    titles = _names(rng, artists * albums_per_artist * songs_per_album)
    paths = []
    for a, artist in enumerate(artist_names):
        timbre = _derive(seed, 0, a)
        for b in range(albums_per_artist):
            album = album_names[a * albums_per_artist + b]
            for s in range(songs_per_album):
                title, fmt = titles[len(paths)], formats[len(paths) % len(formats)]
                song = render_song(_derive(seed, 0, a, b, s), seconds, sample_rate, artist=timbre)
                path = Path(root) / artist / album / f"{s + 1:02d} - {title}.{fmt}"
                tags = {"artist": artist, "album": album, "title": title, "tracknumber": str(s + 1)}
                _write_audio(path, song["mixture"], sample_rate, fmt, tags)
                paths.append(path)
    return paths


def _int16_stems(song: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Quantise the four stems, then build accompaniment and mixture as exact integer sums."""
    q = {name: np.round(song[name] * 32767).astype(np.int32) for name in STEMS}
    q["accompaniment"] = q["drums"] + q["bass"] + q["other"]
    q["mixture"] = q["vocals"] + q["accompaniment"]
    assert all(np.abs(x).max() <= 32767 for x in q.values()), "stems clip in int16"
    return {name: x.astype(np.int16) for name, x in q.items()}


def write_example_stems(root, seed: int = 0, tracks: int = 4, seconds: float = 12.0, sample_rate: int = 44100,
                        splits: dict | None = None) -> Path:
    """Write MUSDB18-HQ style stems ``root/<split>/<Artist - Title>/<stem>.wav`` (PCM_16) and return ``root``.

    ``splits`` maps split names to track counts summing to ``tracks``; by default a quarter of the tracks
    (at least one, when there are two or more) go to "test" and the rest to "train". In the files,
    mixture == vocals + accompaniment and accompaniment == drums + bass + other exactly.
    """
    if splits is None:
        test = max(1, tracks // 4) if tracks > 1 else 0
        splits = {"train": tracks - test, "test": test}
    if sum(splits.values()) != tracks:
        raise ValueError(f"splits {splits} do not add up to {tracks} tracks")
    rng = np.random.default_rng([seed, 3])
    artists, titles = _names(rng, tracks, "The "), _names(rng, tracks)
    names = [f"{artist} - {title}" for artist, title in zip(artists, titles, strict=True)]
    root = Path(root)
    i = 0
    for split, count in splits.items():
        for _ in range(count):
            song = _int16_stems(render_song(_derive(seed, 1, i), seconds, sample_rate))
            folder = root / split / names[i]
            folder.mkdir(parents=True, exist_ok=True)
            for name, x in song.items():
                sf.write(folder / f"{name}.wav", x.T, sample_rate, subtype="PCM_16")
            i += 1
    return root
