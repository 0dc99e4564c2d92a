"""The ``specbert`` command line: one subcommand per job, thin wrappers over the packages.

Every subcommand takes ``--config NAME|FILE`` (a preset in configs/ or a YAML path) and any
number of ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from configs import ConfigError, load_config, preset_names


def config_options(command):
    """Add ``--config`` and ``--set`` to a command and pass it the loaded ``cfg``."""

    @click.option(
        "--config", "config_source", metavar="NAME|FILE", default=None,
        help=f"Preset name ({', '.join(preset_names())}) or a YAML file. Default: built-in defaults.",
    )
    @click.option(
        "--set", "overrides", metavar="KEY=VALUE", multiple=True,
        help="Override one setting, e.g. --set loader.mask_rate=0.3 (repeatable).",
    )
    @functools.wraps(command)
    def wrapper(*args, config_source, overrides, **kwargs):
        try:
            cfg = load_config(config_source, overrides)
        except ConfigError as err:
            raise click.BadParameter(str(err), param_hint="--config/--set") from None
        return command(*args, cfg=cfg, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="specbert", message="%(prog)s %(version)s")
def main():
    """specbert: turn your own music library into a vocal-removal model.

    \b
    1. ingest     a music library into STFT shards (Dask, several drives)
    2. pretrain   BERT-style on those shards (masked spans, next segment)
    3. finetune   on mixture/stems pairs, then export, separate and evaluate
    """


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Same seed, same files.")
@click.option("--artists", default=3, show_default=True)
@click.option("--albums", "albums_per_artist", default=2, show_default=True, help="Albums per artist.")
@click.option("--songs", "songs_per_album", default=2, show_default=True, help="Songs per album.")
@click.option("--seconds", default=12.0, show_default=True, help="Length of each song.")
@click.option("--stems", "stem_tracks", default=4, show_default=True,
              help="Tracks of the MUSDB18-HQ-layout stems set written to OUT/stems (0: none).")
@config_options
def example(out, seed, artists, albums_per_artist, songs_per_album, seconds, stem_tracks, cfg):
    """Write a small synthetic example library to OUT (no downloads).

    OUT/library holds Artist/Album/NN - Title.{flac,mp3,ogg,wav}; OUT/stems holds
    train/ and test/ tracks with mixture, vocals, drums, bass, other and accompaniment.
    """
    from pipeline.example_library import write_example_library, write_example_stems

    rate = cfg.audio.sample_rate
    files = write_example_library(out / "library", seed=seed, artists=artists,
                                  albums_per_artist=albums_per_artist, songs_per_album=songs_per_album,
                                  seconds=seconds, sample_rate=rate)
    click.echo(f"wrote {len(files)} songs ({len(files) * seconds / 60:.1f} min) under {out / 'library'}")
    if stem_tracks:
        root = write_example_stems(out / "stems", seed=seed, tracks=stem_tracks, seconds=seconds,
                                   sample_rate=rate)
        click.echo(f"wrote {stem_tracks} stem tracks under {root}")


@main.command("show-config")
@config_options
def show_config(cfg):
    """Print the resolved configuration as YAML (defaults + --config + --set)."""
    import yaml

    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
