"""The alignment stage: a pretrained run in, an aligned run directory out.

`run_alignment(recipe, init_run)` builds (or loads) the preference pairs, trains the policy
against the frozen pretrained reference on the kernel's trainer (`module.py`), evaluates it
(`evaluation.py`) and writes <root>/align/<label>/ as a run directory like any other:
recipe.resolved.yaml (the init run's model and data, the alignment's `train:` and `align:`),
manifest.json, metrics.csv, checkpoints/{last,best}.ckpt, tokenizer/, model.safetensors,
samples.txt and summary.json - so `lmzoo eval` and `lmzoo generate` work on it, and
`--resume` continues an interrupted alignment from its last checkpoint.

A study whose variants differ only in `align:` pretrains once per seed and aligns every
variant from that run (`run_align_study`); `report.py` writes its report.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import torch

from lmzoo.recipe import AblationSpec, to_dict, to_yaml
from lmzoo.rundir import RunDir, RunError, device_name, git_info, load_run, now, remove_tree, versions

from .evaluation import evaluate_pairs, evaluate_samples, val_bpb
from .module import PreferenceModule, align_train_spec, frozen_copy, one_device, train_alignment
from .pairs import build_pair_set, settings_key
from .preferences import make_preference
from .section import AlignSpec

# What a --resume may change in a finished or interrupted alignment (more steps, other evaluation).
RESUMABLE = ("name", "description", "plugins", "quick", "align.steps", "align.eval", "align.log_every", "train.budget",
             "train.val_every", "train.log_every")


def build_loss(spec):
    """The alignment_loss component of a (resolved) `align.loss` spec or a {name, **params} dict."""
    from lmzoo.hooks import get_registry

    params = spec if hasattr(spec, "model_dump") else dict(spec)
    name = params.name if hasattr(params, "name") else params["name"]
    return get_registry().create("alignment_loss", name, params=params)


def resolve_init(spec: AlignSpec, run_dir: str | Path | None) -> Path:
    if spec.init_from == "pretrain":
        if run_dir is None:
            raise ValueError("align.init_from: 'pretrain' needs the pretraining run directory (pass --run RUN_DIR, "
                             "or set align.init_from to a run directory)")
        return Path(run_dir)
    p = Path(spec.init_from).expanduser()
    if not p.is_dir():
        raise ValueError(f"align.init_from: {spec.init_from!r} is neither 'pretrain' nor an existing run directory "
                         f"(looked at {p.resolve()})")
    return p


def _device_for(recipe) -> torch.device:
    acc = getattr(getattr(recipe, "trainer", None), "accelerator", "auto")
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def stage_recipe(recipe, init_recipe, spec: AlignSpec):
    """The resolved recipe of an alignment run: the init run's model and data (what the policy
    is and what val bpb and prompts are measured on), the alignment's own `train:` section and
    one device, and the `align:` section."""
    return init_recipe.model_copy(update={
        "name": recipe.name, "description": recipe.description, "variant": recipe.variant, "seed": recipe.seed,
        "train": align_train_spec(spec), "trainer": one_device(recipe.trainer), "align": spec,
        "ablation": AblationSpec(), "quick": {}})


def check_resume(run: RunDir, srec) -> list[str]:
    """Keys that differ from the run's recorded recipe; RunError if any may not change on resume."""
    import yaml

    from lmzoo.runner import recipe_changes

    rfile = run / "recipe.resolved.yaml"
    if not rfile.is_file():
        return []
    ok, refused = recipe_changes(yaml.safe_load(rfile.read_text()) or {}, to_dict(srec))
    changed = ok + refused
    refused = [k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE)]
    if refused:
        raise RunError(f"--resume: the alignment in {run.path} was made with other settings "
                       f"({', '.join(refused[:8])}); "
                       f"a resume may change only {', '.join(RESUMABLE)}. Use --overwrite to start again, or set "
                       "align.label to write a new alignment beside it")
    return changed


def run_alignment(recipe, run_dir: str | Path | None = None, out_root: str | Path | None = None,
                  log: Callable[[str], None] = print, resume: bool = False, overwrite: bool = False,
                  progress: bool = False) -> dict:
    """Run the recipe's `align:` stage from a pretrained run and return its summary.

    Writes <out_root or init_run>/align/<label>/ (a run directory). The before-alignment
    numbers (the reference) are cached once per init run in align/baseline-<key>.json and the
    synthetic pairs in align/pairs-<key>/, so every variant shares them. Existing results are
    kept with `resume` (an interrupted one continues from checkpoints/last.ckpt), replaced with
    `overwrite`, and otherwise an error."""
    spec: AlignSpec = recipe.align
    if spec is None:
        raise ValueError("the recipe has no align: section")
    init_dir = resolve_init(spec, run_dir)
    label = spec.label or spec.loss.name
    align_root = (Path(out_root) if out_root is not None else init_dir) / "align"
    run = RunDir(align_root / label)
    with run.lock():
        return _align_locked(recipe, spec, init_dir, run, align_root, log, resume, overwrite, progress)


def _align_locked(recipe, spec: AlignSpec, init_dir: Path, run: RunDir, align_root: Path, log, resume, overwrite,
                  progress) -> dict:
    t0 = time.time()
    init_recipe, model, tokenizer = load_run(init_dir)  # its data section: the pretraining data
    srec = stage_recipe(recipe, init_recipe, spec)
    last, ckpt_path = run.checkpoint("last"), None
    if overwrite and run.exists:
        remove_tree(run.path, align_root)
        run.path.mkdir(parents=True)
    elif run.summary is not None:
        if not resume:
            raise RunError(f"alignment results already exist in {run.path}; pass --resume to keep them or "
                           "--overwrite to replace them")
        if not check_resume(run, srec):
            return run.summary
    elif last.exists() and not resume:
        raise RunError(f"an interrupted alignment is in {run.path}; pass --resume to continue it or --overwrite to "
                       "restart it")
    elif resume:
        check_resume(run, srec)
    if resume and last.exists():
        run.load_checkpoint("last")  # a clear error now (checksum, corruption) rather than deep inside Lightning
        ckpt_path = str(last)
    run.create()

    device = _device_for(recipe)
    model.to(device).eval()
    seed = recipe.seed if spec.seed is None else spec.seed
    torch.manual_seed(seed)
    pairs = build_pair_set(spec, init_recipe, model, tokenizer, align_root, seed, log,
                           cache_key=str(init_dir.resolve()))
    max_len = spec.max_len or int(getattr(model, "max_seq_len", 0) or init_recipe.data.context)
    loss_fn = build_loss(spec.loss)
    ev = spec.eval
    n_new = ev.max_new_tokens or spec.pairs.max_new_tokens
    eval_prompts = pairs.heldout_prompt_ids[: ev.prompts] if ev.prompts else pairs.heldout_prompt_ids
    pref = make_preference(spec.pairs.preference)
    sample_seed = seed + 12345  # fresh samples: a seed disjoint from the pair-building samples
    data = None
    if ev.val_bpb:
        from lmzoo.data import prepare_data

        data = prepare_data(init_recipe, tokenizer=tokenizer)
    before = _baseline(align_root, init_dir, spec, seed, model, tokenizer, eval_prompts, pref, n_new, sample_seed,
                       init_recipe, data)

    reference = frozen_copy(model)
    module = PreferenceModule(model.requires_grad_(True), reference, loss_fn, tokenizer, pairs.train, pairs.heldout,
                              srec.train, max_len, seed, evaluate=bool(ev.every))
    module.reference_logps()
    at_init = evaluate_pairs(model, reference, tokenizer, pairs.heldout, loss_fn, max_len, module.ref_heldout)

    run.write_text("recipe.resolved.yaml", to_yaml(srec))
    if not (run / "tokenizer").exists():
        tokenizer.save(run / "tokenizer")
    manifest = run.manifest
    resumes = list(manifest.get("resumes") or []) + ([{"at": now(), "from": ckpt_path}] if ckpt_path else [])
    run.write_json("manifest.json", {
        **manifest, "stage": "align", "variant": recipe.variant, "seed": recipe.seed, "align_seed": seed,
        "started": manifest.get("started") or now(), "init_from": str(init_dir), "git": git_info(),
        "versions": versions(), "device": device_name(srec.trainer.accelerator), "pairs": _pairs_info(pairs.info),
        "steps": spec.steps, "resumes": resumes})

    log(f"align[{run.path.name}]: {spec.steps} steps of {spec.loss.name} on {len(pairs.train)} pairs -> {run.path}")
    trainer, named = train_alignment(module, srec, run, ckpt_path=ckpt_path, progress=progress)
    policy = module.model
    after = evaluate_pairs(policy, reference, tokenizer, pairs.heldout, loss_fn, max_len, module.ref_heldout)
    s_after, texts = evaluate_samples(policy, reference, tokenizer, eval_prompts, pref, ev.samples_per_prompt, n_new,
                                      spec.pairs.temperature, spec.pairs.top_k, sample_seed)
    summary = {
        "stage": "align", "label": run.path.name, "variant": recipe.variant, "seed": recipe.seed, "align_seed": seed,
        "loss": spec.loss.model_dump(), "optimizer": spec.optimizer.model_dump(),
        "lr_schedule": spec.lr_schedule.model_dump(), "init_from": str(init_dir), "steps": trainer.global_step,
        "lr": spec.optimizer.lr, "batch_size": spec.batch_size, "preference": repr(pref),
        "pairs": _pairs_info(pairs.info),
        "heldout_accuracy_before": at_init["heldout_accuracy"],
        "heldout_logratio_accuracy_before": at_init["heldout_logratio_accuracy"],
        **after,
        "satisfaction_before": before["satisfaction"], "satisfaction_after": s_after["satisfaction"],
        "kl_seq": s_after["kl_seq"], "kl_token": s_after["kl_token"],
        "sample_tokens_before": before["sample_tokens"], "sample_tokens_after": s_after["sample_tokens"],
        "val_bpb_before": before.get("val_bpb"),
        "val_bpb_after": val_bpb(policy, init_recipe, data, tokenizer) if data is not None else None,
        "tokens_per_s": named["metrics"].tokens_per_s, "wall_s": round(time.time() - t0, 1),
        "train_wall_s": round(named["clock"].elapsed(), 1), "finished": now(),
    }
    from safetensors.torch import save_model

    save_model(policy, str(run / "model.safetensors.tmp"))
    (run / "model.safetensors.tmp").replace(run / "model.safetensors")
    run.write_text("samples.txt", "\n---\n".join(texts[:64]))
    run.write_json("summary.json", summary)
    run.update_manifest(finished=summary["finished"])
    log(f"align[{run.path.name}]: held-out acc {summary['heldout_accuracy']:.3f}, satisfaction "
        f"{summary['satisfaction_before']:.3f} -> {summary['satisfaction_after']:.3f}, KL {summary['kl_seq']:.3f} "
        f"nats/seq, wrote {run.path}")
    return summary


def _pairs_info(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "heldout_prompt_ids"}


def _baseline(align_root, init_dir, spec, seed, model, tokenizer, eval_prompts, pref, n_new, sample_seed, init_recipe,
              data) -> dict:
    """The reference's (= the pretrained model's) fresh-sample satisfaction and val bpb: the
    'before' column, computed once per init run and settings and shared by every variant."""
    key = settings_key({"init": str(init_dir.resolve()), "ps": spec.pairs.model_dump(),
                        "eval": spec.eval.model_dump(exclude={"every"}), "seed": seed})
    cache = RunDir(align_root)
    before = cache.read_json(f"baseline-{key}.json")
    if before is None:
        s, _ = evaluate_samples(model, None, tokenizer, eval_prompts, pref, spec.eval.samples_per_prompt, n_new,
                                spec.pairs.temperature, spec.pairs.top_k, sample_seed)
        before = {"satisfaction": s["satisfaction"], "sample_tokens": s["sample_tokens"]}
        if data is not None:
            before["val_bpb"] = val_bpb(model, init_recipe, data, tokenizer)
        cache.write_json(f"baseline-{key}.json", before)
    return before


# ============================================================================ studies: one pretraining, many alignments


def align_only_variants(runs) -> bool:
    """True when a study's runs share everything but their `align:` section (an ablation over
    `align.*`): one pretraining per seed then serves every variant."""
    if not runs or any(getattr(r.recipe, "align", None) is None for r in runs):
        return False
    if len({r.variant for r in runs}) < 2:
        return False

    def rest(r):
        return json.dumps(r.recipe.model_dump(exclude={"align", "variant"}), sort_keys=True, default=str)

    by_seed: dict[int, set] = {}
    for r in runs:
        by_seed.setdefault(r.seed, set()).add(rest(r))
    return all(len(v) == 1 for v in by_seed.values())


def safe_label(name: str) -> str:
    """A variant name as a directory name (grid labels hold ',' and '=')."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name.replace(",", "__").replace("=", "-"))


def run_align_study(runs, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
                    log: Callable[[str], None] = print, only: str | None = None) -> list[dict]:
    """Pretrain once per seed (unless align.init_from names a run directory), then run every
    variant's alignment from it into <pretrain>/align/<variant>/, and write the study report.
    With `resume`, finished stages are kept; `only` (VARIANT or VARIANT/SEED) picks runs."""
    from lmzoo.plugins.commands.study import select
    from lmzoo.runner import train_run

    from .report import collect_summaries, write_align_report

    out_dir = Path(out_dir)
    if len({r.recipe.align.init_from for r in runs}) > 1:
        raise RunError("ablation variants set different align.init_from values; a study aligns every variant from "
                       "the same starting model (run them as separate studies)")
    seeds = sorted({r.seed for r in runs})
    todo = select(runs, only)
    for seed in seeds:
        group = [r for r in todo if r.seed == seed]
        if not group:
            continue
        spec0 = group[0].recipe.align
        if spec0.init_from == "pretrain":
            pre = out_dir / "pretrain" if len(seeds) == 1 else out_dir / "pretrain" / f"seed{seed}"
            base = group[0].recipe.model_copy(update={"variant": "pretrain"})
            log(f"pretraining once for {len(group)} alignment variants -> {pre}")
            train_run(base, pre, resume=resume, overwrite=overwrite, inside=out_dir)
            root = pre
        else:
            pre = resolve_init(spec0, None)
            root = out_dir if len(seeds) == 1 else out_dir / f"seed{seed}"
        align_variants(group, pre, root, resume=resume, overwrite=overwrite, log=log)
    summaries = collect_summaries(out_dir, [r.variant for r in runs])
    write_align_report(out_dir, summaries)
    return summaries


def align_variants(runs, init_dir: Path, root: Path, resume: bool = False, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Align each run (variant) from `init_dir` into <root>/align/<label>/; label: align.label,
    else the variant name, else the loss name."""
    out = []
    for i, r in enumerate(runs):
        spec = r.recipe.align
        label = spec.label or (safe_label(r.variant) if r.variant != "base" else spec.loss.name)
        log(f"[{i + 1}/{len(runs)}] align {r.variant} seed={r.seed} from {init_dir}")
        rec = r.recipe.model_copy(update={"align": spec.model_copy(update={"label": label})})
        s = run_alignment(rec, init_dir, out_root=root, log=log, resume=resume, overwrite=overwrite)
        out.append({**s, "run_dir": str(Path(root) / "align" / label)})
    return out
