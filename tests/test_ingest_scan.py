"""Library scan: recursion, symlink loops, tags or folders, content hashes, stable album split."""

import os
import shutil

import numpy as np
import soundfile as sf

from specbert.pipeline.scan import HIDDEN, NON_AUDIO, assign_split, identify, scan_library


def write(path, seconds=0.5, seed=0, **tags):
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = 0.1 * np.random.default_rng(seed).standard_normal((int(44100 * seconds), 2))
    with sf.SoundFile(path, "w", 44100, 2, format=path.suffix[1:].upper()) as f:
        for key, value in tags.items():
            setattr(f, key, value)
        f.write(wave)
    return path


def test_scan_recurses_ignores_non_audio_and_survives_symlink_loops(tmp_path):
    lib = tmp_path / "lib"
    a = write(lib / "Artist" / "Album" / "01 - Song.flac")
    write(lib / "Artist" / "Album" / "Disc 2" / "01 - More.wav", seed=1)
    (lib / "Artist" / "Album" / "cover.jpg").write_bytes(b"\xff\xd8 not audio")
    (lib / "Artist" / "Album" / ".hidden.flac").write_bytes(b"")
    (lib / "Artist" / "loop").symlink_to(lib, target_is_directory=True)
    (lib / "empty.mp3").write_bytes(b"")
    (lib / "gone.flac").symlink_to(tmp_path / "missing.flac")
    items, ignored = scan_library([lib])
    by_name = {os.path.basename(i["path"]): i for i in items}
    assert sorted(by_name) == ["01 - More.wav", "01 - Song.flac", "empty.mp3", "gone.flac"]
    assert ignored == {NON_AUDIO: [str(lib / "Artist" / "Album" / "cover.jpg")],
                       HIDDEN: [str(lib / "Artist" / "Album" / ".hidden.flac")]}
    assert by_name["empty.mp3"]["status"] == "failed" and by_name["empty.mp3"]["reason"] == "empty file"
    assert by_name["gone.flac"]["reason"].startswith("unreadable")
    assert by_name["01 - Song.flac"]["size"] == a.stat().st_size


def test_tags_win_over_folders_and_folders_fill_in(tmp_path):
    lib = tmp_path / "lib"
    album = lib / "Folder Artist" / "Folder Album"
    write(album / "x.flac", artist="Tag Artist", album="Tag Album", title="Tag Title")
    write(album / "02 - y.wav")
    items = {os.path.basename(i["path"]): identify(i) for i in scan_library([lib])[0]}
    assert (items["x.flac"]["artist"], items["x.flac"]["album"], items["x.flac"]["title"]) == \
        ("Tag Artist", "Tag Album", "Tag Title")
    assert (items["02 - y.wav"]["artist"], items["02 - y.wav"]["album"], items["02 - y.wav"]["title"]) == \
        ("Folder Artist", "Folder Album", "02 - y")
    assert abs(items["x.flac"]["declared"] - 0.5) < 0.01


def test_identical_bytes_share_an_id_and_different_audio_does_not(tmp_path):
    a = write(tmp_path / "a.flac")
    shutil.copy(a, tmp_path / "copy.flac")
    write(tmp_path / "b.flac", seed=2)
    ids = {os.path.basename(i["path"]): identify(i)["id"] for i in scan_library([tmp_path])[0]}
    assert ids["a.flac"] == ids["copy.flac"] != ids["b.flac"]
    assert len(ids["a.flac"]) == 16


def test_split_is_stable_and_near_the_requested_fraction():
    albums = [(f"artist {i // 4}", f"album {i}") for i in range(4000)]
    splits = [assign_split(artist, album, 0.2, "album") for artist, album in albums]
    assert splits == [assign_split(artist, album, 0.2, "album") for artist, album in albums]
    assert 0.17 < splits.count("validation") / len(splits) < 0.23
    by_artist = {}
    for (artist, album) in albums:
        by_artist.setdefault(artist, set()).add(assign_split(artist, album, 0.2, "artist"))
    assert all(len(sides) == 1 for sides in by_artist.values())
    assert assign_split("A", "B", 0.0, "album") == "train"
