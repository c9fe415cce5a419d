"""``siammae-export``: the encoder of a checkpoint as an ONNX graph, and optionally a TensorRT engine.

    siammae-export --ckpt vits8.pt --trt                  # 480x848 graph + engine (a DAVIS 480p video)
    siammae-export --ckpt vits8.pt --height 480 --width 880 --fp16 --max-batch 16 --trt

The command parses into an :class:`~siammae.export.job.ExportJob` and runs it (checks before torch, then
:func:`siammae.export.export_onnx` and :func:`siammae.export.build_engine`); everything it does is available from
Python.
"""

from __future__ import annotations

from pathlib import Path

import click

from siammae.cli.options import (
    CONTEXT,
    Command,
    Finite,
    arch_option,
    ckpt_option,
    errors,
    log_to_stderr,
    preset_option,
    size_option,
)
from siammae.export.metadata import DEFAULT_OPSET, MIN_OPSET, STD_NAMES
from siammae.model.config import POS_INTERP
from siammae.propagation.config import default_preset


@click.command(cls=Command, context_settings=CONTEXT)
@ckpt_option("Weights to export")
@arch_option()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="output .onnx (default: <ckpt>_<H>x<W>[_fp16].onnx beside the checkpoint, H x W the frame size as in "
    "--size; for a weights name, <name>_<H>x<W>.onnx in the current folder). Not overwritten without --overwrite.",
)
@preset_option(f"{default_preset()}: a 854x480 video as siammae-track encodes it")
@size_option("as siammae-track --size: a short side (480 -> 480x848 for a 854x480 video) or HEIGHTxWIDTH.")
@click.option("--height", type=click.IntRange(min=1), default=None, help="frame height (with --width).")
@click.option("--width", type=click.IntRange(min=1), default=None, help="frame width (with --height).")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="largest batch of frames per call (the batch is dynamic, 1 .. N).",
)
@click.option("--fp16", is_flag=True, help="fp16 weights and matrix products (LayerNorm in fp32; I/O float32).")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=DEFAULT_OPSET, show_default=True)
@click.option(
    "--std",
    "std_name",
    type=click.Choice(STD_NAMES),
    default=None,
    help="normalisation std: ImageNet's, or DINO's evaluation code's (0.228 for red).  [default: the preset's]",
)
@click.option(
    "--pos-interp",
    type=click.Choice(POS_INTERP),
    default="auto",
    show_default=True,
    help="position embeddings for the target grid: sincos (exact), bicubic (DINO), auto.",
)
@click.option("--trt", is_flag=True, help="also build a TensorRT engine (<out>.engine); needs siammae[trt] and a GPU.")
@click.option(
    "--workspace",
    type=Finite(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="TensorRT scratch memory, GB.",
)
@click.option("--overwrite", is_flag=True, help="replace an existing output file (.onnx, and .engine with --trt).")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="compare onnxruntime (and the engine) against PyTorch on random frames.",
)
def main(
    ckpt,
    arch,
    out,
    preset,
    size,
    height,
    width,
    max_batch,
    fp16,
    opset,
    std_name,
    pos_interp,
    trt,
    workspace,
    overwrite,
    verify,
):
    """Export the encoder of CKPT to ONNX: frames (B, 3, H, W) RGB in [0, 1] -> (B, h*w, D) patch
    features (L2-normalised by the tracker), with normalisation and position embeddings inside the graph."""
    from siammae.export.job import ExportJob

    job = ExportJob(ckpt=ckpt, arch=arch, out=out, preset=preset, size=size, height=height, width=width,
                    max_batch=max_batch, fp16=fp16, opset=opset, std=std_name, pos_interp=pos_interp, trt=trt,
                    workspace=workspace, overwrite=overwrite, verify=verify)  # fmt: skip
    log_to_stderr()
    with errors():
        for path in job.run():
            click.echo(path)


if __name__ == "__main__":
    main()
