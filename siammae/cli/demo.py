"""``siammae-demo``: the built-in example, one call of :func:`siammae.demo.run_demo`.

    siammae-demo --out demo_out

A synthetic video with known masks; the tiny SiamMAE pretrained on it for about a minute on the CPU; the video
tracked with the untrained and the trained network; both DAVIS J scores printed, masks / overlays / report written.
"""

from __future__ import annotations

import click

from siammae.cli.options import CONTEXT, Command, Device, errors


@click.command(cls=Command, context_settings={**CONTEXT, "show_default": True})
@click.option("--out", default="demo_out", help="Output folder (video, ground truth, training run, masks, report).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps [default: 300].")
@click.option("--device", type=Device(), default="cpu", help="cpu, cuda or auto.")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def cli(out, steps, device, overwrite, quiet):
    """Pretrain a tiny SiamMAE on a synthetic video and show that it tracks better than the untrained network."""
    from siammae.allocator import tune_cpu_allocator
    from siammae.demo import DemoSettings, run_demo  # deferred: --help stays fast

    tune_cpu_allocator()  # the process's malloc, once, at the command's entry (opt-out: SIAMMAE_NO_MALLOC_TUNING=1)

    settings = DemoSettings() if steps is None else DemoSettings(steps=steps)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    with errors():
        res = run_demo(out, settings, device=device, overwrite=overwrite, progress=not quiet, log=log)
    click.echo(f"J untrained: {res.j_untrained:.3f}")
    click.echo(
        f"J trained:   {res.j_trained:.3f}  ({res.j_gain:+.3f} after {res.train_steps} steps, "
        f"{res.train_seconds:.0f} s of training)"
    )
    click.echo(f"report: {res.report.with_suffix('.md')}")


def main(argv=None):
    cli.main(args=argv, prog_name="siammae-demo")


if __name__ == "__main__":
    main()
