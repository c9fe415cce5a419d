"""The one evaluation path the three benchmarks share: score a results folder, or run a model and score what it wrote.

A benchmark (:class:`~siammae.evaluation.davis.Davis`, :class:`~siammae.evaluation.jhmdb.Jhmdb`,
:class:`~siammae.evaluation.vip.Vip`) is a frozen dataclass of its split (and DAVIS's year) that supplies only what
differs between them:

- ``names(root)``: the sequences of the split, from the data set's list files;
- ``score(root, name, results_dir)``: the record of one sequence from the predictions in ``results_dir``;
- ``predict(runner, root, name, results, max_frames)``: propagate one sequence, write its predictions under
  ``results.root / "predictions"``, and return its record (scored from the files written, so that scoring them
  again with ``--results`` gives the same numbers);
- ``tables(results, records)``: the per-sequence and global tables.

:meth:`Benchmark.score_results` and :meth:`Benchmark.run_model` are the two paths, written once. A record is a
JSON-ready dict stored in ``scores/<name>.json`` (the resume marker, :class:`~siammae.evaluation.results.ResultsDir`).
Every data error raised for a sequence names it: a message that does not already is prefixed with
``<benchmark> sequence <name>:``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from siammae.errors import InputError
from siammae.evaluation.results import EvalResult, ResultsDir

if TYPE_CHECKING:  # the model side (torch, propagation) is not needed to score existing predictions
    from siammae.evaluation.runner import Runner


@dataclass(frozen=True)
class Benchmark(ABC):
    """One benchmark at one split; the fields are the data settings stored with its results."""

    name: ClassVar[str]  # "davis" | "jhmdb" | "vip"
    label: ClassVar[str]  # how errors and titles name it: "DAVIS-2017", "JHMDB", "VIP"
    # ``--sequences``: the part of the split that was run, named in the title and the settings (None: all of it)
    sequences: tuple[str, ...] | None = field(default=None, kw_only=True)

    @property
    def title(self) -> str:
        """The heading of the results table."""
        return f"{self.label} {self.split}{self.subset_text}"  # type: ignore[attr-defined]

    @property
    def subset_text(self) -> str:
        """``", 2 sequences: dog, libby"`` for a subset (a table of part of a split must not read as the split's)."""
        if self.sequences is None:
            return ""
        names = ", ".join(self.sequences[:6]) + (
            f", ... ({len(self.sequences) - 6} more)" if len(self.sequences) > 6 else ""
        )
        return f", {len(self.sequences)} sequence{'s' if len(self.sequences) != 1 else ''}: {names}"

    def data_settings(self) -> dict:
        """What identifies the data of a run besides its root: split (and year), and the subset when one was given."""
        return {k: v for k, v in asdict(self).items() if k != "sequences" or v is not None}

    # ------------------------------------------------------------------------------- what each benchmark supplies
    @abstractmethod
    def names(self, root: str | Path) -> list[str]: ...

    @abstractmethod
    def score(self, root: Path, name: str, results_dir: Path) -> dict: ...

    @abstractmethod
    def predict(self, runner: Runner, root: Path, name: str, results: ResultsDir, max_frames: int | None) -> dict: ...

    @abstractmethod
    def tables(self, results: ResultsDir, records: list[dict]) -> EvalResult: ...

    # ------------------------------------------------------------------------------------------ the shared paths
    def score_results(
        self,
        root: str | Path,
        results_dir: str | Path,
        out: str | Path | None = None,
        sequences: list[str] | None = None,
        progress: bool = True,
    ) -> EvalResult:
        """Score existing predictions in ``results_dir`` (the benchmark's official results layout). The tables go
        to ``out`` (default: ``results_dir``, as davis2017-evaluation does); returns the :class:`EvalResult`
        (``metrics``: the global table in the official column order)."""
        root, results_dir = Path(root), Path(results_dir)
        if not results_dir.is_dir():
            raise InputError(f"results folder {results_dir} does not exist")
        names = sequences or self.names(root)
        settings = {"benchmark": self.name, **self.data_settings(), "results": str(results_dir)}
        results = ResultsDir(out or results_dir, settings, cache=False)
        records = results.collect(names, self._naming(lambda n: self.score(root, n, results_dir)), progress)
        return self.tables(results, records)

    def run_model(
        self,
        runner: Runner,
        root: str | Path,
        out: str | Path,
        sequences: list[str] | None = None,
        max_frames: int | None = None,
        settings: dict | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> EvalResult:
        """Propagate the first frame's labels through every sequence, write the predictions to
        ``out/predictions`` and score them. Resumable: sequences already scored in ``out`` (same settings) are read
        back. ``max_frames`` keeps the first frames of each sequence only (quick checks; not the benchmark).
        ``settings``: extra entries for the results' settings (the checkpoint and its sha256)."""
        root = Path(root)
        names = sequences or self.names(root)
        settings = runner.run_settings(self.name, root, max_frames, settings, **self.data_settings())
        results = ResultsDir(out, settings, overwrite=overwrite)
        run = self._naming(lambda n: self.predict(runner, root, n, results, max_frames))
        return self.tables(results, results.collect(names, run, progress))

    def _naming(self, compute: Callable[[str], dict]) -> Callable[[str], dict]:
        """``compute`` whose data errors name the sequence they happened in."""

        def named(name: str) -> dict:
            try:
                return compute(name)
            except InputError as e:
                if name in str(e):
                    raise
                raise type(e)(f"{self.label} sequence {name}: {e}") from e

        return named
