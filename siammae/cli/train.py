"""``siammae-train``: pretrain SiamMAE on folders of videos; one call of :func:`siammae.train.train`.

Without a GPU the paper-sized defaults (ViT-S/16, batch 2048) are refused with one line naming CPU-sized settings
(``--model tiny --batch-size 16 --total-steps 200``); a ``--model`` / ``--batch-size`` given is run as given.

Settings come from the defaults (the paper's recipe), then ``--config FILE`` (JSON / TOML, field names of
:class:`~siammae.train.TrainConfig`), then the flags given on the command line. Several GPUs or nodes::

    torchrun --nproc_per_node 8 -m siammae.cli.train --data /data/kinetics --out runs/vits16
"""

from __future__ import annotations

import sys
import typing
from dataclasses import MISSING, fields

import click
from click.core import ParameterSource

from siammae.cli.options import CONTEXT, Command, Device, errors
from siammae.config_rules import rule_of, type_hints
from siammae.model.registry import list_models
from siammae.train.config import TrainConfig
from siammae.train.preflight import check_run
from siammae.train.resume import resume_config

# Every TrainConfig field is an option, made from the field: its name (dashes for underscores), its type, its
# default and its help (the field's Rule); a new field is a new option with nothing written here. Only what a field
# cannot say is written here: a flag named otherwise, a type with its own parsing.
FLAGS = {"encoder_mode": "--encoder"}
TYPES = {"model": lambda: click.Choice(list_models()), "device": Device}


def _help(text: str) -> str:
    return f"{text}." if text else ""


def _option(f, hint) -> dict:
    """``click.option`` arguments of the TrainConfig field ``f`` (annotation ``hint``)."""
    rule = rule_of(f)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if type(None) in typing.get_args(hint) else hint  # X | None: an X, None when not given
    default = None if f.default is MISSING or f.default in (None, ()) else f.default
    option = {"help": _help(rule.help), "default": default}
    if kind is bool:
        return option | {"is_flag": True}
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        if items[-1] is Ellipsis:  # tuple[str, ...]: the flag repeated
            return option | {"multiple": True, "type": items[0], "default": None}
        return option | {"type": items}
    if f.name in TYPES:
        return option | {"type": TYPES[f.name]()}
    return option | {"type": click.Choice(rule.choices) if rule.choices else kind}


def config_options(command):
    """Decorate ``command`` with one option per TrainConfig field, in the fields' order."""
    hints = type_hints(TrainConfig)
    for f in reversed(fields(TrainConfig)):
        flag = FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        command = click.option(flag, f.name, **_option(f, hints[f.name]))(command)
    return command


@click.command(cls=Command, context_settings={**CONTEXT, "show_default": True})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="JSON or TOML file of settings (TrainConfig field names); flags given here override it.",
)
@config_options
@click.pass_context
def cli(ctx: click.Context, config_file, **flags):
    """Pretrain SiamMAE on videos (Gupta et al., NeurIPS 2023, Appendix A recipe by default)."""
    given = {
        name: value
        for name, value in flags.items()
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    with errors("continue the run with --resume (from the latest checkpoint)"):
        changes = None
        if given.get("resume"):  # the run's own settings, from its folder; only a few may change
            out = given.get("out", TrainConfig.__dataclass_fields__["out"].default)
            cfg, changes = resume_config(out, given, config_file)
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
