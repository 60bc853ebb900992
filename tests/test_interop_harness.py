"""The lm-evaluation-harness model `lmzoo` on tasks defined from local JSON files: log-likelihoods
against lmzoo's own loss, the harness's accuracy against a hand computation, generation against
lmzoo's sampler, `lmzoo eval --tasks`, and the harness's own command line."""
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from interop_runs import make_run  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lmzoo.plugins.interop.harness import LmzooLM, evaluate_tasks  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lmzoo.cli import build_app  # noqa: E402
from lmzoo.evaluate import evaluate_tokens  # noqa: E402
from lmzoo.rundir import load_run  # noqa: E402
from lmzoo.sampling import sample  # noqa: E402
from lmzoo.train import byte_lengths  # noqa: E402

DOCS = [
    {"question": "The cat sat on the", "choices": [" mat", " zebra", " moon"], "answer": 0},
    {"question": "One, two,", "choices": [" three", " purple"], "answer": 0},
    {"question": "To be or not to", "choices": [" be", " sea"], "answer": 1},
    {"question": "", "choices": ["Hello", "World"], "answer": 1},
]


def _task(tmp_path, name, body):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in DOCS))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    f"test_split: test\n{body}")
    return path


def mc_task(tmp_path):
    return _task(tmp_path, "lmzoo_test_mc", 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
                 'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')


def rolling_task(tmp_path):
    return _task(tmp_path, "lmzoo_test_rolling", 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
                 'doc_to_target: "{{question}}{{choices[0]}}"\nmetric_list:\n  - metric: bits_per_byte\n')


def gen_task(tmp_path):
    return _task(tmp_path, "lmzoo_test_gen", 'output_type: generate_until\ndoc_to_text: "{{question}}"\n'
                 'doc_to_target: "{{choices[0]}}"\ngeneration_kwargs:\n  until: ["."]\n  max_gen_toks: 6\n'
                 'metric_list:\n  - metric: exact_match\n')


def _req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def alibi_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("alibi") / "run", position={"name": "alibi"})


def test_rolling_loglikelihood_is_lmzoos_loss(alibi_run):
    """The harness's rolling log-likelihood of a text is minus lmzoo's summed validation loss
    (lmzoo.evaluate.evaluate_tokens) on [eos] + text: in one window, and over two windows of
    the run's 32-token context, where the harness's disjoint windows are lmzoo's eval windows."""
    import numpy as np

    lm = LmzooLM(run=str(alibi_run))
    _, model, tok = load_run(alibi_run)
    byte_lens = byte_lengths(tok, model.vocab_size)
    for text, context, windows in (("O Romeo, Romeo, wherefore", None, 1), ("ab" * 32, 32, 2)):
        ids = np.array([tok.eos_id] + tok.encode(text), dtype=np.int64)
        r = evaluate_tokens(model, ids, context or len(ids) - 1, windows, 1, byte_lens)
        assert r["tokens"] == len(text)
        got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])[0]
        assert got == pytest.approx(-r["loss"] * r["tokens"], rel=1e-5)


def test_loglikelihood_and_greedy_flag_by_hand(alibi_run):
    lm = LmzooLM(run=str(alibi_run), batch_size=2)
    _, model, tok = load_run(alibi_run)
    pairs = [("The cat sat on the", " mat"), ("", "Hello"), ("abc ", "def"), ("x", "")]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        if ctx.endswith(" "):
            ctx, cont = ctx[:-1], " " + cont
        c = tok.encode(ctx) if ctx else [tok.eos_id]
        x = tok.encode(cont)
        if not x:
            assert (lp, greedy) == (0.0, True)
            continue
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([c + x]))[0, :-1], -1)[len(c) - 1:]
        assert lp == pytest.approx(logp[torch.arange(len(x)), torch.tensor(x)].sum().item(), rel=1e-5)
        assert greedy == bool((logp.argmax(-1) == torch.tensor(x)).all())


def test_generate_until_is_lmzoos_greedy_sampler(alibi_run):
    lm = LmzooLM(run=str(alibi_run))
    _, model, tok = load_run(alibi_run)
    out = lm.generate_until([_req("generate_until", "To be", {"until": ["zz"], "max_gen_toks": 10})])[0]
    new = sample(model, [tok.encode("To be")], 10, temperature=0, stop_id=tok.eos_id)[0]
    assert out == tok.decode(new)
    stop = tok.decode(new)[3:5]
    cut = lm.generate_until([_req("generate_until", "To be", {"until": [stop], "max_gen_toks": 10})])[0]
    assert cut == tok.decode(new)[:tok.decode(new).find(stop)]


@pytest.mark.parametrize("position", ["alibi", "none"])
def test_simple_evaluate_on_local_tasks(position, tmp_path):
    """ALiBi and NoPE runs (no transformers architecture) scored by the harness; the accuracy
    it reports is the argmax of the log-likelihoods computed by hand."""
    run = make_run(tmp_path / "run", position={"name": position})
    scores = evaluate_tasks(run, [str(mc_task(tmp_path)), str(rolling_task(tmp_path)), str(gen_task(tmp_path))])
    lm = LmzooLM(run=str(run))
    correct = 0
    for d in DOCS:
        lls = [lp for lp, _ in lm.loglikelihood([_req("loglikelihood", d["question"], c) for c in d["choices"]])]
        correct += int(max(range(len(lls)), key=lls.__getitem__) == d["answer"])
    assert scores["lmzoo_test_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))
    assert scores["lmzoo_test_rolling"]["bits_per_byte,none"] > 0
    assert 0 <= scores["lmzoo_test_gen"]["exact_match,none"] <= 1
    saved = json.loads((run / "eval.json").read_text())
    assert saved["tasks"]["lmzoo_test_mc"] == scores["lmzoo_test_mc"]


def test_lmzoo_eval_tasks_command(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "eval.json").write_text(json.dumps({"split": "val", "contexts": {"32": {"loss": 5.0}}}))
    res = CliRunner().invoke(build_app(), ["eval", str(run), "--tasks", str(mc_task(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "lmzoo_test_mc" in res.output and "acc,none" in res.output
    saved = json.loads((run / "eval.json").read_text())
    assert "acc,none" in saved["tasks"]["lmzoo_test_mc"] and saved["contexts"]["32"]["loss"] == 5.0  # kept
    res = CliRunner().invoke(build_app(), ["eval", str(run), "--tasks", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 1 and "no such task file" in res.output and "Traceback" not in res.output


def test_the_harness_finds_the_model_through_its_entry_point():
    """The distribution declares `lmzoo` in the harness's `lm_eval.models` group; resolving that
    entry point the way the harness's registry does gives the model class."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry

    (ep,) = [e for e in entry_points(group="lm_eval.models") if e.name == "lmzoo"]
    registry = Registry("model", base_cls=LM)
    registry.register("lmzoo", target=ep.value)  # "module:attr", as the harness stores entry points lazily
    assert registry.get("lmzoo") is LmzooLM


def test_the_harness_command_line(tmp_path):
    run = make_run(tmp_path / "run", position={"name": "none"})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lmzoo.plugins.interop.lm_eval_cli", "run", "--model", "lmzoo",
                           "--model_args", f"run={run}", "--tasks", str(mc_task(tmp_path)), "--device", "cpu",
                           "--output_path", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lmzoo_test_mc" in proc.stdout and "acc" in proc.stdout
    (result,) = list(out.rglob("results_*.json"))
    assert "lmzoo_test_mc" in json.loads(result.read_text())["results"]
