"""The `wandb` logger: a Weights & Biases run, offline by default.

Offline, a run writes <run dir>/wandb/offline-run-<time>-<id>/ (run-<id>.wandb holds the config,
history and summary; media/ the images); `wandb sync <that dir>` uploads it later, and
`wandb leet inspect <that dir>` shows it locally.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .common import OptimizerSteps, flatten, is_image, remember_id, remembered_id


class WandbRun(OptimizerSteps, WandbLogger):
    """A W&B run per lmzoo run: project and group default to the study name, the run is named
    `variant-seed`, the resolved recipe is its config, every logged metric its history (x axis
    trainer/global_step = lmzoo's step), and at the end the summary goes into the run summary,
    PNG plots into images, and the artifact files into a `run-files` artifact. `--resume`
    continues the same run id; a failed run is closed with a non-zero exit code."""

    def __init__(self, project=None, entity=None, group=None, mode="offline", tags=(), *,
                 save_dir, study: str, run_name: str, config: dict):
        import wandb

        self._save = Path(save_dir)
        run_id = remembered_id(self._save, "wandb") or uuid.uuid4().hex[:8]
        super().__init__(
            name=run_name, save_dir=str(save_dir), id=run_id, project=project or study, entity=entity,
            group=group or study, mode=mode, tags=list(tags) or None, config=config, job_type="train",
            # each lmzoo run is its own W&B run, even when a study trains several in one process
            reinit="create_new", settings=wandb.Settings(silent=True),
        )
        self._wandb_init.pop("anonymous", None)  # Lightning always passes it; W&B warns it is obsolete

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            import wandb

            # Lightning's own version would attach to any W&B run already open in the process
            self._save.mkdir(parents=True, exist_ok=True)
            self._experiment = wandb.init(**self._wandb_init)
            self._experiment.define_metric("trainer/global_step")
            self._experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
            remember_id(self._save, "wandb", self._experiment.id)
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success" and self._experiment is not None:
            self._experiment.finish(exit_code=1)

    def finish_run(self, summary: dict, artifacts: list[Path]) -> None:
        import wandb

        run = self.experiment
        run.summary.update({k: v for k, v in flatten(summary).items() if v is not None})
        images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in artifacts if is_image(p)}
        if images:
            if summary.get("steps") is not None:
                images["trainer/global_step"] = int(summary["steps"])
            run.log(images)
        if artifacts:
            files = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", f"run-{run.id}-files"), type="run-files")
            for path in artifacts:
                files.add_file(str(path), name=path.name)
            run.log_artifact(files)
        run.finish()
