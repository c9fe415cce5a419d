"""The one loader of every command: which weights a command runs, checked without torch, then loaded.

``siammae-track``, ``siammae-eval``, ``siammae-attn`` and ``siammae-export`` (and the Python calls behind them) load
PyTorch weights only through :func:`load_weights`; an exported encoder (``--encoder``) goes through
:func:`siammae.export.runtime.load_frame_encoder`, which calls this for weights. The policy is here, once:

- ``--ckpt`` given: that name or file (:func:`~siammae.model.weights.check_spec` first: a typo fails at once).
- no ``--ckpt``: :data:`~siammae.model.weights.DEFAULT_WEIGHTS`; when it cannot be had (not in the cache and
  downloads are off, or its download fails), the model shipped inside the package (``siammae-cpu``), with one
  warning line saying what it is, how good it is and how to get the default (:func:`choose_weights`).
- under torchrun, named weights are fetched once per machine (local rank 0) while the other ranks wait.

:func:`check_run` checks what a run asks of the machine (``--device``, ``--dtype``) without importing torch, so that a
command refuses ``--device cuda`` on a machine with no GPU before the model loads; :func:`resolve_run` gives the
torch device afterwards, with the same one-line error.

This module imports neither torch nor the network part of siammae until :func:`load_weights` runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from siammae.errors import CheckpointError, InputError

SHIPPED_WEIGHTS = "siammae-cpu"  # the model shipped inside the package (siammae/model/shipped/)
GPU_DTYPES = ("fp16",)  # dtypes that need a CUDA device (siammae.device.resolve_dtype)
CPU_DTYPES = ("int8",)  # dtypes that run on the CPU only (quantised linear layers, siammae.device.QUANTIZED)
MAX_INPUT_SIDE = 8192  # pixels, either side of --size: almost twice an 8K frame's height (4320)


@dataclass(frozen=True)
class WeightsChoice:
    """The weights a run loads: ``spec`` (a name or a file, as ``load_model`` takes it) and, when the shipped model
    stands in for the default weights, the one warning line that says so (``notice``)."""

    spec: str
    notice: str | None = None

    @property
    def shipped(self) -> bool:
        return self.notice is not None


# ---------------------------------------------------------------------------------------- the default weights
# The weights side (siammae/model/named.py, packaged.py) defines the shipped weight (its file
# ``packaged.shipped_file()``), ``can_fetch_quickly(w)`` (a network probe) and ``shipped_fallback_notice(why)``.


def _checkpoints_dir() -> Path:
    """torch.hub's checkpoint folder as ``torch.hub.get_dir()`` finds it (``$TORCH_HOME``, else
    ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``; then ``hub/checkpoints``), without importing torch, so that a
    command's check stays torch-free (``hub.cache_dir()`` imports torch)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _why_not_default() -> str | None:
    """None when the default weights can be had now, else why not, in a few words. Torch-free when they are cached
    or downloads are off; online and not cached, the weights side's probe of the network (at most seconds) decides."""
    from siammae.model import named
    from siammae.model.hub import offline_variable

    default = named.WEIGHTS[named.DEFAULT_WEIGHTS]
    if (_checkpoints_dir() / default.filename).is_file():
        return None
    if (var := offline_variable()) is not None:
        return f"not in the cache and downloads are off ({var}=1)"
    return named.can_fetch_quickly(default)


def _shipped(why: str) -> WeightsChoice | None:
    from siammae.model import named, packaged

    if not packaged.shipped_file().is_file():  # not in this build: the default's own error stands
        return None
    return WeightsChoice(SHIPPED_WEIGHTS, named.shipped_fallback_notice(why).removeprefix("warning: "))


def choose_weights(ckpt: str | os.PathLike | None = None) -> WeightsChoice:
    """The weights a command runs, without torch or downloading: ``ckpt`` (a missing file or an unknown name is a
    :class:`~siammae.errors.CheckpointError` now), else the default weights, or the shipped model when the default
    cannot be had now and the package ships one (module docstring). The file's sha256, which loading needs, starts
    in a thread here (:func:`_prefetch_hash`); nothing waits for it until then."""
    from siammae.model.weights import DEFAULT_WEIGHTS, check_spec

    if ckpt is not None:
        check_spec(ckpt)
        choice = WeightsChoice(str(ckpt))
    else:
        why = _why_not_default()
        choice = (_shipped(why) if why is not None else None) or WeightsChoice(DEFAULT_WEIGHTS)
    _prefetch_hash(choice.spec)
    return choice


def _prefetch_hash(spec: str) -> None:
    """The sha256 that loading will need of a local file or a cached named one, started now in a thread
    (:func:`siammae.model.hub.prefetch_digests`): it overlaps the import of torch. Opportunistic: a path that
    cannot be read is left to the loader, which says what is wrong with it."""
    from siammae.model import named, packaged
    from siammae.model.hub import prefetch_digests

    try:
        path = Path(spec)
        if spec in named.WEIGHTS and not named.path_exists(path):  # a name: its file, found without torch
            w = named.WEIGHTS[spec]
            path = packaged.shipped_file() if w.kind == "shipped" else _checkpoints_dir() / w.filename
        if path.is_file():
            prefetch_digests(path)
    except (OSError, CheckpointError):
        pass


def shipped_instead(error: CheckpointError) -> WeightsChoice | None:
    """The shipped model when fetching the default weights (not in the cache) failed with ``error`` and the package
    ships one, else None: the error stands (a cached file that fails to load says which file to delete)."""
    from siammae.model.weights import DEFAULT_WEIGHTS, weights_location

    if weights_location(DEFAULT_WEIGHTS)[1]:
        return None
    return _shipped(f"could not be fetched ({str(error).split(': ')[-1][:120]})")


def num_heads(choice: WeightsChoice) -> int | None:
    """The attention heads of named weights (a ViT has one head per 64 channels), None when only loading tells (a
    file): what ``siammae-attn --heads`` is checked against before the model loads."""
    from siammae.model.weights import WEIGHTS

    w = WEIGHTS.get(choice.spec)
    return w.embed_dim // 64 if w is not None and not Path(choice.spec).exists() else None


# ------------------------------------------------------------------------------------------ device and dtype
def gpu_absent() -> str | None:
    """Why no CUDA device can be there, told without torch (Linux: no NVIDIA or ROCm device node, or
    ``CUDA_VISIBLE_DEVICES`` empty); None when there may be one (torch decides when the model loads)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible.strip()!r} hides every GPU"
    if sys.platform.startswith("linux"):
        nodes = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")
        if not any(os.path.exists(n) for n in nodes):
            return "this machine has no GPU driver (no /dev/nvidia*, no /dev/kfd)"
    return None


def check_run(device: str = "auto", dtype: str = "fp32") -> None:
    """``device`` and ``dtype`` against this machine, before torch loads: ``cuda`` (or ``fp16``, which needs CUDA)
    on a machine with no GPU, or ``fp16`` on ``cpu``, is an :class:`~siammae.errors.InputError` at once. When a GPU
    may be there, torch has the last word in :func:`resolve_run`."""
    device = str(device)
    if dtype in CPU_DTYPES and device.startswith(("cuda", "mps")):
        raise InputError(f"--dtype {dtype} runs on the CPU only, not --device {device} (on a GPU use fp16 or bf16)")
    if dtype in GPU_DTYPES and device in ("cpu", "mps"):
        raise InputError(f"--dtype {dtype} needs a CUDA device, not --device {device} (use fp32 or bf16 on a CPU)")
    wants_gpu = device.startswith("cuda") or (dtype in GPU_DTYPES and device == "auto")
    why = gpu_absent() if wants_gpu else None
    if why is not None:
        asked = f"--device {device}" if device.startswith("cuda") else f"--dtype {dtype}"
        raise InputError(f"{asked} needs a CUDA GPU, and {why}: use --device cpu (fp32 or bf16)")


def resolve_run(device: str = "auto", dtype: str = "fp32"):
    """The torch device of ``device`` with ``dtype`` checked on it: :func:`siammae.device.resolve_device` and
    ``resolve_dtype`` with their errors as one-line :class:`~siammae.errors.InputError`\\ s naming the option."""
    from siammae.device import resolve_device, resolve_dtype

    check_run(device, dtype)
    try:
        resolved = resolve_device(device)
    except (RuntimeError, ValueError) as e:  # an unknown device string or CUDA without a GPU
        raise InputError(f"--device {device}: {e}") from None
    try:
        resolve_dtype(dtype, resolved)
    except ValueError as e:
        raise InputError(f"--dtype {dtype}: {e}") from None
    return resolved


def check_input_size(size, option: str = "--size") -> None:
    """``--size`` (a short side, or (short, long) as :func:`~siammae.propagation.inputs.parse_size` gives it)
    within :data:`MAX_INPUT_SIDE`, before torch loads: ``--size 100000`` is a typo, not a run (the memory check
    after the model loads catches what this bound lets through)."""
    sides = size if isinstance(size, (tuple, list)) else (size,)
    big = [s for s in sides if isinstance(s, int) and s > MAX_INPUT_SIDE]
    if big:
        raise InputError(
            f"{option} {'x'.join(str(s) for s in sides)}: a side of {big[0]} pixels is over the {MAX_INPUT_SIDE}-pixel "
            f"limit of the encoder input (an 8K video is 4320 pixels high; DAVIS runs at 480)"
        )


# ----------------------------------------------------------------------------------------------- loading
def load_weights(
    ckpt: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    rank=None,
    progress: bool = True,
    choice: WeightsChoice | None = None,
):
    """The PyTorch model of ``ckpt`` (None: the default weights, or the shipped model, :func:`choose_weights`;
    ``choice``: a choice a job already made in its check), as every command loads it. Under torchrun (``rank``,
    :class:`siammae.torchrun.Rank`) named weights are fetched once per machine. ``model.provenance`` names the
    weights (the shipped model's name when it stood in)."""
    from siammae.model.checkpoint import load_model
    from siammae.model.weights import fetch_once_per_machine

    choice = choice or choose_weights(ckpt)
    if rank is not None and rank.distributed:
        from siammae.torchrun import init

        init(rank)
    try:
        if rank is not None and rank.distributed:
            fetch_once_per_machine(choice.spec, rank, progress)
        model = _load(choice, arch, progress, load_model)
    except CheckpointError as e:
        fallback = shipped_instead(e) if ckpt is None and not choice.shipped else None
        if fallback is None:
            raise
        model = _load(fallback, arch, progress, load_model)
    return model


def _load(choice: WeightsChoice, arch, progress: bool, load_model):
    if choice.notice is not None:
        print(f"warning: {choice.notice}", file=sys.stderr)
    return load_model(choice.spec, arch=arch, progress=progress)  # the shipped name's provenance names it


__all__ = [
    "SHIPPED_WEIGHTS",
    "MAX_INPUT_SIDE",
    "WeightsChoice",
    "check_input_size",
    "check_run",
    "choose_weights",
    "gpu_absent",
    "load_weights",
    "num_heads",
    "resolve_run",
    "shipped_instead",
]
