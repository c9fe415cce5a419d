"""``siammae-weights``: the pretrained weights siammae knows by name, their cache, their download.

    siammae-weights list                          # name, architecture, size, licence, DAVIS J&F, cached or not
    siammae-weights download dino-vits16 dino-vits8
    siammae-weights path dino-vits8               # where the file is (or goes); downloads nothing
    siammae-weights import ~/dino_deitsmall8_pretrain.pth dino-vits8   # a file fetched elsewhere, into the cache

Each subcommand is one call of :mod:`siammae.model.weights`; an unknown name is one ``error:`` line suggesting the
closest known names, exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from siammae.cli.options import CONTEXT, Group, errors


@click.group(cls=Group, context_settings=CONTEXT)
def main():
    """Pretrained weights by name: dino-vits16, dino-vits8, dino-vitb16, dino-vitb8, mae-vitb16, siammae-cpu (in the
    package), timm:<name>, hf:<owner>/<repo>/<file>. Files are cached in $TORCH_HOME/hub/checkpoints (timm: and hf:
    in the Hugging Face cache) and checked by sha256; SIAMMAE_OFFLINE=1 or HF_HUB_OFFLINE=1 turns downloads off."""


@main.command("list")
def list_cmd():
    """Known names: architecture, size ("in the package" for siammae-cpu), licence, DAVIS J&F (source paper; for
    siammae-cpu its card), cached or not; then the shipped model's card in one line."""
    from siammae.model.weights import weights_table

    rows = weights_table()
    header = ("name", "arch", "size", "licence", "DAVIS J&F", "hash", "cached")
    table = [
        (
            r["name"] + (" (default)" if r["default"] else ""),
            r["arch"],
            _size(r),
            r["licence"],
            f"{r['davis_jf']:.1f}" if r["davis_jf"] is not None else "-",
            "pinned" if r["pinned"] else ("unverified" if r["kind"] != "shipped" else "-"),
            ("yes" if r["cached"] else "no") if r["kind"] != "shipped" else "-",
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["summary"]:
            click.echo(f"\n{r['name']}: {r['summary']}")
    click.echo("\nalso: timm:<name> (timm's pretrained weights), hf:<owner>/<repo>/<file> (Hugging Face hub)")


def _size(row: dict) -> str:
    if row["kind"] == "shipped":
        return "in the package" if row["cached"] else "not in this build"
    return f"{row['size_mb']:.0f} MB" if row["cached"] else f"~{row['size_mb']:.0f} MB"


@main.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def download(names, quiet):
    """Download NAMES into the cache (a cached file is checked, not fetched again); print each path and whether
    its hash was verified against a published one."""
    from siammae.model.weights import download_weights

    with errors():
        for name in names:
            prov = download_weights(name, progress=not quiet)
            click.echo(f"{name}: {prov.path} ({prov.status}: {prov.check})")


@main.command()
@click.argument("name")
def path(name):
    """Print where the file of NAME is, or goes when downloaded; says on stderr when it is not there. Downloads
    nothing."""
    from siammae.model.weights import weights_location

    with errors():
        where, present = weights_location(name)
    click.echo(str(where))
    if not present:
        from siammae.model.weights import WEIGHTS

        if name in WEIGHTS and WEIGHTS[name].kind == "shipped":
            click.echo(f"{name} is not in this build of siammae", err=True)
        else:
            click.echo(f"{name} is not downloaded yet (siammae-weights download {name})", err=True)


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("name")
def import_cmd(file, name):
    """Put FILE (fetched elsewhere, e.g. for a machine without network) into the cache as NAME, where the commands
    look for it. The file must load as NAME's architecture and match the hash its publisher states, where one is
    stated; otherwise its sha256 is recorded and reported "unverified"."""
    from siammae.model.weights import import_weights

    with errors():
        prov = import_weights(file, name)
    click.echo(f"{name}: {prov.path} ({prov.status}: {prov.check})")


if __name__ == "__main__":
    main()
