"""Storage codecs: exact inverse of their quantisation, stated error bounds, sizes."""

import numpy as np
import pytest

from specbert.configs.audio import AudioConfig
from specbert.pipeline.codecs import get_codec
from specbert.pipeline.tracks import stored_array


def music_like(seconds=3.0, seed=0):
    """Harmonic tones with a decaying envelope plus a little noise, stereo, as float32 [2, N]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(44100 * seconds)) / 44100
    tone = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 12)) * np.exp(-(t % 0.5) * 6)
    left = 0.2 * tone + 0.01 * rng.standard_normal(t.size)
    return np.stack([left, 0.8 * left + 0.005 * rng.standard_normal(t.size)]).astype(np.float32)


@pytest.fixture(scope="module")
def magnitude():
    array, peak = stored_array(music_like(), AudioConfig(), keep_complex=False)
    return array, peak


def error_db(decoded, reference):
    decoded, reference = decoded.astype(np.float64), reference.astype(np.float64)
    return np.abs(20 * np.log10(decoded / reference))


def test_lossless_codec_round_trips_exactly(magnitude):
    array, peak = magnitude
    codec = get_codec("f16")
    data = codec.encode(array, peak)
    assert np.array_equal(codec.decode(data, array.shape).view(np.uint16), array.view(np.uint16))
    assert len(data) < array.nbytes


@pytest.mark.parametrize("name", ["f16r6", "f16r4"])
def test_lossy_codec_error_is_within_its_bound_above_the_floor(magnitude, name):
    array, peak = magnitude
    codec = get_codec(name)
    decoded = codec.decode(codec.encode(array, peak), array.shape)
    assert np.array_equal(decoded.view(np.uint16), codec.quantize(array, peak).view(np.uint16))
    step = 2.0 ** -codec.mantissa_bits  # the floor is compared after rounding: +-1 step
    values = array.astype(np.float32)
    kept, floored = values >= peak * 1e-5 * (1 + step), values < peak * 1e-5 * (1 - step)
    bound = codec.max_error_db + 20 * np.log10(1 + 2**-11)
    assert error_db(decoded[kept], array[kept]).max() <= bound + 1e-9
    assert floored.any() and np.all(decoded[floored] == 0)
    assert codec.max_error_db < (0.1 if name == "f16r6" else 0.3)


def test_default_codec_is_smaller_than_lossless(magnitude):
    array, peak = magnitude
    sizes = {name: len(get_codec(name).encode(array, peak)) for name in ("f16", "f16r6", "f16r4")}
    assert sizes["f16r4"] < sizes["f16r6"] < 0.8 * sizes["f16"]


def test_complex_values_keep_their_sign():
    array, peak = stored_array(music_like(1.0), AudioConfig(), keep_complex=True)
    codec = get_codec("f16r6")
    decoded = codec.decode(codec.encode(array, peak), array.shape).astype(np.float32)
    reference = array.astype(np.float32)
    kept = np.abs(reference) >= peak * 1.02e-5
    assert np.all(np.sign(decoded[kept]) == np.sign(reference[kept]))
    assert np.all(np.abs(decoded - reference)[kept] <= np.abs(reference[kept]) * (2**-7 + 2**-11))


def test_decode_rejects_a_wrong_shape_and_truncated_bytes(magnitude):
    array, peak = magnitude
    codec = get_codec("f16r6")
    data = codec.encode(array, peak)
    with pytest.raises(ValueError, match="do not hold"):
        codec.decode(data, (2, 3, 4))
    with pytest.raises(ValueError, match="checksum mismatch"):
        codec.decode(data[: len(data) // 2], array.shape)
    with pytest.raises(ValueError, match="header says"):  # without a checksum, blosc's header tells
        codec.decode(data[: len(data) // 2], array.shape, checksum=None)


def test_flipped_bytes_are_detected_and_bytes_without_a_checksum_still_decode(magnitude):
    array, peak = magnitude
    codec = get_codec("f16r6")
    data = bytearray(codec.encode(array, peak))
    expected = codec.quantize(array, peak).view(np.uint16)
    legacy = bytes(data[:-4])  # shards written before the checksum
    assert np.array_equal(codec.decode(legacy, array.shape, checksum=None).view(np.uint16), expected)
    data[len(data) // 2] ^= 0x04  # one bit in the middle of the compressed stream
    with pytest.raises(ValueError, match="checksum mismatch"):
        codec.decode(bytes(data), array.shape)


def test_unknown_codec_names_the_valid_ones():
    with pytest.raises(ValueError, match="f16r1"):
        get_codec("f16r12")


def zarr_shard(tmp_path, arrays: dict[str, np.ndarray]):
    """A zarr shard as the ingest writes it, one sample of ``arrays`` -> (its path, the sample folder)."""
    from specbert.pipeline.shards import ZarrShard

    writer = ZarrShard(tmp_path / "s.zarr", get_codec("f16r6"))
    writer.write("k_0000", {"max_magnitude": 4.0, "members": list(arrays)}, arrays)
    writer.commit()
    return tmp_path / "s.zarr", tmp_path / "s.zarr" / "k_0000"


@pytest.mark.parametrize(("shape", "zeros"), [((2, 1500, 1025), 300), ((2, 700, 1025), 0),
                                             ((2, 2048, 1025), 1024), ((2, 1100, 1025, 2), 0),
                                             ((2, 900, 1025), 900)])
def test_zarr_arrays_read_without_zarr_equal_zarrs_reading(tmp_path, shape, zeros):
    """Partial chunks, a chunk of zeros (not stored), an array of zeros (no shard file), 4-D stems."""
    import zarr

    from specbert.pipeline.shards import iter_zarr_shard, read_zarr_array, read_zarr_sample

    values = (np.random.default_rng(0).random(shape) * 4).astype(np.float16)
    values[:, :zeros] = 0
    path, sample = zarr_shard(tmp_path, {"spec": values})
    ours, theirs = read_zarr_array(sample / "spec"), zarr.open_array(str(sample / "spec"), mode="r")[...]
    assert ours.dtype == theirs.dtype == np.float16 and ours.shape == theirs.shape == shape
    assert np.array_equal(ours, theirs) and np.array_equal(ours, get_codec("f16r6").quantize(values, 4.0))
    (raw,) = map(read_zarr_sample, iter_zarr_shard(path))
    assert raw["__key__"] == "k_0000" and np.array_equal(raw["spec"], ours)


def test_a_corrupt_zarr_chunk_or_index_raises_naming_the_file(tmp_path):
    from specbert.pipeline.shards import read_zarr_array

    _, sample = zarr_shard(tmp_path, {"spec": np.ones((2, 1500, 1025), np.float16)})
    file = sample / "spec" / "c" / "0" / "0" / "0"
    data = bytearray(file.read_bytes())
    for where, message in ((len(data) // 3, "chunk 0: crc32c"), (len(data) - 10, "chunk index")):
        corrupt = data.copy()
        corrupt[where] ^= 0xFF
        file.write_bytes(bytes(corrupt))
        with pytest.raises(ValueError, match=f"{file}: {message}"):
            read_zarr_array(sample / "spec")
    file.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_zarr_array(sample / "spec")


def test_a_zarr_array_in_another_layout_is_read_by_zarr(tmp_path):
    import zarr

    from specbert.pipeline.shards import read_zarr_array

    values = np.arange(2 * 300 * 7, dtype=np.float16).reshape(2, 300, 7)
    zarr.create_array(str(tmp_path / "plain"), data=values, chunks=(1, 100, 7))  # no sharding, zstd
    assert np.array_equal(read_zarr_array(tmp_path / "plain"), values)
