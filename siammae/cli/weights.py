"""``siammae-weights``: the pretrained weights siammae knows by name, their cache, their download.

    siammae-weights list                          # name, architecture, size, licence, DAVIS J&F, cached or not
    siammae-weights download dino-vits16 dino-vits8
    siammae-weights path dino-vits8               # the local file (downloaded first if needed)

Each subcommand is one call of :mod:`siammae.model.weights`; an unknown name is one ``error:`` line suggesting the
closest known names, exit status 2.
"""

from __future__ import annotations

import click

from siammae.cli.options import CONTEXT, Group, errors


@click.group(cls=Group, context_settings=CONTEXT)
def main():
    """Pretrained weights by name: dino-vits16, dino-vits8, dino-vitb16, dino-vitb8, mae-vitb16, timm:<name>,
    hf:<owner>/<repo>/<file>. Files are cached in $TORCH_HOME/hub/checkpoints (timm: and hf: in the Hugging Face
    cache) and checked by sha256; SIAMMAE_OFFLINE=1 or HF_HUB_OFFLINE=1 turns downloads off."""


@main.command("list")
def list_cmd():
    """Known names: architecture, size, licence, DAVIS-2017 J&F (source paper), cached or not."""
    from siammae.model.weights import weights_table

    rows = weights_table()
    header = ("name", "arch", "size", "licence", "DAVIS J&F", "cached")
    table = [
        (
            r["name"] + (" (default)" if r["default"] else ""),
            r["arch"],
            f"{r['size_mb']:.0f} MB" if r["cached"] else f"~{r['size_mb']:.0f} MB",
            r["licence"],
            f"{r['davis_jf']:.1f}" if r["davis_jf"] is not None else "-",
            "yes" if r["cached"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    click.echo("\nalso: timm:<name> (timm's pretrained weights), hf:<owner>/<repo>/<file> (Hugging Face hub)")


@main.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def download(names, quiet):
    """Download NAMES into the cache (a cached file is checked, not fetched again); print each path."""
    from siammae.model.weights import weights_path

    with errors():
        for name in names:
            click.echo(f"{name}: {weights_path(name, progress=not quiet)}")


@main.command()
@click.argument("name")
def path(name):
    """Print the local file of NAME (downloaded first if needed)."""
    from siammae.model.weights import weights_path

    with errors():
        click.echo(str(weights_path(name)))


if __name__ == "__main__":
    main()
