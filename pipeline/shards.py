"""Shard writers and readers (what a sample holds, its record and the file names: ``pipeline.schema``).

``decode_sample`` returns a ``schema.DecodedSample``: float16 views of the stored members in the
project's order.  Decoding a segment costs more than cropping it, so a loader should take more than
one crop per decoded segment.

Files (``schema.shard_name``) are written as ``.<name>.partial`` in the same folder, fsync'ed and
renamed when complete.
- tar (read by webdataset): ``<key>.json`` + ``<key>.<member>`` holding ``codec.encode`` bytes (no
  pickles); written with the standard library's tarfile, so writers need not import webdataset.
- zarr v3: one group per shard, one subgroup per sample (attribute ``record``) with one float16 array
  per member holding ``codec.quantize`` values, chunks of 1024 frames (``codecs.zarr_compressors``:
  blosc + crc32c), one file per array (sharding codec). ``iter_zarr_shard`` yields each sample's
  group, which ``decode_sample`` reads into the tar's raw form with arrays instead of bytes (so one
  ``decode_sample`` serves both formats, and a corrupt zarr sample fails alone, like a tar's); it
  reads that layout itself (``read_zarr_array``: zarr's async read path takes twice the CPU), any
  other with zarr.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numcodecs import blosc

from specbert.pipeline.codecs import Codec, crc32c, get_codec, zarr_compressors
from specbert.pipeline.schema import STEMS, TAR, ZARR, DecodedSample, SampleRecord

ZARR_CHUNK_FRAMES = 1024  # one training crop touches <= 2 chunks; reads 18 % less CPU than 256
# bytes tarfile copies per write: a whole member (in memory already) in one write; tarfile's default
# of 16 KB takes 2.7x the time to write a 1.5 MB member
_MEMBER_WRITE = 1 << 30

def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete (hidden, same folder)."""
    return path.with_name(f".{path.name}.partial")


def open_shard(path: Path, fmt: str, codec: Codec):
    """A writer for a new shard at ``path`` (written under its partial name until ``commit``)."""
    return {TAR: TarShard, ZARR: ZarrShard}[fmt](Path(path), codec)


class TarShard:
    """A webdataset tar: ``write`` samples, then ``commit`` (fsync + rename) or ``abort``."""

    def __init__(self, path: Path, codec: Codec):
        self.path, self.codec, self.temp = path, codec, partial_path(path)
        self._file = open(self.temp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT,
                                 copybufsize=_MEMBER_WRITE)

    def write(self, key: str, record: SampleRecord, arrays: dict[str, np.ndarray]) -> None:
        """Add one sample: ``arrays`` maps member names to stored-layout float16 arrays."""
        self._add(f"{key}.json", json.dumps(record).encode())
        for name, array in arrays.items():
            self._add(f"{key}.{name}", self.codec.encode(array, record["max_magnitude"]))

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self) -> int:
        """Make the shard visible; return its size in bytes."""
        self._tar.close()  # writes the end-of-archive blocks; the file stays ours to close
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return _publish(self.temp, self.path)

    def abort(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        self.temp.unlink(missing_ok=True)


class ZarrShard:
    """A zarr v3 group with one subgroup per sample; same protocol as ``TarShard``."""

    def __init__(self, path: Path, codec: Codec):
        import zarr  # imported by zarr shards only (a second per worker otherwise)

        self.path, self.codec, self.temp = path, codec, partial_path(path)
        self._root = zarr.open_group(self.temp, mode="w", zarr_format=3)

    def write(self, key: str, record: SampleRecord, arrays: dict[str, np.ndarray]) -> None:
        group = self._root.create_group(key, attributes={"record": record})
        for name, array in arrays.items():
            chunks = (array.shape[0], ZARR_CHUNK_FRAMES, *array.shape[2:])
            frames = -(-array.shape[1] // ZARR_CHUNK_FRAMES) * ZARR_CHUNK_FRAMES
            group.create_array(name, data=self.codec.quantize(array, record["max_magnitude"]), chunks=chunks,
                               shards=(array.shape[0], frames, *array.shape[2:]),
                               compressors=zarr_compressors())

    def commit(self) -> int:
        for folder, _, files in os.walk(self.temp):
            for name in files:
                with open(os.path.join(folder, name), "rb+") as f:
                    os.fsync(f.fileno())
            _fsync_folder(folder)  # its entries: the files and subfolders just written
        return _publish(self.temp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)


def _publish(temp: Path, path: Path) -> int:
    """Rename ``temp`` to ``path`` durably; return the bytes it holds."""
    os.rename(temp, path)
    _fsync_folder(path.parent)
    return shard_bytes(path)


def _fsync_folder(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shard_bytes(path: Path) -> int:
    """Size of a shard file, or the total of a zarr shard's files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def remove_shard(path: Path) -> None:
    if Path(path).is_dir():
        shutil.rmtree(path)
    else:
        Path(path).unlink(missing_ok=True)


def decode_sample(raw: dict) -> DecodedSample:
    """A raw sample (from ``webdataset.WebDataset`` or ``iter_zarr_shard``) -> ``{"key", "record",
    "spec"}`` or ``{"key", "record", "stems"}`` with float16 views (``pipeline.schema``)."""
    if "group" in raw:
        raw = read_zarr_sample(raw)
    record: SampleRecord = json.loads(raw["json"])
    codec = get_codec(record["codec"])
    views = {}
    for name in record["members"]:
        value = raw[name]
        stored = value if isinstance(value, np.ndarray) else \
            codec.decode(value, record["shape"], checksum=record.get("checksum"))
        views[name] = stored.transpose(0, 2, 1) if stored.ndim == 3 else stored.transpose(3, 0, 2, 1)
    out = DecodedSample(key=raw["__key__"], record=record)
    if record["kind"] == STEMS:
        out["stems"] = views
    else:
        out["spec"] = views["spec"]
    return out


def to_complex(spec: np.ndarray) -> np.ndarray:
    """float16 ``[2 (re, im), ...]`` (e.g. a crop of a decoded view) -> complex64 ``[...]``."""
    out = np.empty(spec.shape[1:], np.complex64)
    out.real, out.imag = spec[0], spec[1]
    return out


def iter_tar_shard(path: str | Path) -> Iterator[dict]:
    """Raw samples of a tar shard, as ``webdataset.WebDataset`` yields them (bytes values)."""
    with tarfile.open(path, "r|") as tar:
        sample: dict = {}
        for member in tar:
            key, _, ext = member.name.partition(".")
            if sample and key != sample["__key__"]:
                yield sample
                sample = {}
            if not sample:
                sample = {"__key__": key, "__url__": str(path)}
            sample[ext] = tar.extractfile(member).read()
        if sample:
            yield sample


def iter_zarr_shard(path: str | Path) -> Iterator[dict]:
    """The samples of a zarr shard in key order, each as its group folder (``"group"``): nothing is
    read until ``decode_sample`` (``read_zarr_sample``), so the error of a corrupt sample is its own
    and the shard's other samples are still read, as in a tar."""
    root = Path(path)
    for key in sorted(d.name for d in root.iterdir() if (d / "zarr.json").is_file()):
        yield {"__key__": key, "__url__": str(path), "group": root / key}


def read_zarr_sample(raw: dict) -> dict:
    """A zarr sample of ``iter_zarr_shard`` in the tar's form, with float16 arrays as member values:
    the record from the group's metadata, the arrays by ``read_zarr_array``."""
    group = raw["group"]
    record = json.loads((group / "zarr.json").read_bytes())["attributes"]["record"]
    return {"__key__": raw["__key__"], "__url__": raw["__url__"], "json": json.dumps(record).encode(),
            **{name: read_zarr_array(group / name) for name in record["members"]}}


_DEFAULT_KEYS = {"name": "default", "configuration": {"separator": "/"}}
_NO_CHUNK = 2**64 - 1  # a sharding index entry (offset and size) of a chunk never written


def _own_sharding(meta: dict) -> dict | None:
    """The sharding codec's configuration if ``meta`` (an array's zarr.json) is ``ZarrShard``'s layout:
    float16 in one shard of little-endian bytes -> blosc -> crc32c chunks, the index at the end; else None."""
    codecs = meta["codecs"]
    if [c["name"] for c in codecs] != ["sharding_indexed"] or meta["chunk_grid"]["name"] != "regular":
        return None
    config, grid = codecs[0]["configuration"], meta["chunk_grid"]["configuration"]
    names = [c["name"] for c in config["codecs"]], [c["name"] for c in config["index_codecs"]]
    ours = (names == (["bytes", "blosc", "crc32c"], ["bytes", "crc32c"])
            and config["codecs"][0]["configuration"]["endian"] == "little"
            and config["index_location"] == "end" and meta["data_type"] == "float16"
            and meta["chunk_key_encoding"] == _DEFAULT_KEYS
            and all(s >= n for s, n in zip(grid["chunk_shape"], meta["shape"], strict=True)))  # one shard
    return config if ours else None


def read_zarr_array(folder: Path) -> np.ndarray:
    """A zarr v3 array as ``ZarrShard`` lays it out, read and checked without zarr's async machinery
    (which takes about twice the CPU): one shard file (the sharding codec: chunks of
    little-endian float16, blosc-compressed, each followed by its crc32c; at the end the chunk index
    and its crc32c). Any other layout is read by zarr. ValueError (naming the file) for corrupt bytes."""
    meta = json.loads((folder / "zarr.json").read_bytes())
    config = _own_sharding(meta)
    if config is None:
        import zarr

        return zarr.open_array(str(folder), mode="r")[...]
    shape, shard = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    chunk = config["chunk_shape"]
    grid = [-(-n // c) for n, c in zip(shard, chunk, strict=True)]
    fill = float(meta["fill_value"])
    file = folder / "c" / Path(*["0"] * len(shape))  # the one shard's key
    if not file.exists():  # nothing but the fill value was written
        return np.full(shape, fill, np.float16)
    data = np.frombuffer(file.read_bytes(), np.uint8)
    index_size = 16 * int(np.prod(grid)) + 4
    index = data[-index_size:]
    if len(data) < index_size or crc32c(index[:-4]) != bytes(index[-4:]):
        raise ValueError(f"{file}: chunk index checksum mismatch (corrupt or truncated shard)")
    out = np.empty(shard, np.float16)
    for n, (offset, size) in enumerate(index[:-4].view("<u8").reshape(-1, 2).tolist()):
        corner = np.unravel_index(n, grid)
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(corner, chunk, strict=True))
        if offset == size == _NO_CHUNK:
            out[region] = fill
            continue
        stored = data[offset : offset + size]
        inside = 4 <= size and offset + size <= len(data) - index_size
        if not inside or crc32c(stored[:-4]) != bytes(stored[-4:]):
            raise ValueError(f"{file}: chunk {n}: crc32c checksum mismatch (corrupt bytes)")
        out[region] = np.frombuffer(blosc.decompress(stored[:-4]), np.float16).reshape(chunk)
    return out[tuple(slice(0, n) for n in shape)]


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Decoded samples of a tar or zarr shard, in stored order."""
    raw = iter_zarr_shard(path) if Path(path).is_dir() else iter_tar_shard(path)
    return map(decode_sample, raw)


def read_json_records(path: str | Path) -> list[dict]:
    """Just the records of a shard (no data decoded): for inspect and tests."""
    if Path(path).is_dir():
        import zarr

        root = zarr.open_group(str(path), mode="r")
        return [root[key].attrs["record"] for key in sorted(root.group_keys())]
    with tarfile.open(path, "r|") as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
