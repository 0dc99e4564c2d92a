"""Storage codecs: float16 spectrogram arrays <-> compact bytes.

A codec works on a float16 array whose axis 0 is the audio channel (magnitude ``[C, T, bins]`` or
real/imag ``[C, T, bins, 2]``; any shape with channels first). ``encode(x, ref)``:

1. quantise (lossy codecs only): round the float16 mantissa to ``N`` bits (round half up on the bit
   pattern, so signed values work too), and store values more than 100 dB below ``ref`` (the track's
   max magnitude; compared after rounding, so +-1 step) as 0;
2. channel difference: the uint16 bit patterns of each channel minus those of the previous one
   (mod 2**16; left and right are alike, so this saves ~20 % on music);
3. blosc: bit shuffle (bit planes: the rounded-off mantissa bits become runs of zeros), then lz4
   in 1 MB blocks (``COMPRESSOR``). zstd (the compressor of older shards: blosc's header names it, so
   those still decode) stores a little less but decodes and encodes at about half lz4's speed; the
   loader decodes a segment for every few crops and the ingest encodes every segment, so lz4's speed
   is worth its size (still < FLAC);
4. CRC-32C of the bytes of 3, appended little-endian (``CHECKSUM``, cheap): corrupt bytes raise
   instead of decoding to garbage (blosc has no checksum of its own).

``decode`` checks 4 and inverts 2-3 exactly, so a decoded array equals ``quantize(x, ref)``. Zarr
shards store the ``quantize``d values as plain float16 (``zarr_compressors``: the same blosc settings
and zarr's crc32c codec, the same checksum; no channel difference), readable by any zarr client.

Codecs (``get_codec(name)``):

- ``f16``: lossless float16 (float16's own rounding: <= 0.0042 dB above 6.1e-5).
- ``f16rN`` (N = 1..9): N mantissa bits; max error 20*log10(1 + 2**-(N+1)) dB above the floor:
  f16r6 0.068 dB (+ float16's own 0.004), f16r5 0.137 dB, f16r4 0.27 dB.

The default ``f16r6`` stores fewer bytes than the source FLAC (sizes and errors measured by
``benchmarks/bench_ingest.py``: ``benchmarks/README.md``) for every magnitude within 100 dB of the
track's max; below that, values are 0 (normalised by the max they are under 1e-5, below float16's
normal range, so a float16 crop could not hold them anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c
import numpy as np
from numcodecs import Blosc

from specbert.configs.ingest import codec_bits

FLOOR_DB = -100.0  # lossy codecs store magnitudes this far below the track's max as 0
COMPRESSOR = "lz4"  # blosc's compressor on bit planes (see the module docstring)
CHECKSUM = "crc32c"  # of the compressed bytes, appended (4 bytes, little-endian), as zarr's crc32c codec
_U16 = np.dtype("<u2")
_BLOSC = Blosc(cname=COMPRESSOR, clevel=1, shuffle=Blosc.BITSHUFFLE, blocksize=1 << 20)


def zarr_compressors() -> list:
    """Zarr v3 bytes codecs of the same compression and checksum, for float16 arrays."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname=COMPRESSOR, clevel=1, shuffle="bitshuffle", typesize=2), Crc32cCodec()]


def crc32c(data) -> bytes:
    return int(google_crc32c.value(data)).to_bytes(4, "little")


@dataclass(frozen=True)
class Codec:
    """Float16 array codec; ``mantissa_bits == 10`` and ``floor_db is None`` is lossless."""

    name: str
    mantissa_bits: int = 10
    floor_db: float | None = None

    @property
    def max_error_db(self) -> float:
        """Bound on |20 log10(decoded / float16 input)| for values above the floor."""
        return 20 * np.log10(1 + 2.0 ** -(self.mantissa_bits + 1)) if self.mantissa_bits < 10 else 0.0

    @property
    def typical_ratio(self) -> float:
        """Rough encoded / raw float16 size on music, only to plan shard sizes."""
        return 0.18 + 0.06 * self.mantissa_bits

    def quantize(self, x: np.ndarray, ref: float) -> np.ndarray:
        """The values ``decode`` will return: a new float16 array of ``x``'s shape."""
        return self._quantized_bits(x, ref).view(np.float16)

    def encode(self, x: np.ndarray, ref: float) -> bytes:
        """Float16 ``x`` (channels on axis 0) -> bytes; ``ref`` is the track's max magnitude."""
        bits = self._quantized_bits(x, ref)
        for c in range(bits.shape[0] - 1, 0, -1):
            bits[c] -= bits[c - 1]
        data = _BLOSC.encode(bits)
        return data + crc32c(data)

    def decode(self, data: bytes, shape, checksum: str | None = CHECKSUM) -> np.ndarray:
        """Bytes from ``encode`` -> float16 array of ``shape``; ValueError if they are corrupt.
        ``checksum=None`` reads bytes written without one (shards from before Nov 2026)."""
        if checksum is not None:
            if checksum != CHECKSUM:
                raise ValueError(f"codec {self.name}: unknown checksum {checksum!r} (known: {CHECKSUM})")
            data, stored = np.frombuffer(data, np.uint8)[:-4], bytes(data[-4:])  # a view
            if crc32c(data) != stored:
                raise ValueError(f"codec {self.name}: {CHECKSUM} checksum mismatch (corrupt bytes)")
        bits = np.empty(shape, _U16)
        # blosc header: uncompressed size at bytes 4-7, compressed size at 12-15 (checked before decoding)
        stored, compressed = (int.from_bytes(bytes(data[i : i + 4]), "little") for i in (4, 12))
        if compressed != len(data):
            raise ValueError(f"codec {self.name}: {len(data)} bytes where the header says {compressed}")
        if stored != bits.nbytes:
            raise ValueError(f"codec {self.name}: {stored} bytes do not hold float16 {tuple(shape)}")
        _BLOSC.decode(data, out=bits)
        for c in range(1, bits.shape[0]):
            bits[c] += bits[c - 1]
        return bits.view(np.float16)

    def _quantized_bits(self, x: np.ndarray, ref: float) -> np.ndarray:
        """Rounded and floored bit patterns of ``x``: a new contiguous uint16 array."""
        bits = np.asarray(x, dtype="<f2").view(_U16)
        drop = 10 - self.mantissa_bits
        if drop == 0:
            return bits.copy()
        half, mask = _U16.type(1 << (drop - 1)), _U16.type((0xFFFF << drop) & 0xFFFF)
        rounded = np.add(bits, half)
        rounded &= mask
        if self.floor_db is not None:  # compared after rounding, so against the rounded floor
            floor = (np.array(ref * 10 ** (self.floor_db / 20), "<f2").view(_U16) + half) & mask
            rounded *= (rounded & 0x7FFF) >= floor
        return rounded


def get_codec(name: str) -> Codec:
    """``"f16"`` or ``"f16rN"`` (N = 1..9, ``configs.ingest.codec_bits``) -> its Codec; ValueError names
    the valid ones."""
    bits = codec_bits(name)
    return Codec(name) if bits is None else Codec(name, mantissa_bits=bits, floor_db=FLOOR_DB)
