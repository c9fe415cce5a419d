"""``siammae-eval``: the paper's benchmarks (DAVIS J&F, JHMDB PCK, VIP mIoU) in one command each.

    siammae-eval davis --root DAVIS --ckpt model.pth [--year 2017] [--preset dino] [--out DIR]
    siammae-eval davis --root DAVIS --year 2017 --results osvos/      # score predictions, no model
    siammae-eval jhmdb --root JHMDB --ckpt model.pth
    siammae-eval vip --root VIP_Fine --ckpt model.pth
    siammae-eval davis --root DAVIS --encoder model_480x880.onnx     # an exported encoder (ONNX / TensorRT)

Each command parses its options into an :class:`~siammae.evaluation.job.EvalJob` and runs it (checks before torch,
then :func:`siammae.evaluation.benchmark.evaluate`).
"""

import click

from siammae.cli.options import (
    CONTEXT,
    Group,
    arch_option,
    ckpt_option,
    device_option,
    dtype_option,
    errors,
    log_to_stderr,
    overrides,
    preset_option,
    propagation_options,
    size_option,
)


def _common(f):
    """Options shared by the three benchmarks (model, propagation, output)."""
    options = [
        click.option("--root", required=True, type=click.Path(file_okay=False), help="Data set folder."),
        ckpt_option("Weights to evaluate"),
        click.option(
            "--encoder",
            type=click.Path(dir_okay=False),
            help="Exported encoder (model.onnx / model.engine) instead of --ckpt, built for the preset's input size.",
        ),
        click.option(
            "--results",
            type=click.Path(file_okay=False),
            help="Score the predictions in this folder instead of running a model.",
        ),
        click.option("--out", type=click.Path(file_okay=False), help="Output folder (predictions, scores, tables)."),
        preset_option("the benchmark's SiamMAE preset"),
        propagation_options,
        size_option(),
        arch_option(),
        device_option(),
        dtype_option(),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
        click.option("--sequences", help="Comma-separated subset of the split's sequences."),
        click.option("--max-frames", type=click.IntRange(min=2), help="Only the first N frames (quick checks)."),
        click.option("--overwrite", is_flag=True, help="Run every sequence again, even if scored in --out."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run(benchmark: str, split, year: str | None = None, **opts):
    from siammae.allocator import tune_cpu_allocator
    from siammae.evaluation.job import EvalJob  # deferred: --help stays fast
    from siammae.evaluation.results import markdown_table

    tune_cpu_allocator()  # the process's malloc, once, at the command's entry (opt-out: SIAMMAE_NO_MALLOC_TUNING=1)
    changed = overrides(click.get_current_context(), opts)
    sequences = opts.pop("sequences")
    job = EvalJob(benchmark, split=split, year=year, overrides=changed, **opts,
                  sequences=tuple(s for s in sequences.split(",") if s) if sequences else None)  # fmt: skip
    log_to_stderr()  # the DAVIS year detected, when --year is not given
    with errors():
        doc = job.run()
    click.echo(markdown_table(doc.title, doc.metrics))
    click.echo(f"results in {doc.out}")


@click.group(cls=Group, context_settings=CONTEXT)
def main():
    """Evaluate a checkpoint on DAVIS, JHMDB or VIP, or score existing predictions."""


@main.command()
@click.option(
    "--year",
    type=click.Choice(["2016", "2017"]),
    default=None,
    help="DAVIS release.  [default: detected from --root: mode L {0, 255} annotations are 2016, ImageSets/2017 and "
    "indexed masks 2017; the choice is printed]",
)
@click.option("--split", default="val", show_default=True, help="ImageSets/<year>/<split>.txt")
@_common
def davis(year, split, **opts):
    """DAVIS semi-supervised video object segmentation: J&F, J and F (mean, recall, decay)."""
    _run("davis", split, year, **opts)


@main.command()
@click.option("--split", type=click.Choice(["1", "2", "3"]), default="1", show_default=True)
@_common
def jhmdb(split, **opts):
    """JHMDB pose propagation: PCK@0.1 and PCK@0.2."""
    _run("jhmdb", int(split), **opts)


@main.command()
@click.option("--split", default="val", show_default=True, help="lists/<split>_videos.txt")
@_common
def vip(split, **opts):
    """VIP human-part propagation: mIoU over 20 classes."""
    _run("vip", split, **opts)


if __name__ == "__main__":
    main()
