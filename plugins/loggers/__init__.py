"""Experiment trackers as the `logger` component kind: `csv`, `tensorboard`, `wandb`, `mlflow`.

A recipe chooses them under `trainer.loggers`; each is a Lightning logger, so every metric a
run logs (train_loss, val_loss, val_bpb and whatever else a component logs)
reaches every tracker, numbered by lmzoo's step (optimizer steps done, as in metrics.csv).

    trainer:
      loggers:
        - {name: tensorboard}
        - {name: wandb, project: my-research}      # offline by default; `wandb sync` later
        - {name: mlflow}                           # ./mlflow.db unless tracking_uri is given

A study maps onto the tracker's grouping: the study name is the project/experiment/group,
`variant-seed<N>` the run name, the resolved recipe the run's config. When the run is done the
runner calls the `lmzoo_run_finished` hook; this plugin then records the summary as the
tracker run's summary, attaches the run directory's result files (summary.json, eval.json;
PNG plots as images) and closes the tracker run. It does so for every logger that has a
`finish_run(summary, artifacts)` method, so a third-party logger needs only that method. A
study's report can be sent the same way: loggers built for a run named "report" with the
study directory as save_dir, then the hook with that directory (report.md, summaries.json
and the plots are attached).

Implementations live in sibling modules imported only when a logger is built, so listing
components never imports a tracker library (they come with the `track` extra).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class CSVParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorBoardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WandbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: Optional[str] = Field(None, min_length=1, description="W&B project; None: the study name")
    entity: Optional[str] = Field(None, min_length=1, description="W&B team or user; None: your default entity")
    group: Optional[str] = Field(None, min_length=1, description="run group; None: the study name")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline writes <run dir>/wandb/offline-run-* for `wandb sync` (no network, no "
                               "login); online streams to the server")
    tags: list[str] = Field(default_factory=list, description="tags on every run")


class MLflowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: Optional[str] = Field(
        None, min_length=1, description="where runs are stored: sqlite:///path.db, file:/path/mlruns or a server's "
                                        "http(s) address; None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in "
                                        "the working directory (what `mlflow ui` opens by default)")
    experiment: Optional[str] = Field(None, min_length=1, description="MLflow experiment; None: the study name")
    tags: dict[str, str] = Field(default_factory=dict, description="tags on every run")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("logger", "csv", factory="lmzoo.plugins.loggers.csv_logger:CSVRun", params=CSVParams,
                 summary="every logged metric in <run dir>/csv/metrics.csv (Lightning's CSV layout), kept on resume")
    registry.add("logger", "tensorboard", factory="lmzoo.plugins.loggers.tensorboard_logger:TensorBoardRun",
                 params=TensorBoardParams,
                 summary="TensorBoard event files in <run dir>/tensorboard: scalars, config, summary, hparams, plots")
    registry.add("logger", "wandb", factory="lmzoo.plugins.loggers.wandb_logger:WandbRun", params=WandbParams,
                 summary="Weights & Biases run (offline by default): config, history, summary, plots and files")
    registry.add("logger", "mlflow", factory="lmzoo.plugins.loggers.mlflow_logger:MLflowRun", params=MLflowParams,
                 summary="MLflow run in a local store or on a server: params, metrics, summary, artifacts")


@lmzoo.hookimpl
def lmzoo_run_finished(recipe, run_dir, summary, loggers):
    if not loggers:
        return
    from .common import finish_all, result_files

    finish_all(loggers, summary, result_files(run_dir))
