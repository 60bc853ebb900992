"""lm-evaluation-harness model `lmzoo`: any lmzoo run (ALiBi and NoPE included) under the harness.

    import lm_eval
    from lmzoo.plugins.interop.harness import LmzooLM
    lm_eval.simple_evaluate(model=LmzooLM(run="runs/rope_vs_alibi/alibi"), tasks=["lambada_openai"])

or `lmzoo eval RUN_DIR --tasks t1,t2` (`evaluate_tasks`, scores into eval.json), or the harness's
own command line `lm_eval --model lmzoo --model_args run=RUN_DIR ...` where the harness finds
plugins (see the README's Interop section). Importing this module registers the name `lmzoo`.

Scoring follows the harness's HF model: a continuation is scored after the context's tokens
(trailing spaces of the context move to the continuation; an empty context is the
end-of-document token), the window is cut on the left to `max_length` tokens (default: the
run's training context), rolling log-likelihoods use the harness's disjoint windows with the
end-of-document token as the first prefix. Generation is lmzoo's own sampler.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmzoo.sampling import sample


@register_model("lmzoo")
class LmzooLM(LM):
    """An lmzoo run directory as an lm-evaluation-harness model.

    model_args: run (the run directory), checkpoint (final, last or best), max_length (tokens
    per window; default the run's data.context), device (cpu, cuda, ...), batch_size, seed
    (sampling seed for generate_until with temperature > 0), plugins (plugin files the run
    needs, separated by ':'), trust_plugins (import the plugin files the run's recipe names)."""

    def __init__(self, run: str, checkpoint: str = "final", max_length: int | None = None, device: str = "cpu",
                 batch_size: int | str = 8, seed: int = 0, plugins=(), trust_plugins: bool = False,
                 max_batch_size: int | None = None, **unused):
        super().__init__()
        from lmzoo.rundir import RunError, load_run

        if isinstance(plugins, str):
            plugins = [p for p in plugins.split(":") if p]
        try:
            self.recipe, model, self.tok = load_run(run, checkpoint, plugins=plugins,
                                                    trust_plugins=str(trust_plugins).lower() in ("1", "true", "yes"))
        except RunError as exc:
            raise ValueError(f"lmzoo model_args run={run}: {exc}") from None
        self.run = str(run)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # the harness's CLI passes cuda by default; its HF model falls back the same way
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()
        self.max_length = int(max_length or self.recipe.data.context)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
        self.seed = int(seed)
        self.eos = getattr(self.tok, "eos_id", None)

    # ------------------------------------------------------------------ tokens
    def _prefix(self) -> list[int]:
        if self.eos is None:
            raise ValueError(f"{self.run}: its tokenizer has no end-of-document token, so an empty context (and a "
                             "rolling log-likelihood) has nothing to condition on; train with one (byte: eos=true)")
        return [self.eos]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:  # "Q: x A:" + " yes" scores " yes" whole, as the harness's HF model does
            continuation, context = context[-spaces:] + continuation, context[:-spaces]
        if not context:
            return self._prefix(), self.tok.encode(continuation)
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        return ctx, whole[len(ctx):]

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation)."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        out: list = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows, spans = [], []
            for i in idx:
                ctx, cont = pairs[i]
                if not cont:
                    out[i] = (0.0, True)
                    continue
                ids = (ctx + cont)[-(self.max_length + 1):][:-1]  # the last token is only predicted
                rows.append((i, ids))
                spans.append(len(cont))
            if not rows:
                continue
            width = max(len(ids) for _, ids in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)
            for r, (_, ids) in enumerate(rows):
                x[r, :len(ids)] = torch.tensor(ids)  # right padding: causal attention never sees it
            logp = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1).cpu()
            for r, ((i, ids), n) in enumerate(zip(rows, spans)):
                cont = torch.tensor(pairs[i][1])
                lp = logp[r, len(ids) - n:len(ids)]  # positions predicting the continuation
                out[i] = (float(lp.gather(1, cont[:, None]).sum()), bool((lp.argmax(-1) == cont).all()))
        return out

    # ------------------------------------------------------------------ the LM interface
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([self._encode_pair(*req.args[:2]) for req in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            tokens = self.tok.encode(req.args[0])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=self._prefix()[0], max_seq_len=self.max_length, context_len=1)]
            out.append(sum(lp for lp, _ in self._score([(list(c), list(t)) for c, t in windows])))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kw = req.args[0], dict(req.args[1] or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if self.eos is not None:
                until.append(self.tok.decode([self.eos]) or "\0")
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) or kw.get(
                "temperature", 0.0) else 0.0
            ids = self.tok.encode(context) if context else self._prefix()
            new = sample(self.model, [ids[-self.max_length:]], int(kw.get("max_gen_toks", 256)),
                         temperature=temperature, top_k=kw.get("top_k"), top_p=kw.get("top_p"), seed=self.seed,
                         stop_id=self.eos, window=self.max_length)[0]
            text = self.tok.decode(new)
            cut = min([text.find(s) for s in until if s and s in text], default=len(text))
            out.append(text[:cut])
        return out

    @property
    def tokenizer_name(self) -> str:
        return f"lmzoo-{getattr(self.tok, 'name', 'tokenizer')}"

    def get_model_info(self) -> dict:
        return {"model_source": "lmzoo", "model_name": self.run, "model_num_parameters": self.model.num_params()}


# ----------------------------------------------------------------------------- lmzoo eval --tasks

def _task_entry(task: str):
    """A task name, or a task YAML file loaded into the config dict the harness takes."""
    p = Path(task)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"--tasks {task}: no such task file")
        from lm_eval.tasks._yaml_loader import load_yaml

        return load_yaml(str(p), resolve_func=True)
    return task


def evaluate_tasks(run_dir, tasks, *, checkpoint: str = "final", limit: int | float | None = None,
                   num_fewshot: int | None = None, batch_size: int = 8, include_path=None, device: str = "cpu",
                   max_length: int | None = None, plugins=(), trust_plugins: bool = False, write: bool = True) -> dict:
    """Score a run on lm-evaluation-harness tasks (names, or paths of task YAML files); returns
    {task: {metric: value}} and, with `write`, merges it into <run_dir>/eval.json under "tasks"."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    lm = LmzooLM(run=str(run_dir), checkpoint=checkpoint, batch_size=batch_size, device=device,
                 max_length=max_length, plugins=list(plugins), trust_plugins=trust_plugins)
    entries = [_task_entry(t) for t in tasks]
    # indexing the harness's thousands of built-in task files takes seconds: only when a task is named
    manager = TaskManager(include_path=[str(p) for p in include_path] if include_path else None,
                          include_defaults=any(isinstance(e, str) for e in entries))
    names = [e if isinstance(e, str) else e.get("task") for e in entries]
    unknown = [n for n in names if isinstance(n, str) and n not in manager.all_tasks
               and not any(isinstance(e, dict) and e.get("task") == n for e in entries)]
    if unknown:
        raise ValueError(f"--tasks: unknown lm-evaluation-harness task(s) {', '.join(unknown)}; give a registered "
                         "name (lm_eval ls tasks) or a task YAML file")
    results = lm_eval.simple_evaluate(model=lm, tasks=entries, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, batch_size=batch_size, log_samples=False,
                                      bootstrap_iters=0)
    scores = {task: {k: v for k, v in res.items() if k != "alias" and isinstance(v, (int, float))}
              for task, res in results["results"].items()}
    if write:
        from lmzoo.rundir import RunDir

        run = RunDir(run_dir)
        doc = run.read_json("eval.json") or {}
        doc["tasks"] = {**doc.get("tasks", {}), **scores}
        doc["harness"] = {"lm_eval": lm_eval.__version__, "limit": limit, "num_fewshot": num_fewshot,
                          "max_length": lm.max_length, "checkpoint": checkpoint}
        run.write_json("eval.json", doc)
    return scores
