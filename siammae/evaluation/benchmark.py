"""One entry point for the three benchmarks: run a checkpoint, or score existing predictions.

>>> doc = evaluate("davis", "data/DAVIS", ckpt="siammae_vits16.pth", year="2017")   # doctest: +SKIP
>>> doc["global"]["J&F-Mean"]                                                         # doctest: +SKIP

``siammae-eval`` is a thin shell around :func:`evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from siammae.errors import InputError
from siammae.evaluation import davis, jhmdb, vip

BENCHMARKS = ("davis", "jhmdb", "vip")
DEFAULT_PRESETS = {"davis": "siammae-davis", "jhmdb": "siammae-jhmdb", "vip": "siammae-vip"}
DEFAULT_SPLITS = {"davis": "val", "jhmdb": 1, "vip": "val"}


def load_runner(
    ckpt: str | Path,
    benchmark: str,
    preset: str | None = None,
    overrides: dict | None = None,
    size: str | None = None,
    arch: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 8,
):
    """(Runner, checkpoint settings) for a checkpoint: the model, its input and propagation settings.

    The checkpoint settings hold its path, sha256 and model configuration, so that a table can be traced back to
    the exact weights.
    """
    # The model side (torch, the propagation engine) loads only here: scoring predictions does not need it.
    from siammae.data.transforms import IMAGENET_MEAN
    from siammae.evaluation.runner import Runner, default_input, parse_size
    from siammae.model.checkpoint import load_model
    from siammae.propagation import get_preset
    from siammae.propagation.features import TorchEncoder

    preset = preset or DEFAULT_PRESETS[benchmark]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    get_preset(preset, **overrides)  # unknown preset or bad value: fail before loading the model
    inputs = default_input(preset, benchmark)
    if size is not None:
        inputs = parse_size(size, inputs)
    model = load_model(ckpt, arch=arch)
    try:
        encoder = TorchEncoder(model, device=device, dtype=dtype, mean=IMAGENET_MEAN, std=inputs.std)
    except ValueError as err:
        raise InputError(str(err)) from None
    weights = model.weights_info  # name or path, the file, its sha256 (load_model hashed it)
    checkpoint = {
        "checkpoint": str(Path(weights["path"]).resolve()) if weights["path"] else weights["weights"],
        "checkpoint_sha256": weights["sha256"],
        "weights": weights["weights"],
        "model": model.config.to_dict(),
        "dtype": dtype,
    }
    return Runner(encoder, preset, overrides, inputs, batch_size=batch_size), checkpoint


def evaluate(
    benchmark: str,
    root: str | Path,
    *,
    ckpt: str | Path | None = None,
    results: str | Path | None = None,
    out: str | Path | None = None,
    split: str | int | None = None,
    year: str = "2017",
    preset: str | None = None,
    overrides: dict | None = None,
    size: str | None = None,
    arch: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 8,
    sequences: list[str] | None = None,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate a checkpoint (``ckpt``) or existing predictions (``results``) on ``benchmark``.

    benchmark: "davis" (``year`` "2016" or "2017", split "val"), "jhmdb" (split 1, 2 or 3) or "vip"
    (split "val"). With ``ckpt`` the model propagates the first frame's labels through every sequence; the
    predictions, per-sequence scores and tables go to ``out`` (default ``eval/<benchmark>...-<ckpt name>``);
    the run resumes where it stopped unless ``overwrite``. With ``results`` the predictions there are scored
    (tables to ``out``, default the results folder). Returns the results document (``doc["global"]``: the
    benchmark's table, official column order).
    """
    if benchmark not in BENCHMARKS:
        raise InputError(f"benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    if (ckpt is None) == (results is None):
        raise InputError("give either a checkpoint (to run the model) or a results folder (to score it)")
    if max_frames is not None and max_frames < 2:
        raise InputError(f"max_frames must be at least 2, got {max_frames}")
    split = DEFAULT_SPLITS[benchmark] if split is None else split
    module = {"davis": davis, "jhmdb": jhmdb, "vip": vip}[benchmark]
    data = {"year": year} if benchmark == "davis" else {}
    if benchmark == "jhmdb":
        split = _jhmdb_split(split)
    if results is not None:
        return module.evaluate_results(
            root, results, split=split, out=out, sequences=sequences, progress=progress, **data
        )
    runner, checkpoint = load_runner(ckpt, benchmark, preset, overrides, size, arch, device, dtype, batch_size)
    if out is None:
        tag = f"davis{year}" if benchmark == "davis" else benchmark
        from siammae.model.weights import weights_stem

        out = Path("eval") / f"{tag}-{split}-{weights_stem(ckpt)}"
    return module.evaluate_model(
        runner,
        root,
        out,
        split=split,
        sequences=sequences,
        max_frames=max_frames,
        settings=checkpoint,
        overwrite=overwrite,
        progress=progress,
        **data,
    )


def _jhmdb_split(split) -> int:
    if str(split) not in ("1", "2", "3"):
        raise InputError(f"JHMDB split {split!r} is not 1, 2 or 3")
    return int(split)
