"""`lmzoo export --format hf` and `lmzoo import-hf` against the real transformers library: every
exportable combination loads with no custom code, its logits match lmzoo's to 1e-4 (fp32),
greedy generation agrees, the tokenizer gives the same ids and export -> import is exact."""
import json
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")
from interop_runs import make_run  # noqa: E402
from lmzoo.plugins.interop.convert import export_hf, import_hf  # noqa: E402
from lmzoo.plugins.interop.mapping import Unsupported  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lmzoo.cli import build_app  # noqa: E402
from lmzoo.rundir import load_run  # noqa: E402
from lmzoo.sampling import sample  # noqa: E402

LN, GELU = {"name": "layernorm"}, {"name": "gelu"}
EXPORTABLE = {
    "llama": ({}, "LlamaForCausalLM"),
    "llama-gqa-tied": ({"n_kv_heads": 2, "tie_embeddings": True}, "LlamaForCausalLM"),
    "llama-mqa-theta": ({"n_kv_heads": 1, "position": {"name": "rope", "theta": 500.0}}, "LlamaForCausalLM"),
    "arcee-relu2": ({"ffn": {"name": "relu2"}}, "ArceeForCausalLM"),
    "arcee-gelu-tied": ({"ffn": GELU, "tie_embeddings": True, "n_kv_heads": 2}, "ArceeForCausalLM"),
    "stablelm": ({"norm": LN, "n_kv_heads": 2}, "StableLmForCausalLM"),
    "starcoder2-gelu-tanh": ({"norm": LN, "ffn": {"name": "gelu", "approximate": "tanh"}, "n_kv_heads": 1},
                             "Starcoder2ForCausalLM"),
    "starcoder2-relu2-tied": ({"norm": LN, "ffn": {"name": "relu2"}, "tie_embeddings": True}, "Starcoder2ForCausalLM"),
    "gpt2": ({"position": {"name": "learned"}, "norm": LN, "ffn": GELU}, "GPT2LMHeadModel"),
    "gpt2-relu2-tied": ({"position": {"name": "learned"}, "norm": {"name": "layernorm", "eps": 1e-6},
                         "ffn": {"name": "relu2"}, "tie_embeddings": True}, "GPT2LMHeadModel"),
    "mpt-alibi": ({"position": {"name": "alibi"}, "norm": LN, "ffn": GELU, "d_ff": 128}, "MptForCausalLM"),
    "mpt-alibi-6-heads": ({"position": {"name": "alibi"}, "norm": LN, "ffn": GELU, "d_model": 48, "n_heads": 6,
                           "d_ff": 192, "tie_embeddings": True}, "MptForCausalLM"),
}


def _hf(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True,
                                                                    dtype=torch.float32)
    return model.eval(), info


@pytest.mark.parametrize("combo", list(EXPORTABLE))
def test_export_matches_lmzoo_and_round_trips(combo, tmp_path):
    spec, hf_class = EXPORTABLE[combo]
    run = make_run(tmp_path / "run", **spec)
    info = export_hf(run, tmp_path / "hf")
    assert info["hf_class"] == hf_class
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [hf_class] and "auto_map" not in config  # no custom code

    _, ours, tok = load_run(run)
    hf, loading = _hf(tmp_path / "hf")
    assert type(hf).__name__ == hf_class
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    ids = torch.randint(0, ours.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(ids) - hf(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-4, diff

    # greedy generation: lmzoo's sampler and transformers' generate give the same ids
    prompt = tok.encode("To be, or not")
    ours_new = sample(ours, [prompt], 12, temperature=0, stop_id=tok.eos_id)[0]
    hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    if tok.eos_id in hf_out:  # transformers keeps the stop token, lmzoo's sampler drops it
        hf_out = hf_out[:hf_out.index(tok.eos_id)]
    assert ours_new == hf_out

    # the tokenizer loads with AutoTokenizer and gives lmzoo's ids
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "Héllo, wörld! 🙂 <|endoftext|>\n\tend"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token_id == tok.eos_id == config["eos_token_id"]

    # import gives back identical weights and the same recipe
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_file(str(run / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r0, _, _ = load_run(run)
    r1, _, _ = load_run(tmp_path / "back")
    assert r0.model == r1.model and r0.data.tokenizer == r1.data.tokenizer


def test_rope_rows_are_permuted_to_halves(tmp_path):
    """The q/k permutation is needed: written unpermuted, Llama's logits differ."""
    from lmzoo.plugins.interop import architectures

    run = make_run(tmp_path / "run")
    keep = architectures._rope_prepare
    try:
        architectures._rope_prepare = lambda params, facts: None  # no permutation
        import lmzoo.plugins.interop.convert as convert

        with pytest.raises(convert.InteropError, match="disagrees"):
            export_hf(run, tmp_path / "hf")
    finally:
        architectures._rope_prepare = keep


NOT_EXPORTABLE = {
    "alibi-rmsnorm": ({"position": {"name": "alibi"}}, "has no position 'alibi'"),
    "alibi-max-bias": ({"position": {"name": "alibi", "max_bias": 4.0}, "norm": LN, "ffn": GELU, "d_ff": 128},
                       "max_bias=4"),
    "mpt-d-ff": ({"position": {"name": "alibi"}, "norm": LN, "ffn": GELU, "d_ff": 64}, "d_ff=64"),
    "nope": ({"position": {"name": "none"}}, "has no position 'none'"),
    "sinusoidal": ({"position": {"name": "sinusoidal"}, "norm": LN, "ffn": GELU}, "has no position 'sinusoidal'"),
    "post-norm": ({"norm_placement": "post"}, "model.norm_placement='post'"),
    "learned-gqa": ({"position": {"name": "learned"}, "norm": LN, "ffn": GELU, "n_kv_heads": 2},
                    "model.n_kv_heads=2"),
    "learned-swiglu": ({"position": {"name": "learned"}}, "llama (has no position 'learned')"),
    "qk-norm": ({"attention": {"name": "causal", "qk_norm": True}}, "qk_norm=true"),
}


@pytest.mark.parametrize("combo", list(NOT_EXPORTABLE))
def test_inexpressible_combination_names_the_component(combo, tmp_path):
    spec, needle = NOT_EXPORTABLE[combo]
    run = make_run(tmp_path / "run", **spec)
    with pytest.raises(Unsupported) as err:
        export_hf(run, tmp_path / "hf")
    assert needle in str(err.value)
    assert not (tmp_path / "hf").exists()  # nothing half-written


def test_cli_export_import_generate(tmp_path):
    """The commands as a user runs them, on a run trained for 2 steps by the real runner."""
    runner = CliRunner()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent("""
        name: tiny-export
        data: {source: {name: synthetic, n_docs: 50}, tokenizer: {name: byte}, context: 16}
        model: {d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, tie_embeddings: true}
        train: {optimizer: {name: adamw, lr: 1.0e-2}, batch_size: 4, budget: {steps: 2}, val_every: 2,
                val_batches: 1, log_every: 1}
        eval: {full_val: false}
    """))
    app = build_app()
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    run = next(p.parent for p in (tmp_path / "runs").rglob("summary.json"))
    res = runner.invoke(app, ["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert res.exit_code == 0 and "LlamaForCausalLM" in res.output, res.output
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "hf")])
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "hf"), "--overwrite"])
    assert res.exit_code == 0, res.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "mine"), "--overwrite"])
    assert res.exit_code == 1 and "did not write" in res.output and (tmp_path / "mine" / "notes.txt").exists()
    res = runner.invoke(app, ["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["show-exports"])
    assert res.exit_code == 0 and "MptForCausalLM" in res.output and "alibi" in res.output
    a = runner.invoke(app, ["generate", str(run), "-p", "The", "-n", "8", "-t", "0"])
    b = runner.invoke(app, ["generate", str(tmp_path / "back"), "-p", "The", "-n", "8", "-t", "0"])
    assert a.exit_code == b.exit_code == 0 and a.output == b.output
    # an inexpressible model: one error line, no traceback
    nope = make_run(tmp_path / "nope", position={"name": "none"})
    res = runner.invoke(app, ["export", str(nope), "--out", str(tmp_path / "hf2")])
    assert res.exit_code == 1 and res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


def test_import_of_a_transformers_llama(tmp_path):
    """A Llama made by transformers itself (not by lmzoo) imports into a run whose logits match."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, rope_parameters={"rope_type": "default",
                                                                                   "rope_theta": 1000.0})
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "hf"))
    fast.save_pretrained(str(tmp_path / "hf"))
    import_hf(tmp_path / "hf", tmp_path / "run")
    recipe, ours, ours_tok = load_run(tmp_path / "run")
    assert recipe.model.n_kv_heads == 2 and recipe.model.position.theta == 1000.0
    text = "the lazy fox"
    assert ours_tok.encode(text) == fast(text)["input_ids"]
    ids = torch.tensor([ours_tok.encode("the quick brown fox jumps")])
    with torch.no_grad():
        assert (ours(ids) - hf(input_ids=ids).logits).abs().max().item() < 1e-4


def test_import_refuses_nonzero_biases(tmp_path):
    run = make_run(tmp_path / "run", position={"name": "learned"}, norm=LN, ffn=GELU)
    export_hf(run, tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    state["transformer.h.0.mlp.c_fc.bias"] += 0.5
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    from lmzoo.plugins.interop.convert import InteropError

    with pytest.raises(InteropError, match="c_fc.bias is not zero"):
        import_hf(tmp_path / "hf", tmp_path / "back")


@pytest.mark.parametrize("kind", ["bpe", "hf-bpe", "hf-unigram"])
def test_trained_tokenizers_export_with_the_same_ids(kind, tmp_path):
    import lmzoo

    text = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
            "You are all resolved rather to die than to famish? ") * 30
    params = {"vocab_size": 300} if kind != "bpe" else {"vocab_size": 300, "num_workers": 0, "progress": False}
    tok = lmzoo.create("tokenizer", kind, **params)
    tok.train([text])
    run = make_run(tmp_path / "run", tokenizer=tok)
    export_hf(run, tmp_path / "hf", verify=False)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    sample = "Speak, citizen! Before we proceed<|endoftext|>   rather  famish?\n"
    assert hf_tok(sample)["input_ids"] == tok.encode(sample)
    assert hf_tok.decode(tok.encode(sample)) == sample
    import_hf(tmp_path / "hf", tmp_path / "back")
    assert load_run(tmp_path / "back")[2].encode(sample) == tok.encode(sample)


def test_a_plugin_declares_its_own_export_mapping(tmp_path, fresh_plugins):
    """A third-party position (RoPE with another parameter name) becomes exportable through the hook."""
    plugin = tmp_path / "my_rope.py"
    plugin.write_text(textwrap.dedent('''
        import lmzoo
        from pydantic import BaseModel

        class Params(BaseModel):
            base: float = 10000.0

        def factory(base=10000.0, **ctx):
            from lmzoo.plugins.positions.encodings import RoPE
            return RoPE(theta=base, **ctx)

        @lmzoo.hookimpl
        def lmzoo_register(registry):
            registry.add("position", "my-rope", factory=factory, params=Params, summary="RoPE, renamed")

        @lmzoo.hookimpl
        def lmzoo_export_mappings():
            from lmzoo.plugins.interop.architectures import halves_to_interleaved, interleaved_to_halves
            from lmzoo.plugins.interop.mapping import ComponentMapping

            def prepare(params, facts):
                facts.qk, facts.qk_back = interleaved_to_halves, halves_to_interleaved

            return [ComponentMapping("position", "my-rope", "llama", prepare=prepare, config=lambda p, f: {
                "rope_parameters": {"rope_type": "default", "rope_theta": p["base"]}})]
    '''))
    from lmzoo.hooks import load_plugin_files

    load_plugin_files([plugin], strict=True)
    run = make_run(tmp_path / "run", plugins=[plugin], position={"name": "my-rope", "base": 300.0})
    info = export_hf(run, tmp_path / "hf", plugins=[plugin])  # verifies logits against lmzoo's
    assert info["hf_class"] == "LlamaForCausalLM" and info["max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["rope_parameters"]["rope_theta"] == 300.0
