"""The output folder of an evaluation: settings, per-sequence scores (for resuming) and the result tables.

Layout of ``--out``::

    settings.json                        what was run: benchmark, data, checkpoint path + sha256, preset
    predictions/<sequence>/...           the propagated masks (DAVIS results layout) or keypoints
    scores/<sequence>.json               per-frame scores of one finished sequence (written last: resume marker)
    per-sequence_results-<split>.csv     one row per object (DAVIS) or video
    global_results-<split>.csv           the global table, official column order
    results.md, results.json             the global table with the settings, for a paper's table to be traced

A run into a folder that already holds ``settings.json`` resumes when the settings are the same (sequences with
a score file are not run again; the data set and checkpoint may have moved, the checkpoint's sha256 must be the
same) and stops with an error naming what changed otherwise, unless ``overwrite``.
Every file is written atomically, so an interrupted run leaves no half-written score that a resume would trust.
"""

import csv
import io
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from siammae.errors import InputError
from siammae.io import read_json, write_json, write_text

# Settings that say where things are, not what was computed: a resume may find the data set or the checkpoint
# moved (the checkpoint's identity is its sha256, which must match).
LOCATION_KEYS = frozenset({"root", "checkpoint", "results", "sequences"})  # sequences: a resume may run more


def _jsonable(value):
    """NaN / inf -> None so that the files are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation returns: the table's ``title``, ``metrics`` (the global table: metric -> value in [0, 1],
    None where undefined, in the official column order), the ``settings`` stored with the results, one row per
    sequence (or object), benchmark-specific ``extra`` tables (VIP: ``per_class_iou``) and the folder ``out``.
    :meth:`to_json` is ``results.json``, field for field."""

    title: str
    metrics: dict[str, float | None]
    settings: dict
    per_sequence: list[dict]
    out: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"title": self.title, "global": self.metrics, "settings": self.settings, **self.extra,
                "per_sequence": self.per_sequence}  # fmt: skip

    def to_markdown(self) -> str:
        """``results.md``: the global table in percent, then the settings."""
        return markdown_table(self.title, self.metrics, self.settings)


class ResultsDir:
    """An evaluation's ``--out`` folder (layout in the module docstring).

    settings: a JSON-serialisable dict that identifies the run; ``cache=False`` (scoring existing predictions,
    which is fast) keeps no per-sequence score files.
    """

    def __init__(self, root: str | Path, settings: dict, overwrite: bool = False, cache: bool = True):
        self.root = Path(root)
        self.settings = json.loads(json.dumps(_jsonable(settings)))  # normalised as read back from disk
        self.cache = cache
        path = self.root / "settings.json"
        if cache and path.exists() and not overwrite:
            try:
                previous = read_json(path)
            except InputError as err:
                raise InputError(f"{err}; pass --overwrite to start again") from None
            keys = (set(previous) | set(self.settings)) - LOCATION_KEYS
            changed = sorted(k for k in keys if previous.get(k) != self.settings.get(k))
            if changed:
                raise InputError(
                    f"{self.root} holds results of other settings (differing in: {', '.join(changed)}); "
                    "pass --overwrite to replace them or choose another --out"
                )
        if cache and overwrite and (self.root / "scores").exists():
            shutil.rmtree(self.root / "scores")
        if cache:
            write_json(path, self.settings)

    def score_path(self, sequence: str) -> Path:
        return self.root / "scores" / f"{sequence}.json"

    def prediction_dir(self, sequence: str) -> Path:
        return self.root / "predictions" / sequence

    def load(self, sequence: str) -> dict | None:
        """The stored scores of a finished sequence, or None when it has to be run."""
        path = self.score_path(sequence)
        if not self.cache or not path.exists():
            return None
        try:
            return read_json(path)
        except InputError as err:
            raise InputError(f"{err}; delete it or pass --overwrite") from None

    def save(self, sequence: str, record: dict) -> None:
        if self.cache:
            write_json(self.score_path(sequence), record, indent=None)

    def collect(self, names: list[str], compute: Callable[[str], dict], progress: bool = True) -> list[dict]:
        """The record of every sequence: stored ones are read back, the others computed and stored."""
        records = []
        for name in tqdm(names, desc=self.settings.get("benchmark", "eval"), unit="seq", disable=not progress):
            record = self.load(name)
            if record is None:
                record = json.loads(json.dumps(_jsonable(compute(name))))  # as a resumed run reads it
                self.save(name, record)
            records.append(record)
        return records

    def write_tables(
        self,
        split: str,
        title: str,
        per_sequence: list[dict],
        global_row: dict[str, float],
        extra: dict | None = None,
    ) -> EvalResult:
        """Write the per-sequence CSV and the global CSV / Markdown / JSON (:class:`EvalResult`, which it returns).

        per_sequence: rows with a "Sequence" key and the metric columns; global_row: metric -> value in [0, 1],
        in the order the table shows them.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if per_sequence:
            write_text(self.root / f"per-sequence_results-{split}.csv", _csv(list(per_sequence[0]), per_sequence))
        write_text(self.root / f"global_results-{split}.csv", _csv(list(global_row), [global_row]))
        result = EvalResult(title, _jsonable(global_row), self.settings, _jsonable(per_sequence), str(self.root),
                            _jsonable(extra or {}))  # fmt: skip
        write_json(self.root / "results.json", result.to_json())
        write_text(self.root / "results.md", result.to_markdown())
        return result


def _csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def markdown_table(title: str, global_row: dict[str, float], settings: dict | None = None) -> str:
    """The global table in percent with one decimal (as papers print it), followed by the settings if given."""
    cells = ["-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}" for v in global_row.values()]
    lines = [
        f"## {title}",
        "",
        "| " + " | ".join(global_row) + " |",
        "|" + "---|" * len(global_row),
        "| " + " | ".join(cells) + " |",
    ]
    if settings:
        lines += ["", "Settings:", ""] + [f"- {key}: `{json.dumps(value)}`" for key, value in settings.items()]
    return "\n".join(lines) + "\n"
