"""What every lmzoo logger shares: lmzoo's step numbering, flat summaries, which artifact is a
picture, tracker run ids remembered in the run directory, and finishing a run's loggers."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")
IDS_FILE = "tracker_ids.json"
# a run directory's results worth attaching (a study directory's too: its report and summaries)
RESULT_FILES = ("summary.json", "eval.json", "report.md", "summaries.json")

log = logging.getLogger("lmzoo.loggers")


class OptimizerSteps:
    """Mixin for a Lightning logger: metrics are stamped with lmzoo's step (optimizer steps done,
    the `step` column of metrics.csv) instead of Lightning's 0-based index of the batch that
    stepped, and Lightning's constant `epoch` column is dropped (lmzoo trains by steps)."""

    def log_metrics(self, metrics, step=None):
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if metrics:
            super().log_metrics(metrics, None if step is None else step + 1)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def numbers(summary: dict) -> dict[str, float]:
    """The numeric entries of a (nested) summary, flattened; None and text are left out."""
    return {k: float(v) for k, v in flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def texts(summary: dict) -> dict[str, str]:
    return {k: v for k, v in flatten(summary).items() if isinstance(v, str)}


def summary_markdown(summary: dict) -> str:
    rows = [f"| {k} | {v:.6g} |" if isinstance(v, float) and math.isfinite(v) else f"| {k} | {v} |"
            for k, v in flatten(summary).items() if v is not None]
    return "| key | value |\n|---|---|\n" + "\n".join(rows)


def is_image(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def remembered_id(save_dir: Path, tracker: str) -> str | None:
    """The tracker's run id recorded by an earlier attempt of this run (so --resume continues the
    same tracker run, while --overwrite, which deletes the run directory, starts a new one)."""
    try:
        return json.loads((Path(save_dir) / IDS_FILE).read_text()).get(tracker)
    except (OSError, ValueError, AttributeError):
        return None


def remember_id(save_dir: Path, tracker: str, run_id: str) -> None:
    path = Path(save_dir) / IDS_FILE
    try:
        ids = json.loads(path.read_text())
    except (OSError, ValueError):
        ids = {}
    ids[tracker] = run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ids, indent=1))
    os.replace(tmp, path)


def result_files(run_dir) -> list[Path]:
    """The files a tracker run gets at the end: the results and every plot in the directory."""
    run_dir = Path(run_dir)
    files = [run_dir / name for name in RESULT_FILES if (run_dir / name).is_file()]
    return files + sorted(p for p in run_dir.iterdir() if p.is_file() and is_image(p))


def finish_all(loggers: Iterable, summary: dict, artifacts: Iterable) -> list[str]:
    """Call `finish_run(summary, artifacts)` on every logger that has one. A tracker that fails is
    reported (a warning naming it) and the others still finish: training results stand.
    Returns the problems, one line each."""
    files = [Path(a) for a in artifacts if Path(a).is_file()]
    problems = []
    for logger in loggers:
        finish = getattr(logger, "finish_run", None)
        if finish is None:
            continue
        try:
            finish(summary, files)
        except Exception as exc:  # a tracker's failure must not lose the run
            problems.append(f"logger {type(logger).__name__}: could not record the run's summary and artifacts "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            log.warning(problems[-1])
    return problems
