"""The `mlflow` logger: an MLflow run in a local store (or on a tracking server).

By default runs go to sqlite:///mlflow.db in the working directory, with artifacts in
./mlartifacts, which is what `mlflow ui` (from the full `mlflow` package) opens when started
in that directory. A `file:` store (MLflow's older layout, in maintenance mode since 3.x) is
accepted when asked for.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import MLFlowLogger

from .common import OptimizerSteps, is_image, numbers, remember_id, remembered_id, texts


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go beside the database (MLflow would put them under the
    working directory); other stores choose for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return str(db.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment))


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_/. -]+", "_", name)


class MLflowRun(OptimizerSteps, MLFlowLogger):
    """An MLflow run per lmzoo run, in the experiment named after the study (or `experiment`),
    named `variant-seed`: the resolved recipe as params (flattened, values cut at 250
    characters) and whole as config.json, every logged metric with lmzoo's step, and at the end
    the summary as summary/* metrics (text entries as lmzoo.* tags) and the artifact files
    (plots under plots/). `--resume` continues the same MLflow run."""

    def __init__(self, tracking_uri=None, experiment=None, tags=None, *, save_dir, study: str, run_name: str,
                 config: dict):
        uri = tracking_uri or default_tracking_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name; MLflow 3 wants consent
        name = experiment or study
        self._save, self._config = Path(save_dir), config
        run_tags = {"lmzoo.run_dir": str(self._save.resolve()), **(tags or {})}
        super().__init__(experiment_name=name, run_name=run_name, tracking_uri=uri, tags=run_tags,
                         artifact_location=_artifact_root(uri, name))

    @property
    @rank_zero_experiment
    def experiment(self):
        if not self._initialized:
            earlier = remembered_id(self._save, "mlflow")
            if earlier and self._run_exists(earlier):
                self._run_id = earlier
            elif self._experiment_id is None:
                self._experiment_id = self._find_or_create_experiment()
            client = super().experiment
            if earlier == self._run_id:
                client.update_run(self._run_id, status="RUNNING")
            else:
                self.log_hyperparams(self._config)
                client.log_dict(self._run_id, self._config, "config.json")
                remember_id(self._save, "mlflow", self._run_id)
        return self._mlflow_client

    def _find_or_create_experiment(self) -> str:
        """The study's experiment, created if missing (by another process too: studies may train
        runs in parallel)."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client
        for _ in range(2):
            found = client.get_experiment_by_name(self._experiment_name)
            if found is not None and found.lifecycle_stage == "active":
                return found.experiment_id
            if found is not None:
                raise MlflowException(f"MLflow experiment {self._experiment_name!r} is deleted; restore it "
                                      "(mlflow experiments restore) or choose another `experiment`")
            try:
                return client.create_experiment(self._experiment_name, artifact_location=self._artifact_location)
            except MlflowException:  # created meanwhile by another process: look it up again
                continue
        raise MlflowException(f"could not create MLflow experiment {self._experiment_name!r}")

    def _run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self._mlflow_client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def finish_run(self, summary: dict, artifacts: list[Path]) -> None:
        from mlflow.entities import Metric, RunTag

        client, run_id = self.experiment, self.run_id
        now, step = int(time.time() * 1000), int(summary.get("steps") or 0)
        metrics = [Metric(_key(f"summary/{k}"), v, now, step) for k, v in numbers(summary).items()]
        tags = [RunTag(_key(f"lmzoo.{k}"), v[:5000]) for k, v in texts(summary).items()]
        for i in range(0, max(len(metrics), len(tags)), 100):  # MLflow takes at most 100 per call
            client.log_batch(run_id, metrics=metrics[i:i + 100], tags=tags[i:i + 100])
        for path in artifacts:
            client.log_artifact(run_id, str(path), "plots" if is_image(path) else None)
        client.set_terminated(run_id, "FINISHED")
