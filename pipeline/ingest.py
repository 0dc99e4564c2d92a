"""The ingest driver: scan -> identify (Dask) -> dedupe, split -> one Dask task per shard -> manifest.

The driver holds no audio: workers hash and tag files (``identify_batch``), then each task writes one
shard from a group of tracks (``write_shard``) and returns small metadata, which the driver appends to
the manifest as tasks complete. A task whose worker dies (KilledWorker) is split in two and resubmitted,
down to single tracks, which are then recorded failed; the job runs to the end. Only a manifest that
cannot be written (its drive full) stops it, with a one-line error: every line appended before stays
readable (``ManifestWriter.append``), and running the same command again finishes the rest.

Resume: a file whose path, size and mtime match a manifest entry that is ok or skipped is done; a
failed one is retried. Before anything runs, every ``.partial`` file of this dataset in the output
folders is deleted, and so is every complete shard of this dataset that the manifest does not list
(written by a killed run after its last manifest line; its tracks are not done, so they are redone).
Shard names carry the dataset id, so shards of other datasets in the same folders are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from specbert.configs import Config, ConfigError
from specbert.pipeline.codecs import get_codec
from specbert.pipeline.drives import Rotation
from specbert.pipeline.manifest import Manifest, ManifestError, ManifestWriter
from specbert.pipeline.scan import assign_split, scan_library
from specbert.pipeline.schema import (
    BATCH_LINE,
    CONFIG_LINE,
    FAILED,
    OK,
    SHARD_NAME,
    SKIPPED,
    SPECTROGRAM,
    STEMS,
    BatchLine,
    ManifestConfig,
    shard_name,
)
from specbert.pipeline.shards import remove_shard
from specbert.pipeline.stems import scan_instrumentals, scan_stems
from specbert.pipeline.tasks import ShardJob, failed_tracks, identify_batch, one_line, write_shard

IDENTITY = ("id", "artist", "album", "title", "declared")  # what identify adds, reused on resume
SETTINGS = ("keep_complex", "segment_frames")  # ingest settings that must not change within a dataset
FALLBACK_BYTES_PER_SECOND = 176_400  # duration estimate for files without one: assume 16-bit stereo PCM
MAX_LISTED = 50
LOCAL_CLUSTER_CONFIG = {
    # a worker holds only the task it runs, so a worker's death blames that task alone
    "distributed.scheduler.worker-saturation": 1.0,
    # Dask's default MALLOC_TRIM_THRESHOLD_ turns every array allocation into an mmap with page faults:
    # 1.5x the CPU time of the STFT pipeline; and its profiler samples every 10 ms
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    # an idle 2-worker cluster polled 12 % of a core (event-loop ticks every 20 ms, memory monitors
    # every 100 ms, system monitors every 500 ms); with these, 2.5 %
    "distributed.admin.tick.interval": "500ms",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}
TASKS_PER_WORKER = 4  # a small library is cut into more, smaller shards so every worker has work


@dataclass
class Summary:
    """What one run did; ``lines()`` is the report, ``exit_code`` is 1 when any file failed or a folder
    could not be read."""

    manifest: Path
    ignored: dict[str, list[str]] = field(default_factory=dict)  # left out by the scan: reason -> paths
    unused: list[str] = field(default_factory=list)  # output folders not used, with why
    removed: int = 0
    already: int = 0
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    shards: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, shards: Iterable[dict], tracks: Iterable[dict]) -> None:
        for shard in shards:
            self.shards += 1
            self.bytes += shard["bytes"]
        for track in tracks:
            self.counts[track["status"]] += 1
            if track["status"] == OK:
                self.seconds += track["duration"]
            elif not str(track["reason"]).startswith("duplicate of"):
                self.problems.append(f"{track['status']}: {track['path']}: {track['reason']}")

    @property
    def unreadable(self) -> list[str]:
        """Folders the scan could not list (their files are missing from the run)."""
        return [f"failed: {path}: {reason}" for reason, paths in self.ignored.items()
                if reason.startswith("unreadable") for path in paths]

    @property
    def exit_code(self) -> int:
        return 1 if self.counts[FAILED] or self.unreadable else 0

    def lines(self) -> list[str]:
        c = self.counts
        left_out = "".join(f"; {len(paths)} {reason}" for reason, paths in sorted(self.ignored.items()))
        out = [f"ingested {c[OK]} tracks ({self.seconds / 3600:.2f} h) into {self.shards} shards "
               f"({self.bytes / 1e9:.2f} GB); {c[SKIPPED]} skipped, {c[FAILED]} failed, {self.already} "
               f"already done{left_out}; {self.removed} stale shard files removed",
               f"manifest: {self.manifest}"]
        out += [f"output folder not used: {folder}" for folder in self.unused]
        out += self.unreadable
        out += self.problems[:MAX_LISTED]
        if len(self.problems) > MAX_LISTED:
            out.append(f"... and {len(self.problems) - MAX_LISTED} more (see the manifest)")
        return out


class IngestError(RuntimeError):
    """The run cannot start (bad settings, manifest in use or incompatible); one-line message."""


def ingest_library(roots, outs, cfg: Config, manifest=None, progress=True, log=print) -> Summary:
    """``specbert ingest``: every audio file under ``roots`` into spectrogram shards in ``outs``."""
    items, ignored = scan_library(roots)
    return run_ingest(SPECTROGRAM, items, ignored, outs, cfg, manifest, progress, log)


def ingest_stems(roots, outs, cfg: Config, manifest=None, progress=True, log=print) -> Summary:
    """``specbert ingest-stems``: stems datasets under ``roots`` into complex stems shards; with
    ``ingest.synthetic_vocals``, the instrumental libraries under ``roots`` with synthetic voices."""
    items, ignored = scan_instrumentals(roots) if cfg.ingest.synthetic_vocals else scan_stems(roots)
    return run_ingest(STEMS, items, ignored, outs, cfg, manifest, progress, log)


def run_ingest(kind: str, items: list[dict], ignored: dict[str, list[str]], outs, cfg: Config,
               manifest=None, progress: bool = True, log: Callable[[str], None] = print) -> Summary:
    """Ingest scanned ``items`` into shards under the ``outs`` folders; see the module docstring."""
    outs = [os.path.abspath(o) for o in outs]
    for folder in outs:
        os.makedirs(folder, exist_ok=True)
    manifest = Path(manifest or Path(outs[0]) / "manifest.jsonl").absolute()
    summary = Summary(manifest, ignored=ignored)
    header = _header(kind, cfg)
    try:  # a manifest that cannot be opened or appended to (in use, incompatible, its drive full) stops
        # the run; every line appended before stays readable, and the next run finishes the rest
        writer = ManifestWriter(manifest, header, check=lambda old: _check_compatible(old, header, manifest))
        with writer, _LazyClient(cfg, log) as client:
            _ingest(items, outs, cfg, writer, client, summary, progress, log)
    except ManifestError as err:
        raise IngestError(str(err)) from None
    return summary


def _ingest(items, outs, cfg, writer, client, summary, progress, log) -> None:
    """Clean the outputs, settle what the manifest already says, identify and dedupe the rest, write it."""
    previous = writer.manifest
    summary.removed = clean_outputs(outs, previous)
    todo, known, settled = _triage(items, previous, summary)
    if todo:
        log(f"identifying {len(todo)} files (content hash, tags)")
        known += _identify(client.get(), todo)
    pending, more = _dedupe(known, previous, cfg, summary)
    settled += more
    if settled:
        writer.append(BatchLine(type=BATCH_LINE, shards=[], tracks=settled))
        summary.add([], settled)
    if pending:
        try:
            rotation = Rotation(outs, cfg.ingest.reserve_bytes)
        except OSError as err:
            raise IngestError(f"{err.strerror} (reserve_bytes={cfg.ingest.reserve_bytes})") from None
        summary.unused = rotation.unused
        _run(client.get(), pending, rotation, cfg, previous, writer, summary, progress)


def _header(kind: str, cfg: Config) -> ManifestConfig:
    settings = cfg.to_dict()
    return ManifestConfig(type=CONFIG_LINE, dataset=secrets.token_hex(4), kind=kind, audio=settings["audio"],
                          ingest=settings["ingest"], created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _check_compatible(old: dict, new: dict, path: Path) -> None:
    """A dataset keeps one kind, audio settings and segment layout across runs."""
    changed = [key for key in ("kind", "audio") if old.get(key) != new[key]]
    changed += [f"ingest.{key}" for key in SETTINGS if old.get("ingest", {}).get(key) != new["ingest"][key]]
    if changed:
        raise ManifestError(f"{path} was made with other {', '.join(changed)}; use another --out/--manifest")


def clean_outputs(outs: list[str], previous: Manifest) -> int:
    """Delete this dataset's partial shards and complete shards the manifest does not list."""
    dataset, listed, removed = previous.config["dataset"], {s["path"] for s in previous.shards()}, 0
    for folder in outs:
        for entry in os.scandir(folder):
            partial = entry.name.startswith(".") and entry.name.endswith(".partial")
            match = SHARD_NAME.fullmatch(entry.name[1 : -len(".partial")] if partial else entry.name)
            if match and match.group(4) == dataset and (partial or entry.path not in listed):
                remove_shard(Path(entry.path))
                removed += 1
    return removed


def _triage(items: list[dict], previous: Manifest, summary: Summary) -> tuple[list, list, list]:
    """Split scanned items into (to identify, identified from the manifest, settled at scan time)."""
    todo, known, settled = [], [], []
    for item in items:
        old = previous.track(item["path"])
        same = old is not None and _fingerprint(old) == _fingerprint(item)
        if same and old["status"] in (OK, SKIPPED):
            summary.already += 1
        elif item.get("status") == FAILED:
            settled.append(item)
        elif same and "id" in old:
            known.append({**item, **{key: old[key] for key in IDENTITY if key in old}})
        else:
            todo.append(item)
    return todo, known, settled


def _identify(client, items: list[dict]) -> list[dict]:
    """Hash and tag ``items`` on the workers, in batches."""
    from distributed import as_completed

    size = max(1, min(256, math.ceil(len(items) / (8 * _worker_count(client)))))
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    futures = client.map(identify_batch, batches, pure=False, retries=1)
    return [item for future in as_completed(futures) for item in future.result()]


def _fingerprint(item: dict) -> tuple:
    return item.get("size"), item.get("mtime_ns")


def _dedupe(items: list[dict], previous: Manifest, cfg: Config, summary: Summary) -> tuple[list, list]:
    """(items to ingest, with their split; failed or duplicate items, settled)."""
    done = {t["id"]: t for t in previous.tracks() if t["status"] == OK}
    first: dict[str, str] = {}
    pending, settled = [], []
    for item in sorted(items, key=lambda i: i["path"]):
        if item.get("status") == FAILED:
            settled.append(item)
            continue
        if item["id"] in done and done[item["id"]]["path"] == item["path"]:  # touched, same content
            summary.already += 1
            continue
        original = done[item["id"]]["path"] if item["id"] in done else first.get(item["id"])
        if original is not None:
            settled.append({**item, "status": SKIPPED, "reason": f"duplicate of {original}"})
            continue
        first[item["id"]] = item["path"]
        split = item.get("split") or assign_split(item["artist"], item["album"], cfg.ingest.val_fraction,
                                                  cfg.ingest.split_by)
        pending.append({**item, "split": split})
    return pending, settled


def estimate_bytes(item: dict, cfg: Config) -> int:
    """Expected stored bytes of a track, to group tracks into shards of ``ingest.shard_bytes``."""
    audio, ingest = cfg.audio, cfg.ingest
    files = len(set(item.get("files", {}).values())) or 1
    seconds = item.get("declared") or item["size"] / FALLBACK_BYTES_PER_SECOND / files
    members = len(ingest.stems) if item["kind"] == STEMS else 1
    parts = 2 if item["kind"] == STEMS or ingest.keep_complex else 1
    raw = seconds * audio.frames_per_second * audio.channels * audio.bins * 2 * parts * members
    return int(raw * get_codec(ingest.codec).typical_ratio)


def _groups(pending: list[dict], cfg: Config, workers: int) -> list[tuple[str, list[dict], int]]:
    """``(split, items, estimated bytes)`` per shard, largest first (the last tasks are the short
    ones): albums kept together, ~``shard_bytes`` each, or less when that leaves a worker fewer
    than ``TASKS_PER_WORKER`` tasks."""
    estimates = {item["path"]: estimate_bytes(item, cfg) for item in pending}
    target = min(cfg.ingest.shard_bytes, sum(estimates.values()) // (TASKS_PER_WORKER * workers) + 1)
    order = sorted(pending, key=lambda i: (i["split"], i["artist"], i["album"], i["path"]))
    groups = []
    for split, items in itertools.groupby(order, key=lambda i: i["split"]):
        group, total = [], 0
        for item in items:
            group.append(item)
            total += estimates[item["path"]]
            if total >= target:
                groups.append((split, group, total))
                group, total = [], 0
        if group:
            groups.append((split, group, total))
    return sorted(groups, key=lambda group: -group[2])


def _run(client, pending, rotation, cfg, previous, writer, summary, progress) -> None:
    """One task per shard; record each result as it completes; split the tasks of dead workers."""
    from distributed import KilledWorker, as_completed
    from tqdm import tqdm

    used = [int(SHARD_NAME.fullmatch(Path(s["path"]).name).group(3)) for s in previous.shards()]
    numbers = itertools.count(max(used, default=-1) + 1)
    kind, dataset = previous.config["kind"], previous.config["dataset"]

    def submit(split: str, items: list[dict], estimate: int):
        name = shard_name(kind, split, next(numbers), dataset, cfg.ingest.format)
        job = ShardJob(name, split, tuple(items), tuple(rotation.order()), estimate)
        future = client.submit(write_shard, job, cfg, key=f"shard-{name}", pure=False, retries=1)
        futures[future] = job
        return future

    futures: dict = {}
    for split, items, estimate in _groups(pending, cfg, _worker_count(client)):
        submit(split, items, estimate)
    done = as_completed(list(futures))
    with tqdm(total=len(pending), unit="track", disable=not progress, desc="ingest") as bar:
        for future in done:
            job = futures.pop(future)
            try:
                result = future.result()
            except KilledWorker:
                if len(job.items) > 1:
                    half = len(job.items) // 2
                    for part in (job.items[:half], job.items[half:]):
                        done.add(submit(job.split, list(part), job.estimate * len(part) // len(job.items)))
                    continue
                reason = "a worker died while processing it (crash or out of memory)"
                result = {"shard": None, "tracks": failed_tracks(job.items, reason)}
            except Exception as err:  # e.g. an output folder that cannot be written: its tracks fail
                result = {"shard": None, "tracks": failed_tracks(job.items, one_line(err))}
            for folder in result.get("full", []):
                rotation.drop(folder)
            shards = [result["shard"]] if result["shard"] else []
            writer.append(BatchLine(type=BATCH_LINE, shards=shards, tracks=result["tracks"]))
            summary.add(shards, result["tracks"])
            bar.update(len(job.items))


def _worker_count(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


class _LazyClient:
    """A Dask client made on first use: a LocalCluster, or ``ingest.scheduler``'s cluster."""

    def __init__(self, cfg: Config, log: Callable[[str], None]):
        self.cfg, self.log = cfg.ingest, log
        self._stack = contextlib.ExitStack()
        self._client = None

    def get(self):
        if self._client is None:
            self._client = self._stack.enter_context(self._connect())
        return self._client

    @contextlib.contextmanager
    def _connect(self):
        import dask
        from distributed import Client, LocalCluster

        if self.cfg.scheduler:
            try:
                client = Client(self.cfg.scheduler)
            except (OSError, TimeoutError) as err:
                raise IngestError(f"cannot reach the Dask scheduler {self.cfg.scheduler}: {one_line(err)}"
                                  ) from None
            with client:
                self.log(f"Dask scheduler {self.cfg.scheduler}, dashboard: {client.dashboard_link}")
                yield client
            return
        with dask.config.set(LOCAL_CLUSTER_CONFIG), \
                LocalCluster(n_workers=self.cfg.workers, threads_per_worker=1, processes=True,
                             dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            where = client.dashboard_link if _has_bokeh() else "(pip install bokeh for the Dask dashboard)"
            self.log(f"Dask LocalCluster, {self.cfg.workers} workers x 1 thread; dashboard: {where}")
            yield client

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def with_options(cfg: Config, **ingest) -> Config:
    """``cfg`` with the given ``ingest`` fields replaced (None leaves a field); ConfigError if invalid."""
    changes = {key: value for key, value in ingest.items() if value is not None}
    try:
        return dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **changes))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"ingest: {err}") from None
