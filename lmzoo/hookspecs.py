"""The hooks a plugin may implement. Every built-in component is a plugin like any other.

A plugin is a module (found through the `lmzoo` entry-point group, a file path in a
recipe's `plugins:` list, or the LMZOO_PLUGINS environment variable, os.pathsep-separated)
that defines one or more functions decorated with `lmzoo.hookimpl`.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lmzoo")
hookimpl = pluggy.HookimplMarker("lmzoo")


@hookspec
def lmzoo_register(registry):
    """Add components to the registries: `registry.add(kind, name, factory=..., params=..., summary=...)`.

    `params` is a pydantic model (types, defaults, constraints, a description per field);
    `factory(**params, **context)` builds the component (the context per kind is in
    `lmzoo.registry.KINDS`). A plugin may declare a new kind with `registry.add_kind`.
    """


@hookspec
def lmzoo_recipe_sections():
    """Return {section_name: pydantic model} for optional top-level recipe sections this
    plugin understands (e.g. `filter:`, `align:`, `sweep:`). A section left out of a recipe is None."""


@hookspec
def lmzoo_cli(app):
    """Add commands to the `lmzoo` typer app (e.g. `lmzoo tokenizer ...`, `lmzoo fit-scaling`)."""


@hookspec(firstresult=True)
def lmzoo_run_recipe(recipe, runs, out_dir, options):
    """Take over `lmzoo run` for a recipe this plugin owns (for instance one with a `sweep:`
    section). `runs` is the list of expanded (variant, seed, Recipe) runs; `out_dir` the study
    directory; `options` a dict of CLI flags (resume, quick, ...). Return a result (anything not
    None) to claim the run; return None to let the next plugin, then the default pretraining
    runner, handle it."""


@hookspec(firstresult=True)
def lmzoo_launch(recipe, runs, study_dir, options):
    """Train the runs of a study outside this process (`lmzoo run --jobs N`, `--launcher NAME`).
    `runs` are the (variant, seed, Recipe) runs to train, `study_dir` the study directory, `options`
    the CLI flags (`jobs`, `launcher`, `devices_per_run`: None when not given; `path`, `overrides`,
    `quick`, `resume`, `overwrite`; `run_dirs`: the directory of each run, the one a sequential
    `lmzoo run` writes). Return a list of {"run": label, "run_dir": str,
    "error": str | None} once the runs are done (or submitted): the kernel then collects the
    summaries and writes the report. Return None to let the kernel train them one after another
    in this process (the launch plugin does so for `--jobs 1` with the local launcher)."""


@hookspec(firstresult=True)
def lmzoo_filter_documents(documents, filters):
    """Apply a recipe's `data.filters` (built `data_filter` components, in order) to an iterator
    of training documents; return an iterator of the kept (possibly modified) texts. The
    filters plugin implements it; the kernel only calls it."""


@hookspec
def lmzoo_run_finished(recipe, run_dir, summary, loggers):
    """Called when one run's training and final evaluation are done and summary.json is written,
    with the run's Lightning loggers (the recipe's `trainer.loggers`): trackers put the summary
    and the run's artifacts where their users look for them."""


@hookspec
def lmzoo_study_finished(recipe, study_dir, summaries, missing):
    """Called when a study's runs are done (and by `lmzoo report`), with the summaries of the runs
    that finished (each with its `run_dir`) and the labels of planned runs that did not: the
    report plugin writes report.md, statistics.json and the plots; a plugin may add its own."""


@hookspec
def lmzoo_after_run(recipe, run_dir, summary):
    """Called after one variant's pretraining finished, with its run directory and summary dict.
    Stages that follow pretraining (e.g. alignment from `align:`) hook in here."""


@hookspec
def lmzoo_export_mappings():
    """Return a list of export declarations for `lmzoo export --format hf` / `lmzoo import-hf`:
    `lmzoo.plugins.interop.mapping.Architecture` (a transformers architecture: its checkpoint
    names and config) and `ComponentMapping` (one component, by kind and name, in one
    architecture: its config entries and its tensors renamed both ways). A third-party
    component becomes exportable by returning a ComponentMapping for an existing architecture
    (or a new Architecture with mappings for every part). The built-in mappings come through
    this same hook (plugins/interop/architectures.py). Import the mapping module inside the
    hook so loading the plugin stays fast."""
