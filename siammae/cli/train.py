"""``siammae-train``: pretrain SiamMAE on folders of videos; one call of :func:`siammae.train.train`.

Without a GPU the paper-sized defaults (ViT-S/16, batch 2048) are refused with one line naming CPU-sized settings
(``--model tiny --batch-size 16 --total-steps 200``); a ``--model`` / ``--batch-size`` given is run as given.

Settings come from the defaults (the paper's recipe), then ``--config FILE`` (JSON / TOML, field names of
:class:`~siammae.train.TrainConfig`), then the flags given on the command line. Several GPUs or nodes::

    torchrun --nproc_per_node 8 -m siammae.cli.train --data /data/kinetics --out runs/vits16
"""

from __future__ import annotations

import sys
from dataclasses import fields

import click
from click.core import ParameterSource

from siammae.cli.options import CONTEXT, Command, Device, errors
from siammae.model.config import DECODERS, ENCODER_MODES, MASKINGS
from siammae.model.registry import list_models
from siammae.train.config import AUGMENTATIONS, DECODES, PRECISIONS, TrainConfig
from siammae.train.preflight import check_run
from siammae.train.resume import resume_config

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
# flag name -> TrainConfig field, where they differ
_FIELD = {"encoder": "encoder_mode"}


def _default(name: str):
    value = _DEFAULTS[_FIELD.get(name, name)]
    return value if value != () else None


@click.command(cls=Command, context_settings={**CONTEXT, "show_default": True})
@click.option(
    "--data",
    multiple=True,
    help="Folder of videos / frame folders (searched recursively), a video, or "
    "a .txt list of them; repeat for several. Or a folder made by siammae-prepare (or its http(s):// URL).",
)
@click.option("--out", default=_default("out"), help="Run folder: checkpoints, log.jsonl, vis/, model.pt.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="JSON or TOML file of settings (TrainConfig field names); flags given here override it.",
)
@click.option("--model", type=click.Choice(list_models()), default=_default("model"), help="Registered model.")
@click.option(
    "--init",
    help="Start the encoder from these weights (decoder fresh, shapes must match --model): a name (dino-vits16, "
    "mae-vitb16, timm:<name>, hf:<repo>/<file>; siammae-weights list) or a DINO / MAE / timm / siammae file.",
)
@click.option("--input-size", type=int, help="Crop side in pixels [default: the model's img_size, 224].")
@click.option("--gap", type=(int, int), default=_default("gap"), help="Frame gap range MIN MAX (inclusive).")
@click.option("--repeat", type=int, default=_default("repeat"), help="Frame pairs drawn per decoded video.")
@click.option("--crop-scale", type=(float, float), default=_default("crop_scale"), help="Crop area range.")
@click.option(
    "--augment",
    type=click.Choice(AUGMENTATIONS),
    default=_default("augment"),
    help="spatial: crop + flip (paper); none; color: jitter; both.",
)
@click.option(
    "--workers",
    type=int,
    default=_default("workers"),
    help="DataLoader workers per process (capped at the CPU cores per process less one).",
)
@click.option(
    "--decode",
    type=click.Choice(DECODES),
    default=_default("decode"),
    help="Prepared data: decode JPEGs on the device (GPU, batched) or in the CPU workers; auto: device on a GPU.",
)
@click.option("--mask-ratio-f1", type=float, help="Mask ratio of f1 [default: the model's, 0.0].")
@click.option("--mask-ratio-f2", type=float, help="Mask ratio of f2 [default: the model's, 0.95].")
@click.option("--masking", type=click.Choice(MASKINGS), help="Masking kind [default: the model's, random].")
@click.option("--encoder", type=click.Choice(ENCODER_MODES), help="Encoder type [default: the model's, siam].")
@click.option("--decoder", type=click.Choice(DECODERS), help="Decoder type [default: the model's, cross-self].")
@click.option(
    "--epochs", type=int, default=_default("epochs"), help="Epochs of the schedule (paper: 2000; 400 for ablations)."
)
@click.option("--warmup-epochs", type=float, default=_default("warmup_epochs"))
@click.option(
    "--max-steps",
    type=int,
    help="Stop after this many optimiser steps (the schedule is not cut short: see --total-steps).",
)
@click.option("--total-steps", type=int, help="Schedule length in optimiser steps (instead of --epochs).")
@click.option("--warmup-frac", type=float, help="Warm-up as a fraction of --total-steps [default: warmup/epochs].")
@click.option(
    "--batch-size",
    type=int,
    default=_default("batch_size"),
    help="Frame pairs per optimiser step over all GPUs and accumulation steps.",
)
@click.option("--accum-steps", type=int, default=_default("accum_steps"), help="Gradient accumulation steps.")
@click.option("--blr", type=float, default=_default("blr"), help="Base lr; lr = blr * batch-size / 256.")
@click.option("--lr", type=float, help="Absolute lr (overrides --blr).")
@click.option("--min-lr", type=float, default=_default("min_lr"))
@click.option("--weight-decay", type=float, default=_default("weight_decay"))
@click.option("--betas", type=(float, float), default=_default("betas"), help="AdamW betas.")
@click.option("--clip-grad", type=float, help="Clip the global gradient norm to this value.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=_default("precision"),
    help="auto: bf16 (or fp16 + scaler) on GPU, fp32 on CPU.",
)
@click.option("--seed", type=int, default=_default("seed"))
@click.option("--device", type=Device(), default=_default("device"), help="auto, cpu, cuda or cuda:N.")
@click.option("--save-every", type=int, default=_default("save_every"), help="Steps between checkpoints.")
@click.option(
    "--save-minutes",
    type=float,
    default=_default("save_minutes"),
    help="Minutes of wall time between checkpoints, beside --save-every (0: by steps only).",
)
@click.option("--keep-last", type=int, default=_default("keep_last"), help="Checkpoints kept.")
@click.option("--log-every", type=int, default=_default("log_every"), help="Steps between log records.")
@click.option(
    "--vis-every", type=int, default=_default("vis_every"), help="Steps between reconstruction PNGs (0: none)."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its latest checkpoint with the run's own settings (run.json); only "
    "--max-steps, --workers, --decode, --device, logging and saving options may change.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def cli(ctx: click.Context, config_file, **flags):
    """Pretrain SiamMAE on videos (Gupta et al., NeurIPS 2023, Appendix A recipe by default)."""
    given = {
        _FIELD.get(name, name): value
        for name, value in flags.items()
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    with errors("continue the run with --resume (from the latest checkpoint)"):
        changes = None
        if given.get("resume"):  # the run's own settings, from its folder; only a few may change
            cfg, changes = resume_config(given.get("out", _default("out")), given, config_file)
        elif config_file:
            cfg = TrainConfig.from_file(config_file, **given)
        else:
            cfg = TrainConfig.from_dict(given, "flags")
        check_run(cfg)  # --data present, --out not another run's: before torch is imported (fast refusals)
        from siammae.train.loop import TrainingInterrupted, train  # deferred: --help and bad arguments stay fast

        try:
            result = train(cfg, changes)
        except TrainingInterrupted as e:
            click.echo(f"interrupted: {e}", err=True)
            sys.exit(130)
    if not cfg.quiet and result.model_path is not None:
        loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
        click.echo(
            f"trained to step {result.step} (epoch {result.epoch:.2f}), loss {loss}, "
            f"{result.samples_per_s:.1f} pairs/s; weights: {result.model_path}"
        )


def main(argv=None):
    cli.main(args=argv, prog_name="siammae-train")


if __name__ == "__main__":
    main()
