"""The `tensorboard` logger: event files in <run dir>/tensorboard/.

TensorBoard groups runs by directory, so `tensorboard --logdir runs/<study>` shows every run of
a study, each named by its path (rope/tensorboard, alibi/tensorboard, ...).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .common import OptimizerSteps, flatten, is_image, numbers, summary_markdown

TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt", ".csv")
MAX_TEXT_BYTES = 100_000


def _hparam_value(v):
    """TensorBoard's hparams take numbers, strings and booleans; anything else as text."""
    return v if isinstance(v, (int, float, str, bool)) else str(v)


class TensorBoardRun(OptimizerSteps, TensorBoardLogger):
    """TensorBoard event files in <run dir>/tensorboard: every logged metric as a scalar, the
    resolved recipe as text, and at the end the summary (scalars under summary/, a table, and
    the HParams dashboard row of config against final metrics) and PNG plots as images. A
    resumed run continues the same event stream; events an interrupted attempt wrote past the
    resumed step are purged."""

    def __init__(self, *, save_dir, study: str, run_name: str, config: dict):
        super().__init__(save_dir=str(save_dir), name="tensorboard", version="", default_hp_metric=False)
        self._config, self._run_name = config, run_name
        self._resuming = any(Path(self.log_dir).glob("events.out.tfevents.*"))
        self._fresh = not self._resuming

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        if self._resuming and step is not None:
            # the first metrics after a resume: readers drop the interrupted attempt's events from
            # this step on (SummaryWriter's purge_step, written when the step is known)
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            self._resuming = False
            self.experiment._get_file_writer().add_event(
                Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
        super().log_metrics(metrics, step)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            writer = super().experiment
            if self._fresh:
                text = yaml.safe_dump(self._config, sort_keys=False)
                writer.add_text("config", f"run `{self._run_name}`\n\n```yaml\n{text}```", 0)
        return self._experiment

    def finish_run(self, summary: dict, artifacts: list[Path]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self.experiment
        step = int(summary.get("steps") or 0)
        final = {f"summary/{k}": v for k, v in numbers(summary).items()}
        for k, v in final.items():
            writer.add_scalar(k, v, step)
        writer.add_text("summary", summary_markdown(summary), step)
        # the HParams dashboard: one row per run, the recipe's values against the final metrics
        params = {k: _hparam_value(v) for k, v in flatten(self._config).items() if v is not None}
        for record in hparams(params, final):
            writer._get_file_writer().add_summary(record)
        for path in artifacts:
            if is_image(path):
                from PIL import Image

                with Image.open(path) as im:
                    pixels = np.asarray(im.convert("RGB"))
                writer.add_image(f"plots/{path.stem}", pixels, step, dataformats="HWC")
            elif path.suffix.lower() in TEXT_SUFFIXES and path.stat().st_size <= MAX_TEXT_BYTES:
                text = path.read_text(errors="replace")
                writer.add_text(f"files/{path.name}", text if path.suffix == ".md" else f"```\n{text}\n```", step)
        writer.flush()
        writer.close()
