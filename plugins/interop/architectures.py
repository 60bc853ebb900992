"""The built-in export mappings: lmzoo's components in six transformers architectures.

| lmzoo model                                        | transformers |
|----------------------------------------------------|--------------|
| rope + rmsnorm + swiglu                            | Llama        |
| rope + rmsnorm + gelu / relu2                      | Arcee        |
| rope + layernorm + swiglu                          | StableLM     |
| rope + layernorm + gelu / relu2                    | Starcoder2   |
| learned + layernorm + gelu / relu2 (no GQA)        | GPT-2        |
| alibi (max_bias 8) + layernorm + gelu, d_ff = 4 d (no GQA) | MPT  |

All pre-norm, tied or untied. lmzoo's layers have no biases: where an architecture has them
(GPT-2's linears, LayerNorm's shift) they are written as zeros, and an import refuses a
checkpoint whose biases are not zero. RoPE: lmzoo rotates interleaved pairs (x[2k], x[2k+1]);
these architectures rotate halves (x[k], x[k + d/2]), so q/k rows are permuted per head (q.k
is unchanged because both sides move the same way). ALiBi: MPT's slopes are lmzoo's for any
head count (the same interleaving for non-powers of two) but only for max_bias 8, which its
forward pass always uses; Bloom and Falcon scale or normalise differently. Post-norm,
sinusoidal and NoPE models have no transformers architecture.

Registered through `lmzoo_export_mappings` like any plugin's (see plugins/interop/__init__.py).
"""
from __future__ import annotations

import torch

from .mapping import Architecture, ComponentMapping, ModelFacts, Unsupported

# ----------------------------------------------------------------------------- helpers


def _pair_order(head_dim: int) -> torch.Tensor:
    """Row order taking interleaved pairs (0,1),(2,3).. to halves: [0, 2, 4, .., 1, 3, 5, ..]."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd, -1)[:, _pair_order(hd)].reshape(w.shape).contiguous()


def halves_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd, -1)[:, torch.argsort(_pair_order(hd))].reshape(w.shape).contiguous()


def _zeros_like_bias(w: torch.Tensor, n: int | None = None) -> torch.Tensor:
    return torch.zeros(n if n is not None else w.shape[0], dtype=w.dtype)


def _no_bias(tensors: dict, name: str) -> None:
    b = tensors.get(name)
    if b is not None and bool(b.abs().max() > 0):
        raise Unsupported(f"{name} is not zero (max |b| = {b.abs().max().item():.3g}); lmzoo's layers have no biases")


def _eps(key: str):
    def config(params, facts):
        return {key: params.get("eps", 1e-5)}
    return config


def _rope_config(extra: dict | None = None):
    def config(params, facts):
        return {"rope_parameters": {"rope_type": "default", "rope_theta": float(params.get("theta", 10000.0)),
                                    **(extra or {})}}
    return config


def _rope_prepare(params, facts: ModelFacts) -> None:
    facts.qk, facts.qk_back = interleaved_to_halves, halves_to_interleaved


def _rope_from_config(config: dict):
    rp = config.get("rope_parameters") or {}
    if config.get("rope_scaling") or rp.get("rope_type", "default") != "default":
        return None
    if rp.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        return None
    theta = rp.get("rope_theta", config.get("rope_theta", 10000.0))
    return {"theta": float(theta)}


# ----------------------------------------------------------------------------- the Llama family
# Llama, Arcee, StableLM and Starcoder2 share block names; they differ in norm and MLP.


def _attn_config(params, facts):
    """The causal attention's settings these architectures cannot express."""
    if params.get("qk_norm"):
        raise Unsupported("qk_norm=true (no normalisation of queries and keys in this architecture)")
    return {}

LLAMA_SLOTS = {"attention": "model.layers.{i}.self_attn.", "ffn": "model.layers.{i}.mlp.",
               "ln1": "model.layers.{i}.input_layernorm.", "ln2": "model.layers.{i}.post_attention_layernorm.",
               "ln_final": "model.norm.", "embed": "model.embed_tokens.weight", "lm_head": "lm_head.weight"}


def _sizes(facts: ModelFacts) -> dict:
    return {"hidden_size": facts.d_model, "intermediate_size": facts.d_ff, "num_hidden_layers": facts.n_layers,
            "num_attention_heads": facts.n_heads, "num_key_value_heads": facts.n_kv_heads,
            "max_position_embeddings": facts.max_seq_len, "tie_word_embeddings": facts.tied}


def _sizes_back(config: dict) -> dict:
    d, h = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim") not in (None, d // h):
        raise Unsupported(f"head_dim={config['head_dim']} differs from hidden_size/num_attention_heads={d // h}")
    return {"d_model": d, "n_layers": config["num_hidden_layers"], "n_heads": h,
            "n_kv_heads": config.get("num_key_value_heads") or h, "d_ff": config["intermediate_size"],
            "max_seq_len": config.get("max_position_embeddings", 4096),
            "tie_embeddings": bool(config.get("tie_word_embeddings", False)), "vocab_size": config["vocab_size"]}


def _llama_config(facts):
    return {**_sizes(facts), "head_dim": facts.head_dim, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0}


def _llama_spec(config):
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise Unsupported(f"{key}=true (lmzoo's layers have no biases)")
    if config.get("pretraining_tp", 1) not in (1, None):
        raise Unsupported(f"pretraining_tp={config['pretraining_tp']}")
    return _sizes_back(config)


def _stablelm_config(facts):
    return {**_sizes(facts), "use_qkv_bias": False, "qk_layernorm": False, "use_parallel_residual": False,
            "hidden_dropout": 0.0, "attention_dropout": 0.0}


def _stablelm_spec(config):
    for key in ("use_qkv_bias", "qk_layernorm", "use_parallel_residual"):
        if config.get(key):
            raise Unsupported(f"{key}=true")
    return _sizes_back(config)


def _starcoder2_config(facts):
    return {**_sizes(facts), "use_bias": False, "sliding_window": None, "residual_dropout": 0.0,
            "embedding_dropout": 0.0, "attention_dropout": 0.0}


def _starcoder2_spec(config):
    if config.get("use_bias", True):
        raise Unsupported("use_bias=true (lmzoo's layers have no biases)")
    if config.get("sliding_window"):
        raise Unsupported(f"sliding_window={config['sliding_window']}")
    return _sizes_back(config)


def _attn_export(t, facts: ModelFacts):
    return {"q_proj.weight": facts.qk(t["q_proj.weight"], facts.n_heads),
            "k_proj.weight": facts.qk(t["k_proj.weight"], facts.n_kv_heads),
            "v_proj.weight": t["v_proj.weight"], "o_proj.weight": t["output_proj.weight"]}


def _attn_import(t, facts: ModelFacts):
    for b in ("q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias"):
        _no_bias(t, b)
    return {"q_proj.weight": facts.qk_back(t["q_proj.weight"], facts.n_heads),
            "k_proj.weight": facts.qk_back(t["k_proj.weight"], facts.n_kv_heads),
            "v_proj.weight": t["v_proj.weight"], "output_proj.weight": t["o_proj.weight"]}


def _swiglu_export(t, facts):
    return {"gate_proj.weight": t["w1.weight"], "up_proj.weight": t["w3.weight"], "down_proj.weight": t["w2.weight"]}


def _swiglu_import(t, facts):
    return {"w1.weight": t["gate_proj.weight"], "w3.weight": t["up_proj.weight"], "w2.weight": t["down_proj.weight"]}


def _act_config(key: str, act: str | None = None):
    """hidden_act of a non-gated MLP: gelu (exact or tanh) or relu2."""
    def config(params, facts):
        if act is not None:
            return {key: act}
        return {key: "gelu" if params.get("approximate", "none") == "none" else "gelu_pytorch_tanh"}
    return config


def _act_from_config(key: str, name: str):
    def from_config(config):
        act = config.get(key)
        if name == "relu2":
            return {} if act == "relu2" else None
        if name == "swiglu":
            return {} if act == "silu" else None
        return {"gelu": {"approximate": "none"}, "gelu_pytorch_tanh": {"approximate": "tanh"}}.get(act)
    return from_config


def _mlp_export(up: str, down: str):
    def export(t, facts):
        return {f"{up}.weight": t["w1.weight"], f"{down}.weight": t["w2.weight"]}
    return export


def _mlp_import(up: str, down: str):
    def import_(t, facts):
        _no_bias(t, f"{up}.bias")
        _no_bias(t, f"{down}.bias")
        return {"w1.weight": t[f"{up}.weight"], "w2.weight": t[f"{down}.weight"]}
    return import_


def _weight(t, facts):
    return {"weight": t["weight"]}


def _ln_export(t, facts):
    return {"weight": t["weight"], "bias": _zeros_like_bias(t["weight"])}


def _ln_import(t, facts):
    _no_bias(t, "bias")
    return {"weight": t["weight"]}


def _norm_from_config(key: str):
    def from_config(config):
        return {"eps": float(config[key])} if key in config else None
    return from_config


def llama_family() -> list:
    out = [
        Architecture("llama", "llama", "LlamaForCausalLM", LLAMA_SLOTS, _llama_config, spec=_llama_spec,
                     doc="rope + rmsnorm + swiglu"),
        Architecture("arcee", "arcee", "ArceeForCausalLM", LLAMA_SLOTS, _llama_config, spec=_llama_spec,
                     doc="rope + rmsnorm + a non-gated MLP (relu2, gelu)"),
        Architecture("stablelm", "stablelm", "StableLmForCausalLM", LLAMA_SLOTS, _stablelm_config,
                     spec=_stablelm_spec, doc="rope + layernorm + swiglu"),
        Architecture("starcoder2", "starcoder2", "Starcoder2ForCausalLM", LLAMA_SLOTS, _starcoder2_config,
                     spec=_starcoder2_spec, doc="rope + layernorm + a non-gated MLP (gelu, relu2)"),
    ]
    for arch in ("llama", "arcee", "stablelm", "starcoder2"):
        rope_extra = {"partial_rotary_factor": 1.0} if arch == "stablelm" else None
        out.append(ComponentMapping("position", "rope", arch, config=_rope_config(rope_extra), prepare=_rope_prepare,
                                    from_config=_rope_from_config))
        out.append(ComponentMapping("attention", "causal", arch, config=_attn_config, export=_attn_export,
                                    import_=_attn_import, from_config=lambda c: {}))
    for arch in ("llama", "arcee"):
        out.append(ComponentMapping("norm", "rmsnorm", arch, config=_eps("rms_norm_eps"), export=_weight,
                                    import_=_weight, from_config=_norm_from_config("rms_norm_eps")))
    out.append(ComponentMapping("norm", "layernorm", "stablelm", config=_eps("layer_norm_eps"), export=_ln_export,
                                import_=_ln_import, from_config=_norm_from_config("layer_norm_eps")))
    out.append(ComponentMapping("norm", "layernorm", "starcoder2", config=_eps("norm_epsilon"), export=_ln_export,
                                import_=_ln_import, from_config=_norm_from_config("norm_epsilon")))
    for arch in ("llama", "stablelm"):
        out.append(ComponentMapping("ffn", "swiglu", arch, config=_act_config("hidden_act", "silu"),
                                    export=_swiglu_export, import_=_swiglu_import,
                                    from_config=_act_from_config("hidden_act", "swiglu")))
    for arch, (up, down) in {"arcee": ("up_proj", "down_proj"), "starcoder2": ("c_fc", "c_proj")}.items():
        out.append(ComponentMapping("ffn", "gelu", arch, config=_act_config("hidden_act"), export=_mlp_export(up, down),
                                    import_=_mlp_import(up, down), from_config=_act_from_config("hidden_act", "gelu")))
        out.append(ComponentMapping("ffn", "relu2", arch, config=_act_config("hidden_act", "relu2"),
                                    export=_mlp_export(up, down), import_=_mlp_import(up, down),
                                    from_config=_act_from_config("hidden_act", "relu2")))
    return out


# ----------------------------------------------------------------------------- GPT-2
# Conv1D layers store (in, out): weights are transposed; every linear has a bias (zeros here).

def _gpt2_config(facts):
    return {"n_embd": facts.d_model, "n_layer": facts.n_layers, "n_head": facts.n_heads, "n_inner": facts.d_ff,
            "n_positions": facts.max_seq_len, "tie_word_embeddings": facts.tied, "scale_attn_weights": True,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def _gpt2_spec(config):
    if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx"):
        raise Unsupported("attention scaling other than 1/sqrt(head_dim)")
    d = config["n_embd"]
    return {"d_model": d, "n_layers": config["n_layer"], "n_heads": config["n_head"], "n_kv_heads": None,
            "d_ff": config.get("n_inner") or 4 * d, "max_seq_len": config["n_positions"],
            "tie_embeddings": bool(config.get("tie_word_embeddings", True)), "vocab_size": config["vocab_size"]}


def _gpt2_attn_export(t, facts):
    w = torch.cat([t["q_proj.weight"], t["k_proj.weight"], t["v_proj.weight"]], dim=0)  # (3d, d)
    o = t["output_proj.weight"]
    return {"c_attn.weight": w.t().contiguous(), "c_attn.bias": _zeros_like_bias(w),
            "c_proj.weight": o.t().contiguous(), "c_proj.bias": _zeros_like_bias(o)}


def _gpt2_attn_import(t, facts):
    _no_bias(t, "c_attn.bias")
    _no_bias(t, "c_proj.bias")
    q, k, v = t["c_attn.weight"].t().chunk(3, dim=0)
    return {"q_proj.weight": q.contiguous(), "k_proj.weight": k.contiguous(), "v_proj.weight": v.contiguous(),
            "output_proj.weight": t["c_proj.weight"].t().contiguous()}


def _gpt2_mlp_export(t, facts):
    w1, w2 = t["w1.weight"], t["w2.weight"]
    return {"c_fc.weight": w1.t().contiguous(), "c_fc.bias": _zeros_like_bias(w1),
            "c_proj.weight": w2.t().contiguous(), "c_proj.bias": _zeros_like_bias(w2)}


def _gpt2_mlp_import(t, facts):
    _no_bias(t, "c_fc.bias")
    _no_bias(t, "c_proj.bias")
    return {"w1.weight": t["c_fc.weight"].t().contiguous(), "w2.weight": t["c_proj.weight"].t().contiguous()}


def gpt2() -> list:
    slots = {"attention": "transformer.h.{i}.attn.", "ffn": "transformer.h.{i}.mlp.", "ln1": "transformer.h.{i}.ln_1.",
             "ln2": "transformer.h.{i}.ln_2.", "ln_final": "transformer.ln_f.", "embed": "transformer.wte.weight",
             "lm_head": "lm_head.weight", "position": "transformer.wpe."}
    return [
        Architecture("gpt2", "gpt2", "GPT2LMHeadModel", slots, _gpt2_config, grouped_kv=False, spec=_gpt2_spec,
                     doc="learned positions + layernorm + a non-gated MLP (gelu, relu2)"),
        ComponentMapping("position", "learned", "gpt2", export=_weight, import_=_weight, from_config=lambda c: {}),
        ComponentMapping("attention", "causal", "gpt2", config=_attn_config, export=_gpt2_attn_export,
                         import_=_gpt2_attn_import, from_config=lambda c: {}),
        ComponentMapping("norm", "layernorm", "gpt2", config=_eps("layer_norm_epsilon"), export=_ln_export,
                         import_=_ln_import, from_config=_norm_from_config("layer_norm_epsilon")),
        ComponentMapping("ffn", "gelu", "gpt2", config=_act_config("activation_function"), export=_gpt2_mlp_export,
                         import_=_gpt2_mlp_import, from_config=_act_from_config("activation_function", "gelu")),
        ComponentMapping("ffn", "relu2", "gpt2", config=_act_config("activation_function", "relu2"),
                         export=_gpt2_mlp_export, import_=_gpt2_mlp_import,
                         from_config=_act_from_config("activation_function", "relu2")),
    ]


# ----------------------------------------------------------------------------- MPT (ALiBi)

def _mpt_config(facts):
    return {"d_model": facts.d_model, "n_heads": facts.n_heads, "n_layers": facts.n_layers, "expansion_ratio": 4,
            "max_seq_len": facts.max_seq_len, "tie_word_embeddings": facts.tied, "no_bias": True,
            "resid_pdrop": 0.0, "emb_pdrop": 0.0}


def _mpt_spec(config):
    attn = config.get("attn_config") or {}
    if not config.get("no_bias", True):
        raise Unsupported("no_bias=false (lmzoo's layers have no biases)")
    for key in ("clip_qkv", "softmax_scale", "qk_ln", "prefix_lm"):
        if attn.get(key):
            raise Unsupported(f"attn_config.{key}={attn[key]}")
    d = config["d_model"]
    return {"d_model": d, "n_layers": config["n_layers"], "n_heads": config["n_heads"], "n_kv_heads": None,
            "d_ff": 4 * d, "max_seq_len": config["max_seq_len"],
            "tie_embeddings": bool(config.get("tie_word_embeddings", True)), "vocab_size": config["vocab_size"]}


def _alibi_config(params, facts):
    if params.get("max_bias", 8.0) != 8.0:
        raise Unsupported(f"max_bias={params['max_bias']:g} (MPT's forward pass always uses 8)")
    return {"attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_pdrop": 0}}


def _mpt_gelu_config(params, facts):
    if params.get("approximate", "none") != "none":
        raise Unsupported("approximate='tanh' (MPT's GELU is exact)")
    if facts.d_ff != 4 * facts.d_model:
        raise Unsupported(f"d_ff={facts.d_ff} (MPT's MLP is 4 * d_model = {4 * facts.d_model})")
    return {}


def _mpt_attn_export(t, facts):
    return {"Wqkv.weight": torch.cat([t["q_proj.weight"], t["k_proj.weight"], t["v_proj.weight"]], dim=0),
            "out_proj.weight": t["output_proj.weight"]}


def _mpt_attn_import(t, facts):
    q, k, v = t["Wqkv.weight"].chunk(3, dim=0)
    return {"q_proj.weight": q.contiguous(), "k_proj.weight": k.contiguous(), "v_proj.weight": v.contiguous(),
            "output_proj.weight": t["out_proj.weight"]}


def mpt() -> list:
    slots = {"attention": "transformer.blocks.{i}.attn.", "ffn": "transformer.blocks.{i}.ffn.",
             "ln1": "transformer.blocks.{i}.norm_1.", "ln2": "transformer.blocks.{i}.norm_2.",
             "ln_final": "transformer.norm_f.", "embed": "transformer.wte.weight", "lm_head": "lm_head.weight"}
    return [
        Architecture("mpt", "mpt", "MptForCausalLM", slots, _mpt_config, grouped_kv=False, spec=_mpt_spec,
                     doc="ALiBi (max_bias 8) + layernorm + gelu with d_ff = 4 d_model"),
        ComponentMapping("position", "alibi", "mpt", config=_alibi_config, from_config=lambda c: {"max_bias": 8.0}),
        ComponentMapping("attention", "causal", "mpt", config=_attn_config, export=_mpt_attn_export,
                         import_=_mpt_attn_import, from_config=lambda c: {}),
        ComponentMapping("norm", "layernorm", "mpt", config=_eps("layer_norm_epsilon"), export=_weight,
                         import_=_weight, from_config=_norm_from_config("layer_norm_epsilon")),
        ComponentMapping("ffn", "gelu", "mpt", config=_mpt_gelu_config, export=_mlp_export("up_proj", "down_proj"),
                         import_=_mlp_import("up_proj", "down_proj"), from_config=lambda c: {"approximate": "none"}),
    ]


def builtin_mappings() -> list:
    return [*llama_family(), *gpt2(), *mpt()]
