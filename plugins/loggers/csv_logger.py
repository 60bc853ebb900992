"""The `csv` logger: every metric any component logs, in <run dir>/csv/metrics.csv.

The run's own metrics.csv (fixed columns, written by the kernel's MetricsCSV callback whatever
the loggers) stays the file reports read; this one is Lightning's wide CSV with a column per
logged name, so metrics a plugin adds (gradient norms, auxiliary losses) are kept too.
"""
from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from .common import OptimizerSteps


class KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an earlier attempt's rows survive a resume: at the
    first metrics logged now, rows at or past their step are dropped (an interrupted attempt
    logged them after the checkpoint it resumes from) and the rest kept, as metrics.csv does."""

    _trimmed = False

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning deletes an existing metrics.csv here

    def log_metrics(self, metrics_dict, step=None) -> None:
        if not self._trimmed:
            self._trim(step)
        super().log_metrics(metrics_dict, step)

    def _trim(self, step) -> None:
        self._trimmed = True
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if step is None or float(r.get("step") or 0) < step]
        self.metrics_keys = keys
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


class CSVRun(OptimizerSteps, CSVLogger):
    """Every logged metric, one row per logging step, in <run dir>/csv/metrics.csv (a column per
    metric name, Lightning's CSV layout) with the resolved recipe in csv/hparams.yaml. Resuming
    keeps the rows before the resumed step. For the fixed-column metrics.csv every run writes
    anyway, no logger is needed."""

    def __init__(self, *, save_dir, study: str, run_name: str, config: dict):
        super().__init__(save_dir=str(save_dir), name="csv", version="", flush_logs_every_n_steps=1)
        self._config = config

    @property
    @rank_zero_experiment
    def experiment(self) -> KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingWriter(log_dir=self.log_dir)
            self._experiment.log_hparams(self._config)
        return self._experiment

    def finish_run(self, summary: dict, artifacts: list[Path]) -> None:
        """Nothing to attach: the summary and plots are files beside csv/ already."""
        if self._experiment is not None:
            self.save()
