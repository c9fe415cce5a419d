"""One entry point for the three benchmarks: run a checkpoint or an exported encoder, or score existing predictions.

>>> result = evaluate("davis", "data/DAVIS", ckpt="siammae_vits16.pth", year="2017")  # doctest: +SKIP
>>> result.metrics["J&F-Mean"]                                                         # doctest: +SKIP
>>> evaluate("davis", "data/DAVIS", encoder="vits16_480x880.onnx")                    # doctest: +SKIP

``siammae-eval`` is a thin shell around :func:`evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

from siammae.errors import InputError
from siammae.evaluation.davis import Davis, detect_year
from siammae.evaluation.jhmdb import Jhmdb
from siammae.evaluation.protocol import Benchmark
from siammae.evaluation.results import EvalResult
from siammae.evaluation.vip import Vip
from siammae.output_folder import OutputFolder, check_name

log = logging.getLogger(__name__)

BENCHMARKS = ("davis", "jhmdb", "vip")
BENCHMARK_TASKS = {"davis": "masks", "jhmdb": "keypoints", "vip": "parts"}  # each runs its task's default preset
DEFAULT_SPLITS = {"davis": "val", "jhmdb": 1, "vip": "val"}


def load_runner(
    ckpt: str | Path | None,
    benchmark: str,
    preset: str | None = None,
    overrides: dict | None = None,
    size=None,
    arch: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 8,
    encoder: str | Path | None = None,
    choice=None,
    progress: bool = False,
):
    """(Runner, model settings) for a checkpoint (``ckpt``; None: the default weights, or the shipped model when
    they cannot be had; ``choice``: the :class:`~siammae.model.load.WeightsChoice` already made) or an exported
    encoder (``encoder``: ``model.onnx`` / ``model.engine``), loaded by the one loader
    (:func:`siammae.export.runtime.load_frame_encoder`): the model with the preset's propagation and input
    settings (``size`` overrides the input size, see :func:`siammae.propagation.inputs.parse_size`). ``preset``
    None: the default preset of the benchmark's task (:func:`siammae.propagation.config.default_preset`).

    The model settings hold the file's path, sha256 and model configuration, so that a table can be traced back
    to the exact weights.
    """
    # The model side (torch, the propagation engine) loads only here: scoring predictions does not need it.
    from siammae.evaluation.runner import Runner
    from siammae.export.runtime import load_frame_encoder
    from siammae.model.checkpoint import file_sha256
    from siammae.model.load import resolve_run
    from siammae.propagation.config import check_attention_override, default_preset, get_preset
    from siammae.propagation.driver import Tracker

    if ckpt is not None and encoder is not None:
        raise InputError("give a checkpoint (ckpt) or an exported encoder (model.onnx / model.engine), not both")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_attention_override(encoder, overrides)
    # unknown preset, bad value or bad size: fail before loading the model
    preset = get_preset(preset or default_preset(BENCHMARK_TASKS[benchmark]), size=size, **overrides)
    if encoder is None:
        resolve_run(device, dtype)  # no GPU, fp16 on a CPU: before the weights load
    # the one loader (ckpt None: the default weights, or the shipped model when they cannot be had)
    model = load_frame_encoder(ckpt, encoder, arch=arch, device=device, choice=choice)
    if encoder is None:
        weights = model.provenance.to_dict()  # name or path, the file, its sha256, verified or not
        settings = {
            "checkpoint": str(Path(weights["path"]).resolve()) if weights["path"] else weights["weights"],
            "checkpoint_sha256": weights["sha256"],
            "weights": weights["weights"],
            "model": model.config.to_dict(),
        }
    else:
        settings = {"encoder": str(Path(encoder).resolve()), "encoder_sha256": file_sha256(encoder)}
        settings["model"] = model.info.config if model.info is not None else None  # FrameEncoder: info, dtype
    settings["dtype"] = model.dtype if encoder is not None else dtype
    # frames decoded in this thread, as evaluation always has (prefetch changes the speed only, never a mask)
    tracker = Tracker(model, preset, device=device, dtype=dtype, chunk=batch_size, prefetch=False)
    return Runner(tracker, progress=progress), settings  # progress: a frame bar per sequence


def get_benchmark(
    benchmark: str, root: str | Path, split: str | int | None = None, year: str | None = None
) -> Benchmark:
    """The :class:`~siammae.evaluation.protocol.Benchmark` for a name, a split (default: the benchmark's) and, for
    DAVIS, a year; ``year`` None is detected from ``root`` (:func:`~siammae.evaluation.davis.detect_year`) and
    logged with the reason."""
    if benchmark not in BENCHMARKS:
        raise InputError(f"benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    split = DEFAULT_SPLITS[benchmark] if split is None else split
    if benchmark != "davis":
        if year is not None:
            raise InputError(f"a year applies to DAVIS only, not {benchmark}")
        return Jhmdb(split) if benchmark == "jhmdb" else Vip(str(split))
    if year is None:
        year, why = detect_year(root)
        if why is not None:
            log.info(f"DAVIS-{year} detected in {root}: {why} (pass --year to choose)")
    return Davis(str(year), str(split))  # 2016 and "2016" are the same year


def evaluate(
    benchmark: str,
    root: str | Path,
    *,
    ckpt: str | Path | None = None,
    encoder: str | Path | None = None,
    results: str | Path | None = None,
    out: str | Path | None = None,
    split: str | int | None = None,
    year: str | None = None,
    preset: str | None = None,
    overrides: dict | None = None,
    size=None,
    arch: str | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 8,
    sequences: list[str] | None = None,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    choice=None,
) -> EvalResult:
    """Evaluate a checkpoint (``ckpt``; none of ``ckpt``, ``encoder``, ``results``: the default weights, or the
    shipped model when they cannot be had, as the commands do; ``choice``: that choice when already made,
    :class:`~siammae.model.load.WeightsChoice`), an exported encoder (``encoder``: ``model.onnx`` /
    ``model.engine``, any :func:`~siammae.export.runtime.load_encoder` runtime) or existing predictions
    (``results``) on ``benchmark``.

    benchmark: "davis" (``year`` "2016" or "2017", None: detected from ``root``; split "val"), "jhmdb" (split 1,
    2 or 3) or "vip" (split "val"). With ``ckpt`` the model propagates the first frame's labels through every
    sequence; the predictions, per-sequence scores and tables go to ``out`` (default
    ``eval/<benchmark>...-<ckpt name>``); the run resumes where it stopped unless ``overwrite``. ``size`` overrides
    the preset's input size: a short side (``480``) or a fixed size (``"480x880"``), as ``siammae-track --size``.
    With ``results`` the predictions there are scored (tables to ``out``, default the results folder). Returns the
    :class:`~siammae.evaluation.results.EvalResult` (``metrics``: the benchmark's table, official column order;
    ``to_json()``: ``results.json``).

    Everything that can be checked without the model is checked before it loads (and before torch is imported):
    the data set's lists, ``sequences``, the checkpoint or encoder file, the results and output folders.
    """
    if sum(x is not None for x in (ckpt, encoder, results)) > 1:
        raise InputError(
            "give one of a checkpoint or an exported encoder (to run the model) or a results folder (to score it)"
        )
    if max_frames is not None and max_frames < 2:
        raise InputError(f"max_frames must be at least 2, got {max_frames}")
    if encoder is None and results is None:  # the weights, torch-free: ckpt, or the default (or the shipped model)
        from siammae.model.load import choose_weights

        choice = choice if choice is not None else choose_weights(ckpt)
    else:
        choice = None
        if encoder is not None and not Path(encoder).is_file():
            raise InputError(f"{encoder}: no such file")
    from siammae.propagation.config import check_attention_override  # torch-free

    check_attention_override(encoder, overrides or {})
    bench = get_benchmark(benchmark, root, split, year)
    names = bench.names(root)  # a missing root or list fails here, before any model
    if sequences is not None:
        names = _check_sequences(bench, names, sequences)
        bench = dataclasses.replace(bench, sequences=tuple(names))  # named in the title and the settings
    if results is not None:
        with OutputFolder(out) if out is not None else contextlib.nullcontext():
            return bench.score_results(root, results, out=out, sequences=names, progress=progress)
    if out is None:
        from siammae.model.weights import weights_stem

        tag = f"davis{bench.year}" if isinstance(bench, Davis) else benchmark
        out = Path("eval") / f"{tag}-{bench.split}-{weights_stem(choice.spec) if choice else Path(encoder).stem}"
    with OutputFolder(out):  # one run at a time, no planted links, no temp files of a killed run
        runner, settings = load_runner(
            ckpt, benchmark, preset, overrides, size, arch, device, dtype, batch_size, encoder, choice, progress
        )
        return bench.run_model(runner, root, out, names, max_frames, settings, overwrite, progress)


def _check_sequences(bench: Benchmark, listed: list[str], sequences: list[str]) -> list[str]:
    """``sequences`` when each is a plain name listed in the split (``--sequences`` of another year or split
    would be run and scored against the wrong protocol); an InputError naming the first that is not."""
    for name in sequences:  # JHMDB names are "<action>/<video>"
        parts = name.split("/") if isinstance(bench, Jhmdb) else [name]
        if isinstance(bench, Jhmdb) and len(parts) != 2:
            raise InputError(f"--sequences: {name!r} is not '<action>/<video>'")
        for part in parts:
            check_name(part, f"--sequences {name!r}")
    unknown = [s for s in sequences if s not in set(listed)]
    if unknown:
        raise InputError(
            f"--sequences: {', '.join(unknown[:4])} not in the {bench.title} list ({len(listed)} sequences, e.g. "
            f"{', '.join(listed[:3])})"
        )
    return list(sequences)
