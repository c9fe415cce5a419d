"""``siammae-prepare``: videos -> JPEG frames in tar shards + index, for fast pretraining; one call of
:func:`siammae.train.prepare.prepare`.

    siammae-prepare /data/kinetics/train --out /data/k400-256 --workers 16
    siammae-train --data /data/k400-256 --out runs/vits16
"""

from __future__ import annotations

import click

from siammae.cli.options import CONTEXT, Command, errors


@click.command(cls=Command, context_settings={**CONTEXT, "show_default": True})
@click.argument("videos", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder (new or empty, or one an earlier run left to resume).")
@click.option("--short-side", type=int, default=256, help="Resize frames (down only) to this short side.")
@click.option("--quality", type=int, default=90, help="JPEG quality.")
@click.option("--videos-per-shard", type=int, default=64, help="Videos per tar shard (the unit of resuming).")
@click.option("--workers", type=int, default=1, help="Processes preparing shards in parallel.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def cli(videos, out, short_side, quality, videos_per_shard, workers, quiet):
    """Prepare VIDEOS (folders searched recursively, video files, frame folders, .txt lists) for siammae-train.

    Run it again with the same arguments to resume: finished shards are kept.
    """
    from siammae.train.prepare import PrepareSettings, prepare  # deferred: --help stays fast

    with errors("run the same command again to continue (finished shards are kept)"):
        settings = PrepareSettings(short_side=short_side, quality=quality, videos_per_shard=videos_per_shard)
        result = prepare(videos, out, settings, workers=workers, quiet=quiet)
    click.echo(result.summary())


def main(argv=None):
    cli.main(args=argv, prog_name="siammae-prepare")


if __name__ == "__main__":
    main()
