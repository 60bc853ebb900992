"""The lm-evaluation-harness command line with the `lmzoo` model registered, for harness
versions that do not discover plugins (0.4.13 and older read no entry points):

    python -m lmzoo.plugins.interop.lm_eval_cli run --model lmzoo --model_args run=RUN_DIR --tasks TASK

Every argument goes to the harness's own CLI unchanged. Harness versions that read the
`lm_eval.models` entry-point group find `lmzoo` without this (`lm_eval --model lmzoo ...`).
"""
import lmzoo.plugins.interop.harness  # noqa: F401  (registers the model name `lmzoo`)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
