"""`lmzoo export --format hf` and `lmzoo import-hf`: run directories to transformers checkpoints and back.

The export writes config.json, model.safetensors and a fast tokenizer that transformers loads
with no custom code, plus `lmzoo/` (the run's resolved recipe and lmzoo tokenizer) so an
import gives back the same run. Weights go through the mappings of `mapping.py`; the export
then loads the result in transformers and checks its logits against lmzoo's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .mapping import KINDS, Architecture, ComponentMapping, ModelFacts, Unsupported, choose, collect

PROVENANCE = "lmzoo"  # subfolder of an export holding the run's recipe and lmzoo tokenizer


class InteropError(Exception):
    """A user-facing export/import problem (one line, printed without a traceback)."""


def _component(spec) -> tuple[str, dict]:
    """A resolved component spec as (name, params)."""
    d = spec.model_dump()
    return d.pop("name"), d


def facts_of(spec, model, eos_id=None) -> ModelFacts:
    """ModelFacts of a built lmzoo model and its ModelSpec."""
    return ModelFacts(
        vocab_size=model.vocab_size, d_model=model.d_model, n_layers=model.n_layers, n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads or spec.n_heads, d_ff=spec.d_ff, max_seq_len=spec.max_seq_len,
        tied=bool(spec.tie_embeddings), placement=spec.norm_placement,
        components={k: _component(getattr(spec, k)) for k in KINDS}, eos_id=eos_id)


def _put(out: dict, prefix: str, tensors: dict) -> None:
    for name, t in tensors.items():
        out[prefix + name] = t.detach().to(torch.float32).contiguous()


def to_hf_state(model, facts: ModelFacts, arch: Architecture, chosen: dict[str, ComponentMapping]) -> dict:
    """The lmzoo model's tensors under the architecture's names."""
    s = arch.slots
    out: dict = {s["embed"]: model.token_embeddings.weight.detach().float().contiguous()}
    if not facts.tied:
        out[s["lm_head"]] = model.lm_head.weight.detach().float().contiguous()
    pos = model.position.state_dict()
    pos_out = chosen["position"].export(pos, facts) if pos else {}
    if pos_out:
        if "position" not in s:
            raise Unsupported(f"{arch.name} has no place for the position encoding's tensors {sorted(pos_out)}")
        _put(out, s["position"], pos_out)
    for i, block in enumerate(model.layers):
        _put(out, s["attention"].format(i=i), chosen["attention"].export(block.attn.state_dict(), facts))
        _put(out, s["ffn"].format(i=i), chosen["ffn"].export(block.ffn.state_dict(), facts))
        _put(out, s["ln1"].format(i=i), chosen["norm"].export(block.ln1.state_dict(), facts))
        _put(out, s["ln2"].format(i=i), chosen["norm"].export(block.ln2.state_dict(), facts))
    _put(out, s["ln_final"], chosen["norm"].export(model.ln_final.state_dict(), facts))
    return out


def _take(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_hf_state(state: dict, facts: ModelFacts, arch: Architecture, chosen: dict[str, ComponentMapping]) -> dict:
    """A transformers checkpoint's tensors as an lmzoo state dict (the inverse of to_hf_state)."""
    s = arch.slots
    out = {"token_embeddings.weight": state[s["embed"]]}
    out["lm_head.weight"] = state[s["embed"]] if facts.tied else state[s["lm_head"]]
    if "position" in s:
        for k, v in chosen["position"].import_(_take(state, s["position"]), facts).items():
            out[f"position.{k}"] = v
    for i in range(facts.n_layers):
        for slot, kind, name in (("attention", "attention", "attn"), ("ffn", "ffn", "ffn"), ("ln1", "norm", "ln1"),
                                 ("ln2", "norm", "ln2")):
            for k, v in chosen[kind].import_(_take(state, s[slot].format(i=i)), facts).items():
                out[f"layers.{i}.{name}.{k}"] = v
    for k, v in chosen["norm"].import_(_take(state, s["ln_final"]), facts).items():
        out[f"ln_final.{k}"] = v
    return out


def _need_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise InteropError("the transformers export needs the `transformers` package: pip install 'lmzoo[hf]'") from None


def hf_config(facts: ModelFacts, arch: Architecture, entries: dict):
    """The transformers config object for the architecture (validated by transformers itself)."""
    from transformers import AutoConfig

    eos = facts.eos_id
    cfg = {**arch.config(facts), **entries, "vocab_size": facts.vocab_size, "bos_token_id": eos,
           "eos_token_id": eos, "pad_token_id": eos}
    config = AutoConfig.for_model(arch.model_type, **cfg)
    config.architectures = [arch.hf_class]
    return config


@torch.no_grad()
def max_logit_difference(model, out_dir, n_tokens: int = 24, seed: int = 0) -> float:
    """Largest |logit difference| between lmzoo's model and transformers' load of `out_dir`
    on random ids (float32)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    n = min(n_tokens, model.max_seq_len)
    ids = torch.randint(0, model.vocab_size, (2, n), generator=gen)
    ours = model.float().eval()(ids)
    theirs = hf(input_ids=ids).logits
    return float((ours - theirs).abs().max())


def _clear(out: Path, overwrite: bool, ours) -> None:
    """Make `out` usable: absent or empty; with `overwrite`, an earlier output of ours is deleted
    (anything else is refused, never deleted)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InteropError(f"--out {out} is not empty; pass --overwrite or choose another folder")
    if not ours(out):
        raise InteropError(f"--out {out} holds files lmzoo did not write there; refusing to delete them with "
                           "--overwrite, choose another folder")
    shutil.rmtree(out)


def export_hf(run_dir, out, checkpoint: str = "final", verify: bool = True, overwrite: bool = False,
              plugins=(), trust_plugins: bool = False) -> dict:
    """Write a run as a transformers checkpoint into `out`. Returns {architecture, max_abs_diff, files}.
    `plugins`/`trust_plugins`: plugin files the run needs, as for lmzoo.rundir.load_run."""
    from safetensors.torch import save_file

    from lmzoo.recipe import to_yaml
    from lmzoo.rundir import RunError, load_run

    _need_transformers()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InteropError(f"--out {out} is not empty; pass --overwrite or choose another folder")
    try:
        recipe, model, tok = load_run(run_dir, checkpoint, plugins=plugins, trust_plugins=trust_plugins)
    except RunError as exc:
        raise InteropError(str(exc)) from None
    model = model.float()
    facts = facts_of(recipe.model, model, getattr(tok, "eos_id", None))
    arch, chosen, entries = choose(facts, collect())
    for m in chosen.values():
        if m.prepare:
            m.prepare(facts.components[m.kind][1], facts)
    state = to_hf_state(model, facts, arch, chosen)
    config = hf_config(facts, arch, entries)

    _clear(out, overwrite, lambda d: (d / PROVENANCE / "recipe.resolved.yaml").is_file())
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    from .hf_tokenizer import save_hf_tokenizer

    save_hf_tokenizer(tok, out)
    prov = out / PROVENANCE
    prov.mkdir()
    (prov / "recipe.resolved.yaml").write_text(to_yaml(recipe))
    tok.save(prov / "tokenizer")
    (prov / "README.md").write_text(f"Exported by `lmzoo export` from {Path(run_dir).resolve()} ({checkpoint} "
                                    f"weights) as {arch.hf_class}. `lmzoo import-hf {out}` turns it back into a run.\n")
    diff = max_logit_difference(model, out) if verify else None
    if diff is not None and diff > 1e-4:
        raise InteropError(f"exported {arch.name} checkpoint disagrees with the lmzoo model: max |logit difference| "
                           f"{diff:.3g} > 1e-4; the {arch.name} export mappings are wrong for this model")
    return {"architecture": arch.name, "hf_class": arch.hf_class, "max_abs_diff": diff,
            "files": sorted(p.name for p in out.iterdir())}


# ----------------------------------------------------------------------------- import

def _load_tensors(src: Path) -> dict:
    from safetensors.torch import load_file

    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise InteropError(f"{src} has no model.safetensors (nor model.safetensors.index.json); "
                           "save the model with safe_serialization=True")
    state = {}
    for f in files:
        state.update(load_file(str(src / f)))
    return state


def _import_tokenizer(src: Path, run_dir: Path):
    """The run's tokenizer: lmzoo's own when the checkpoint came from `lmzoo export`, else the
    checkpoint's byte-level BPE or Unigram tokenizer.json as hf-bpe / hf-unigram."""
    from lmzoo.plugins.tokenizers import load_tokenizer

    prov = src / PROVENANCE / "tokenizer"
    if prov.is_dir():
        shutil.copytree(prov, run_dir / "tokenizer")
        tok = load_tokenizer(run_dir / "tokenizer")
        return tok, {"name": tok.name, **_tokenizer_params(run_dir / "tokenizer")}
    tj = src / "tokenizer.json"
    if not tj.is_file():
        raise InteropError(f"{src} has no tokenizer.json (a fast tokenizer); lmzoo needs one to read text")
    doc = json.loads(tj.read_text(encoding="utf-8"))
    kind = {"BPE": "hf-bpe", "Unigram": "hf-unigram"}.get(doc.get("model", {}).get("type"))
    pre = json.dumps(doc.get("pre_tokenizer"))
    if kind is None or "ByteLevel" not in pre:
        raise InteropError(f"{tj}: a {doc.get('model', {}).get('type')} tokenizer with pre-tokenizer "
                           f"{(doc.get('pre_tokenizer') or {}).get('type')}; lmzoo reads byte-level BPE or Unigram "
                           "tokenizers only")
    cfg_path = src / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    eos = tcfg.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    specials = [t["content"] for t in doc.get("added_tokens", []) if t.get("special")]
    if eos in specials:  # lmzoo's end-of-document token is the first special token
        specials.remove(eos)
        specials.insert(0, eos)
    from tokenizers import Tokenizer

    tok_dir = run_dir / "tokenizer"
    tok_dir.mkdir(parents=True)
    params = {"vocab_size": Tokenizer.from_str(tj.read_text(encoding="utf-8")).get_vocab_size(True),
              "special_tokens": specials}
    (tok_dir / "tokenizer.json").write_text(json.dumps({"kind": kind, "params": params}, indent=1))
    shutil.copy(tj, tok_dir / "hf_tokenizer.json")
    tok = load_tokenizer(tok_dir)
    return tok, {"name": kind, **params}


def _tokenizer_params(tok_dir: Path) -> dict:
    meta = json.loads((tok_dir / "tokenizer.json").read_text())
    if meta.get("kind") == "byte":
        return {"eos": meta.get("eos", True)}
    return dict(meta.get("params", {}))


def import_hf(src, run_dir, overwrite: bool = False, plugins=(), trust_plugins: bool = False) -> dict:
    """Turn a transformers checkpoint of an exportable architecture into an lmzoo run directory.
    `plugins`: plugin files whose mappings/components the checkpoint needs; `trust_plugins`:
    also import those an lmzoo export recorded in its recipe."""
    import yaml
    from safetensors.torch import save_model

    from lmzoo.hooks import load_plugin_files
    from lmzoo.model import build_model
    from lmzoo.recipe import RecipeError, to_yaml, validate
    from lmzoo.rundir import MARKER, RunDir, now, versions

    src, run_dir = Path(src), Path(run_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise InteropError(f"{src} has no config.json; give a transformers checkpoint directory")
    config = json.loads(cfg_path.read_text())
    prov = src / PROVENANCE / "recipe.resolved.yaml"
    prov_doc = yaml.safe_load(prov.read_text()) if prov.is_file() else None
    load_plugin_files(list(plugins))
    if trust_plugins and prov_doc and prov_doc.get("plugins"):
        load_plugin_files([str(p) for p in prov_doc["plugins"]])
    mappings = collect()
    model_type = config.get("model_type")
    arch = next((a for a in mappings.architectures.values() if a.model_type == model_type and a.spec), None)
    if arch is None:
        known = sorted(a.model_type for a in mappings.architectures.values() if a.spec)
        raise InteropError(f"{cfg_path}: model_type {model_type!r} has no lmzoo import; known: {', '.join(known)}")
    try:
        fields = arch.spec(config)
    except Unsupported as exc:
        raise InteropError(f"{cfg_path}: {arch.name} with {exc}") from None
    components = {}
    for kind in KINDS:
        found = [(m, p) for (k, _, a), m in mappings.components.items() if k == kind and a == arch.name
                 and m.from_config is not None and (p := m.from_config(config)) is not None]
        if not found:
            raise InteropError(f"{cfg_path}: no lmzoo {kind} matches this {arch.name} config "
                               f"(hidden_act={config.get('hidden_act', config.get('activation_function'))!r}, "
                               f"rope_parameters={config.get('rope_parameters')!r})")
        components[kind] = (found[0][0].name, found[0][1])
    _clear(run_dir, overwrite, lambda d: (d / MARKER).is_file())
    facts = ModelFacts(vocab_size=fields["vocab_size"], d_model=fields["d_model"], n_layers=fields["n_layers"],
                       n_heads=fields["n_heads"], n_kv_heads=fields["n_kv_heads"] or fields["n_heads"],
                       d_ff=fields["d_ff"], max_seq_len=fields["max_seq_len"], tied=fields["tie_embeddings"],
                       placement="pre", components=components)
    chosen = {k: mappings.components[(k, components[k][0], arch.name)] for k in KINDS}
    for m in chosen.values():
        if m.prepare:
            m.prepare(components[m.kind][1], facts)
    try:
        state = from_hf_state(_load_tensors(src), facts, arch, chosen)
    except Unsupported as exc:
        raise InteropError(f"{src}: {exc}") from None
    except KeyError as exc:
        raise InteropError(f"{src}/model.safetensors lacks tensor {exc.args[0]!r} that {arch.hf_class} has") from None

    run = RunDir(run_dir)
    run.create()
    tok, tok_spec = _import_tokenizer(src, run_dir)
    model_spec = {**fields, "norm_placement": "pre",
                  **{k: {"name": n, **p} for k, (n, p) in components.items()}}
    if prov_doc is not None:
        doc = prov_doc
        before = doc.get("model", {})
        # unset values that resolve to what the checkpoint has stay unset, so the recipe comes back as it was
        if before.get("vocab_size") is None and model_spec["vocab_size"] == tok.vocab_size:
            model_spec["vocab_size"] = None
        if before.get("n_kv_heads") is None and model_spec["n_kv_heads"] == model_spec["n_heads"]:
            model_spec["n_kv_heads"] = None
        doc["model"] = {**before, **model_spec}
    else:
        doc = {"name": src.name, "data": {"tokenizer": tok_spec, "context": min(fields["max_seq_len"], 1024)},
               "model": model_spec}
    try:
        recipe = validate(doc, str(prov) if prov_doc is not None else None)
    except RecipeError as exc:
        raise InteropError(f"the imported recipe does not validate: {'; '.join(exc.errors)}") from None
    model = build_model(recipe.model.model_copy(update={"vocab_size": fields["vocab_size"]}))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    run.write_text("recipe.resolved.yaml", to_yaml(recipe))
    save_model(model, str(run_dir / "model.safetensors"))
    t = now()
    run.write_json("manifest.json", {
        "imported_from": str(src.resolve()), "architecture": arch.hf_class, "versions": versions(),
        "tokenizer": {"name": tok_spec["name"], "hash": tok.fingerprint(), "vocab_size": tok.vocab_size},
        "started": t, "finished": t})
    return {"architecture": arch.name, "params": model.num_params(), "run_dir": str(run_dir)}
