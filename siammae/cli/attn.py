"""``siammae-attn``: the last block's [CLS] attention of a checkpoint, per head, over a video or an image.

    siammae-attn clip.mp4 --ckpt siammae.pt                      # clip_attn.mp4, a grid of every head
    siammae-attn frames/ --ckpt dino.pth --heads 0,2,5 --out maps/  # one PNG per frame
    siammae-attn photo.jpg --ckpt siammae.pt --heads mean --out photo_attn.png --size 480

The frames reach the encoder as ``siammae-track`` gives them for the same ``--preset`` / ``--size``.

The command is one :class:`~siammae.attention.job.AttnJob` (checked before torch loads, then
:func:`siammae.attention.maps.render_attention` on the one loader's model); bad input exits with status 2 and a
one-line ``error: ...``.
"""

from __future__ import annotations

import click

from siammae.cli.options import (
    CONTEXT,
    Command,
    Finite,
    arch_option,
    ckpt_option,
    device_option,
    dtype_option,
    errors,
    preset_option,
    size_option,
)
from siammae.data.colormaps import CMAPS
from siammae.propagation.config import default_preset


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("input", type=click.Path(path_type=str))
@ckpt_option()
@arch_option()
@click.option("--heads", default="all", show_default=True, help="Heads to show: all, mean, or indices such as 0,2,5.")
@click.option(
    "--out",
    type=click.Path(path_type=str),
    default=None,
    help="Output: .png / .jpg for an image; .mp4 or a folder (one PNG per frame) for a video or frame "
    "folder. Default: <INPUT name>_attn.png / .mp4 in the current folder.",
)
@preset_option(f"{default_preset()}, as siammae-track: the frames are encoded as the tracker encodes them")
@size_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Frames per forward pass.")
@device_option()
@dtype_option()
@click.option("--cmap", type=click.Choice(CMAPS), default="inferno", show_default=True, help="Heat-map colours.")
@click.option(
    "--alpha", type=Finite(), default=0.6, show_default=True, help="Heat-map opacity over the frame, in [0, 1]."
)
@click.option("--no-labels", is_flag=True, help="Do not write the head number on each tile.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def main(input, ckpt, arch, heads, out, preset, size, batch_size, device, dtype, cmap, alpha, no_labels, quiet):
    """Render the [CLS] attention of the last encoder block over INPUT (a video, a frame folder or an image)."""
    from siammae.allocator import tune_cpu_allocator
    from siammae.attention.job import AttnJob

    tune_cpu_allocator()  # the process's malloc, once, at the command's entry (opt-out: SIAMMAE_NO_MALLOC_TUNING=1)
    job = AttnJob(input=input, ckpt=ckpt, arch=arch, heads=heads, out=out, preset=preset, size=size,
                  batch_size=batch_size, device=device, dtype=dtype, cmap=cmap, alpha=alpha, labels=not no_labels,
                  progress=not quiet)  # fmt: skip
    with errors():
        path = job.run()
    if not quiet:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
