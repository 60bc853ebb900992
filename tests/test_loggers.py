"""The `logger` components (plugins/loggers) on real, tiny lmzoo training runs (the recipe's
`trainer.loggers`, built and finished by the runner), read back with each tracker's own reader: TensorBoard's EventAccumulator, W&B's offline transaction log (through
`wandb leet inspect`), MLflow's client on a local store, and the CSV file. Nothing touches a
network: W&B runs offline and MLflow writes a local sqlite or file store."""
import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

import lmzoo
from lmzoo.hooks import hook
from lmzoo.recipe import load_runs, to_dict
from lmzoo.runner import RunError, train_run

# find_spec, not importorskip: importing mlflow at collection would put importlib_metadata's finder on
# sys.meta_path for the whole session, and entry points then come back as the backport's class
pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("wandb", "mlflow", "tensorboard")),
                                reason="needs the track extra (pip install -e '.[track]')")

TINY = """
name: tracked
seed: 3
data: {{source: {{name: synthetic, n_docs: 200}}, tokenizer: {{name: byte}}, context: 32}}
model: {{d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64}}
train:
  optimizer: {{name: adamw, lr: 1.0e-2}}
  lr_schedule: {{name: cosine, warmup_steps: 2}}
  batch_size: 4
  accumulate: 2
  budget: {{steps: 12}}
  val_every: 5
  val_batches: 2
  log_every: 2
eval: {{contexts: [32, 64]}}
trainer:
  loggers:
    - {{name: csv}}
    - {{name: tensorboard}}
    - {{name: wandb}}
    - {{name: mlflow, tracking_uri: "{mlflow}"}}
"""
STUDY, RUN_NAME = "tracked", "base-seed3"  # the recipe's name; the runner's variant-seed<N>


def tiny_recipe(tmp_path, mlflow_uri):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(mlflow=mlflow_uri))
    return load_runs(path, [])[1][0].recipe


class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run


def build_loggers(recipe, save_dir, run_name, names):
    """Loggers as the runner builds them, for a directory the runner does not train (a study's)."""
    ctx = dict(save_dir=Path(save_dir), study=STUDY, run_name=run_name, config=to_dict(recipe))
    return [lmzoo.create("logger", spec.name, params=spec, **ctx) for spec in recipe.trainer.loggers
            if spec.name in names]


def a_plot(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.plot([3, 2, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def metrics_rows(run_dir, column):
    """{step: value} of one column of the run's own metrics.csv (written by the kernel)."""
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r[column]}


def _inspect(run_dir, *flags):
    return subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(run_dir), "--json", *flags],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def wandb_records(run_dir):
    """Every record of W&B's offline transaction log, read by W&B's own inspector."""
    return [json.loads(line) for line in _inspect(run_dir).splitlines() if line.strip()]


def wandb_run(run_dir):
    """The inspector's view of the whole run: config, final summary, state, exit code."""
    return json.loads(_inspect(run_dir, "--summary"))


def wandb_history(records, key):
    items = [r["history"]["item"] for r in records if r["type"] == "history"]
    return {int(i["trainer/global_step"]): i[key] for i in items if key in i}


def tensorboard_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def wandb_home(tmp_path_factory):
    """W&B's staging and cache folders, kept out of the home directory."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(home / var.lower()))
        mp.delenv("WANDB_MODE", raising=False)
        yield home


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, wandb_home):
    """One real training run with every logger, finished by the runner through lmzoo_run_finished."""
    base = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    recipe = tiny_recipe(base, uri)
    run_dir = base / "run"
    summary = train_run(recipe, run_dir, progress=False)
    return {"run_dir": run_dir, "summary": summary, "uri": uri, "recipe": recipe}


def test_loggers_are_listed_and_listing_imports_no_tracker():
    names = {e.name for e in lmzoo.components("logger")}
    assert names == {"csv", "tensorboard", "wandb", "mlflow"}
    code = ("import sys, lmzoo; lmzoo.components('logger'); "
            "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard', 'torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_logger_params_are_one_clear_error():
    with pytest.raises(Exception, match="unknown parameter 'projct'.*did you mean 'project'"):
        lmzoo.create("logger", "wandb", projct="x")


def test_csv_logger_has_every_metric_at_lmzoos_steps(tracked):
    run_dir = tracked["run_dir"]
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert "epoch" not in rows[0]
    train = {int(r["step"]): float(r["train_loss"]) for r in rows if r["train_loss"]}
    val = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert train == pytest.approx(metrics_rows(run_dir, "train_loss"), abs=1e-6)
    assert val == pytest.approx(metrics_rows(run_dir, "val_loss"), abs=1e-6)
    assert sorted(train) == [2, 4, 6, 8, 10, 12] and sorted(val) == [5, 10]
    assert "d_model: 32" in (run_dir / "csv" / "hparams.yaml").read_text()


def test_tensorboard_events_read_back(tracked):
    run_dir, summary = tracked["run_dir"], tracked["summary"]
    ea = tensorboard_events(run_dir / "tensorboard")
    train = {e.step: e.value for e in ea.Scalars("train_loss")}
    assert train == pytest.approx(metrics_rows(run_dir, "train_loss"), abs=1e-6)
    val = {e.step: e.value for e in ea.Scalars("val_loss")}
    assert val == pytest.approx(metrics_rows(run_dir, "val_loss"), abs=1e-6)
    final = ea.Scalars("summary/val_loss")
    assert [(e.step, e.value) for e in final] == [(12, pytest.approx(summary["val_loss"], rel=1e-6))]
    assert ea.Scalars("summary/extrapolation/64")[0].value == pytest.approx(summary["extrapolation"]["64"])
    tags = set(ea.Tags()["tensors"])
    assert {"config/text_summary", "summary/text_summary", "files/summary.json/text_summary",
            "files/eval.json/text_summary"} <= tags
    config_text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "d_model: 32" in config_text and RUN_NAME in config_text
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(ea.PluginTagToContent("hparams"))


def test_wandb_offline_run_files(tracked):
    run_dir, summary = tracked["run_dir"], tracked["summary"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(offline)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["project"], run["run_group"], run["display_name"]) == (STUDY, STUDY, RUN_NAME)
    assert run["config"]["update"]["model"]["d_model"] == 32
    assert run["config"]["update"]["train"]["optimizer"]["name"] == "adamw"
    assert wandb_history(records, "train_loss") == pytest.approx(metrics_rows(run_dir, "train_loss"), abs=1e-6)
    assert wandb_history(records, "val_loss") == pytest.approx(metrics_rows(run_dir, "val_loss"), abs=1e-6)
    whole = wandb_run(offline)
    assert whole["state"] == "finished" and whole["exit_code"] == 0 and whole["config"]["seed"] == 3
    final = whole["summary"]
    assert final["val_loss"] == pytest.approx(summary["val_loss"]) and final["params"] == summary["params"]
    assert final["extrapolation/64"] == pytest.approx(summary["extrapolation"]["64"])
    (artifact,) = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert sorted(c["path"] for c in artifact["manifest"]["contents"]) == ["eval.json", "summary.json"]
    ids = json.loads((run_dir / "tracker_ids.json").read_text())
    assert offline.name.endswith(ids["wandb"])


def test_mlflow_local_store_read_back_by_its_client(tracked):
    from mlflow.tracking import MlflowClient

    run_dir, summary = tracked["run_dir"], tracked["summary"]
    client = MlflowClient(tracked["uri"])
    experiment = client.get_experiment_by_name(STUDY)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == RUN_NAME and run.info.status == "FINISHED"
    assert run.data.params["model/d_model"] == "32" and run.data.params["data/source/name"] == "synthetic"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert history == pytest.approx(metrics_rows(run_dir, "train_loss"), abs=1e-6)
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    assert val == pytest.approx(metrics_rows(run_dir, "val_loss"), abs=1e-6)
    assert run.data.metrics["summary/val_loss"] == pytest.approx(summary["val_loss"])
    assert run.data.tags["lmzoo.variant"] == "base" and run.data.tags["lmzoo.run_dir"] == str(run_dir.resolve())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.json", "summary.json", "eval.json"}
    copy = client.download_artifacts(run.info.run_id, "config.json", str(run_dir.parent))
    assert json.loads(Path(copy).read_text())["model"]["d_model"] == 32


def test_resume_continues_each_tracker_without_the_interrupted_steps(tmp_path, wandb_home):
    uri = f"file:{tmp_path / 'mlruns'}"  # MLflow's file store this time
    recipe, run_dir = tiny_recipe(tmp_path, uri), tmp_path / "run"
    with pytest.raises(RunError, match="interrupted"):  # after the step-5 checkpoint, having logged 6 and 8
        train_run(recipe, run_dir, callbacks=[Crash(9)], progress=False)
    ids = json.loads((run_dir / "tracker_ids.json").read_text())
    train_run(recipe, run_dir, resume=True, progress=False)
    assert json.loads((run_dir / "tracker_ids.json").read_text()) == ids
    expected = metrics_rows(run_dir, "train_loss")
    assert sorted(expected) == [2, 4, 6, 8, 10, 12]

    with (run_dir / "csv" / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["train_loss"]]
    assert steps == [2, 4, 6, 8, 10, 12]  # the interrupted attempt's 6 and 8 were replaced, not repeated

    ea = tensorboard_events(run_dir / "tensorboard")  # purged: the old events from step 6 on are dropped
    assert [e.step for e in ea.Scalars("train_loss")] == [2, 4, 6, 8, 10, 12]
    assert {e.step: e.value for e in ea.Scalars("train_loss")} == pytest.approx(expected, abs=1e-6)

    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    # wandb appends "-1" to the second attempt's directory when both started within the same second
    assert len(attempts) == 2 and all(re.fullmatch(rf"offline-run-\d+_\d+-{ids['wandb']}(-\d+)?", a.name) for a in attempts)
    exits = [wandb_run(a)["exit_code"] for a in attempts]
    assert exits[0] != 0 and exits[1] == 0  # the interrupted attempt closed as failed
    resumed = wandb_history(wandb_records(attempts[1]), "train_loss")
    assert sorted(resumed) == [6, 8, 10, 12]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    latest = {}
    for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.timestamp):
        latest[m.step] = m.value
    assert latest == pytest.approx(expected, abs=1e-6)


def test_study_report_as_a_tracker_run(tmp_path, wandb_home):
    """A study's report and plots go to a run named "report", built with the same factories
    and finished through the same hook on the study directory."""
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    recipe, study_dir = tiny_recipe(tmp_path, uri), tmp_path / "study"
    study_dir.mkdir()
    for name in ("val_loss.png", "extrapolation.png"):
        a_plot(study_dir / name)
    (study_dir / "report.md").write_text("# tracked\n\n| variant | val_loss |\n|---|---|\n| base | 3.1 |\n")
    loggers = build_loggers(recipe, study_dir, "report", names=("tensorboard", "wandb", "mlflow"))
    hook().lmzoo_run_finished(recipe=recipe, run_dir=study_dir, summary={"runs": 1, "base": {"val_loss": 3.1}},
                              loggers=loggers)

    ea = tensorboard_events(study_dir / "tensorboard")
    assert set(ea.Tags()["images"]) == {"plots/val_loss", "plots/extrapolation"}
    assert (ea.Images("plots/val_loss")[0].width, ea.Images("plots/val_loss")[0].height) == (150, 100)
    assert ea.Scalars("summary/base/val_loss")[0].value == pytest.approx(3.1)
    report = ea.Tensors("files/report.md/text_summary")[0].tensor_proto.string_val[0].decode()
    assert report.startswith("# tracked")

    (offline,) = (study_dir / "wandb").glob("offline-run-*")
    whole = wandb_run(offline)
    assert whole["name"] == "report" and whole["summary"]["base/val_loss"] == 3.1
    image = whole["summary"]["plots/val_loss"]
    assert image["_type"] == "image-file" and (offline / "files" / image["path"]).is_file()

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
    assert run.info.run_name == "report" and run.data.metrics["summary/base/val_loss"] == 3.1
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "plots")) == \
        ["plots/extrapolation.png", "plots/val_loss.png"]
    assert "report.md" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_failing_tracker_is_reported_and_the_others_finish(tmp_path, caplog):
    from lmzoo.plugins.loggers.common import finish_all

    class Broken:
        def finish_run(self, summary, artifacts):
            raise ConnectionError("tracker unreachable")

    class Fine:
        got = None

        def finish_run(self, summary, artifacts):
            Fine.got = (summary, artifacts)

    missing = tmp_path / "missing.png"
    problems = finish_all([Broken(), object(), Fine()], {"val_loss": 1.0}, [missing])
    assert len(problems) == 1 and "Broken" in problems[0] and "tracker unreachable" in problems[0]
    assert Fine.got == ({"val_loss": 1.0}, [])  # files that do not exist are not attached
    assert "tracker unreachable" in caplog.text
