"""What every command shares: one error handler and one set of options with the same names, types and help.

- :func:`errors` turns a :class:`~siammae.errors.SiamMAEError` (anything a user can fix) into one line
  ``error: ...`` and exit status 2, and Ctrl-C into one line and status 130, in every command alike.
- The option decorators (``device_option``, ``dtype_option``, ``preset_option``, ``propagation_options``,
  ``size_option``, ``arch_option``) give ``siammae-track``, ``siammae-eval``, ``siammae-attn`` and
  ``siammae-export`` the same spelling (``--n-last``, not ``--queue`` in one and ``--n-last`` in another) and the same
  validation. Old spellings stay as hidden aliases for one release (``--queue``).

This module imports neither torch nor any heavy part of siammae, so that ``--help`` answers at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator

import click

from siammae.errors import InputError, SiamMAEError
from siammae.model.config import FEATURE_ATTENTIONS
from siammae.model.registry import list_models
from siammae.propagation.config import preset_names
from siammae.propagation.inputs import parse_size

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
DTYPE_NAMES = ("fp32", "fp16", "bf16", "int8")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# ------------------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def errors(interrupted: str | Callable[[], str] | None = None) -> Iterator[None]:
    """Run a command's body: a SiamMAEError is ``error: ...`` + exit 2; Ctrl-C prints ``interrupted`` (a message, or
    a function that builds it) and exits 130."""
    try:
        yield
    except SiamMAEError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        message = interrupted() if callable(interrupted) else interrupted
        click.echo(f"interrupted{': ' + message if message else ''}", err=True)
        sys.exit(130)


class _OneLineErrors:
    """Click's own usage errors (a bad option value, a missing argument) as one line ``error: ...`` and status 2,
    like every other bad input, instead of a usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:  # UsageError, BadParameter, FileError
            if type(e).__name__ == "NoArgsIsHelpError":  # a group called bare: its help, as click does
                click.echo(e.format_message(), err=True)
                sys.exit(2)
            click.echo(f"error: {e.format_message()} (see --help)", err=True)
            sys.exit(2)
        except click.exceptions.Abort:  # Ctrl-C while click itself was running (a prompt, start-up)
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(0)


class Command(_OneLineErrors, click.Command):
    """A siammae command: ``@click.command(cls=Command, context_settings=CONTEXT)``."""


class Group(_OneLineErrors, click.Group):
    """A siammae command group (``siammae-eval``)."""


def given(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was on the command line (``--radius none`` gives None, like leaving it out)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


# ---------------------------------------------------------------------------------------------- types
class Device(click.ParamType):
    """auto, cpu, mps, cuda or cuda:N; checked here by its form, and against the machine before the weights load
    (:func:`siammae.model.load.check_run`)."""

    name = "device"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or not _DEVICE.match(value.strip()):
            self.fail(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N", param, ctx)
        return value.strip()


class Radius(click.ParamType):
    """A neighbourhood radius in patches, or "none" for no restriction."""

    name = "radius"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, (int, float)):
            return value
        if str(value).lower() in ("none", "inf", "off"):
            return None
        try:
            r = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of patches or 'none'", param, ctx)
        if not r >= 0 or r == float("inf"):
            self.fail(f"{value!r} must be a finite number >= 0 (or 'none')", param, ctx)
        return int(r) if r.is_integer() else r


class Finite(click.FloatRange):
    """A float option: a finite number (``nan``, ``inf`` refused, which Click's FloatRange lets through) within the
    optional bounds of :class:`click.FloatRange`. Every float option of every command uses it."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number is not None and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Size(click.ParamType):
    """The encoder's input size: a short side (``480``) or ``HEIGHTxWIDTH`` (``480x880``), parsed by the one parser
    of the size grammar (:func:`~siammae.propagation.inputs.parse_size`): an int, or (short, long)."""

    name = "size"

    def convert(self, value, param, ctx):
        if value is None:
            return value
        from siammae.model.load import check_input_size  # light: no torch

        try:
            size = parse_size(value)
        except InputError:
            self.fail(f"{value!r} is not a size: give a short side (480) or HEIGHTxWIDTH (480x880)", param, ctx)
        try:
            check_input_size(size)
        except InputError as e:
            self.fail(str(e).removeprefix("--size "), param, ctx)
        return size


# -------------------------------------------------------------------------------------------- options
def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


def device_option(default: str = "auto"):
    return click.option(
        "--device", type=Device(), default=default, show_default=True, help="auto, cpu, cuda or cuda:N."
    )


def dtype_option(help: str = "Encoder precision (fp16 needs CUDA; int8: linear layers quantised, CPU only)."):
    return click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="fp32", show_default=True, help=help)


def arch_option():
    return click.option(
        "--arch",
        type=click.Choice(list_models()),
        help="Architecture of foreign weights (default: inferred from their shapes).",
    )


def ckpt_option(what: str = "Weights"):
    """``--ckpt``: a weights name or a file; left out, the commands use :data:`~siammae.model.weights.DEFAULT_WEIGHTS`
    (named in the help)."""
    from siammae.model.weights import DEFAULT_WEIGHTS  # light: no torch

    return click.option(
        "--ckpt",
        help=f"{what}: a name (dino-vits16, dino-vits8, dino-vitb16, dino-vitb8, mae-vitb16, timm:<name>, "
        "hf:<owner>/<repo>/<file>; downloaded once, see siammae-weights list) or a file (siammae checkpoint, DINO / "
        f"MAE / timm ViT weights).  [default: {DEFAULT_WEIGHTS}]",
    )


def size_option(help: str = "Encoder input: short side (480) or HEIGHTxWIDTH.  [default: the preset's]"):
    return click.option("--size", type=Size(), default=None, help=help)


def preset_option(default_help: str):
    return click.option(
        "--preset",
        type=click.Choice(preset_names()),
        help=f"Propagation protocol constants.  [default: {default_help}]",
    )


def propagation_options(f):
    """``--topk``, ``--temperature``, ``--n-last`` (hidden alias ``--queue``), ``--radius`` and ``--attention``:
    overrides of the preset; read them back with :func:`overrides`."""
    return _apply(
        f,
        [
            click.option("--topk", type=click.IntRange(min=1), help="Override: context keys per query patch."),
            click.option("--temperature", type=Finite(min=0, min_open=True), help="Override: softmax temperature."),
            click.option("--n-last", type=click.IntRange(min=0), help="Override: preceding frames in the context."),
            click.option("--queue", "queue_alias", type=click.IntRange(min=0), hidden=True),  # old name of --n-last
            click.option("--radius", type=Radius(), help="Override: neighbourhood radius in patches, or 'none'."),
            click.option(
                "--attention",
                type=click.Choice(FEATURE_ATTENTIONS),
                help="Override: the encoder's attention. exact: DINO's operation order (DINO's features bit for bit "
                "on a CPU in fp32); sdpa: the fused kernel (faster on a CPU, features within ~3e-6); auto: exact on "
                "a CPU in fp32, sdpa otherwise.  [default: the preset's; dino: auto, siammae-*: sdpa]",
            ),
        ],
    )


def overrides(ctx: click.Context, opts: dict) -> dict:
    """The preset overrides the user gave, as ``Preset.replace`` arguments (``PropagationConfig`` fields and
    ``attention``); pops them from ``opts``."""
    queue = opts.pop("queue_alias", None)
    if queue is not None:
        if opts.get("n_last") is not None:
            raise click.UsageError("give --n-last only (--queue is its old name)")
        click.echo("warning: --queue is now --n-last; the old name goes in the next release", err=True)
        opts["n_last"] = queue
    out = {k: v for k in ("topk", "temperature", "n_last", "attention") if (v := opts.pop(k, None)) is not None}
    radius = opts.pop("radius", None)
    if radius is not None or given(ctx, "radius"):
        out["radius"] = radius
    return out


# ------------------------------------------------------------------------------------------------ logging
class _EchoHandler(logging.Handler):
    """Log records as plain lines on the stderr of the moment (click.echo looks it up at each call)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def log_to_stderr() -> None:
    """Progress lines of the library (logger "siammae", level INFO) on stderr, once per process."""
    logger = logging.getLogger("siammae")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)
