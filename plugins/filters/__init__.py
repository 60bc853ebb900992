"""Data filtering: the `data_filter` components, the `noisy-web` data source, the `filter:` recipe
section and the `lmzoo filter` command. This module holds only parameters, registration and hooks
(it imports no numpy, resiliparse or scikit-learn); each filter lives in its own module:

  html_text.py          html-text           plain text from HTML (main content, or all visible text)
  gopher_quality.py     gopher-quality      the Gopher quality rules
  pii_mask.py           pii-mask            emails, US phone numbers, IPv4 addresses -> |||EMAIL_ADDRESS||| ...
  language_id.py        language-id         keep chosen languages above a confidence (py3langid)
  toxicity.py           toxicity            drop toxic/profane text (alt-profanity-check; extra lmzoo[toxicity])
  quality_classifier.py quality-classifier  a trained linear classifier over word n-grams (lmzoo filter train-quality)
  length.py             length              character / word count bounds
  repetition.py         repetition          Gopher's repetition rules
  exact_line_dedup.py   exact-line-dedup    drop lines that occur more than once in the corpus
  minhash_dedup.py      minhash-dedup       near-duplicate documents: MinHash + LSH + true Jaccard

and beside them: document.py (the protocol: `f.apply(text) -> Decision`), stats.py (the one
per-filter statistics loop), readers.py, pipeline.py (the stages), executors.py (datatrove's
local, SLURM and Ray executors), files.py (file-level helpers), noisy_web.py, study.py (the
data-quality study) and cli.py.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import lmzoo

PKG = "lmzoo.plugins.filters"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ============================================================================ filter parameters

class HtmlTextParams(_Params):
    mode: Literal["main-content", "plain"] = Field(
        "main-content", description="main-content: the page's main content, blank lines removed; plain: all visible "
                                    "text as resiliparse's plain-text extraction gives it, blank lines kept")
    only_html: bool = Field(True, description="leave documents that do not look like HTML unchanged")
    min_chars: int = Field(1, ge=0, description="drop a document whose extracted text (stripped) is shorter than this")


GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


class GopherParams(_Params):
    min_words: int = Field(50, ge=0, description="drop documents with fewer words")
    max_words: int = Field(100_000, ge=1, description="drop documents with more words")
    min_mean_word_length: float = Field(3.0, ge=0, description="drop when the mean word length is below this")
    max_mean_word_length: float = Field(10.0, gt=0, description="drop when the mean word length is above this")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="drop when '#' or ellipses per word exceed this")
    max_bullet_lines: float = Field(0.9, ge=0, le=1, description="drop when more lines start with a bullet")
    max_ellipsis_lines: float = Field(0.3, ge=0, le=1, description="drop when more lines end with an ellipsis")
    min_alpha_words: float = Field(0.8, ge=0, le=1, description="drop when fewer words contain a letter")
    min_stop_words: int = Field(2, ge=0, description="drop when fewer stop-word occurrences are found")
    stop_words: list[str] = Field(GOPHER_STOP_WORDS, description="the stop words counted by min_stop_words")


class PiiParams(_Params):
    emails: bool = Field(True, description="mask email addresses")
    phones: bool = Field(True, description="mask US phone numbers")
    ips: bool = Field(True, description="mask IPv4 addresses")


class LanguageParams(_Params):
    languages: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes of the languages to keep")
    min_confidence: float = Field(0.5, ge=0, le=1, description="drop when the top language's probability is lower")


class ToxicityParams(_Params):
    threshold: float = Field(0.9, gt=0, le=1, description="drop when a unit's toxicity probability is >= this")
    unit: Literal["line", "document"] = Field("line", description="score each line (max over lines) or the whole text")
    min_line_words: int = Field(3, ge=1, description="with unit=line, lines with fewer words are not scored "
                                                    "(speaker names and one-word lines are noisy for the classifier)")


class QualityParams(_Params):
    model: str = Field(..., min_length=1, description="a model file written by `lmzoo filter train-quality` (.npz)")
    threshold: float = Field(0.5, ge=0, le=1, description="drop when the quality score (probability of the positive "
                                                         "class) is below this")


class LengthParams(_Params):
    min_chars: int = Field(0, ge=0, description="drop documents with fewer characters")
    max_chars: Optional[int] = Field(None, ge=1, description="drop documents with more characters; None: no limit")
    min_words: int = Field(0, ge=0, description="drop documents with fewer whitespace-separated words")
    max_words: Optional[int] = Field(None, ge=1, description="drop documents with more words; None: no limit")


class RepetitionParams(_Params):
    max_dup_line_fraction: float = Field(0.30, ge=0, le=1, description="duplicate lines / lines")
    max_dup_line_char_fraction: float = Field(0.20, ge=0, le=1, description="characters in duplicate lines / characters")
    max_dup_para_fraction: float = Field(0.30, ge=0, le=1, description="duplicate paragraphs / paragraphs")
    max_dup_para_char_fraction: float = Field(0.20, ge=0, le=1, description="chars in duplicate paragraphs / chars")
    max_top_ngram_char_fraction: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16}, description="n -> max fraction of word characters in the most frequent n-gram")
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max fraction of word characters inside repeated n-grams")

    @field_validator("max_top_ngram_char_fraction", "max_dup_ngram_char_fraction")
    @classmethod
    def _ns(cls, v):
        for n, frac in v.items():
            if n < 1 or not 0 <= frac <= 1:
                raise ValueError(f"n-gram sizes must be >= 1 and fractions in [0, 1], got {n}: {frac}")
        return v


class ExactLineParams(_Params):
    min_chars: int = Field(1, ge=0, description="lines shorter than this (stripped) are always kept, never counted")
    num_buckets: int = Field(16, ge=1, le=4096, description="hash buckets: tasks of the bucket stage (memory: one bucket)")
    keep_empty: bool = Field(False, description="keep a document that loses every line as an empty document "
                                                "(a file-level run then writes one output per input file)")


class MinHashParams(_Params):
    num_hashes: int = Field(128, ge=1, description="MinHash signature length")
    num_bands: int = Field(16, ge=1, description="LSH bands, one bucket task each (num_hashes must be divisible by it)")
    ngram: int = Field(5, ge=1, description="word n-gram size of the shingles")
    jaccard_threshold: float = Field(0.8, gt=0, le=1, description="candidates at or above this true Jaccard are duplicates")
    seed: int = Field(1, description="seed of the hash functions")

    @model_validator(mode="after")
    def _bands(self):
        if self.num_hashes % self.num_bands:
            raise ValueError(f"num_hashes={self.num_hashes} must be divisible by num_bands={self.num_bands} "
                             f"(each band has num_hashes/num_bands rows)")
        return self


FILTERS = [
    ("html-text", "html_text:HtmlText", HtmlTextParams,
     "plain text from HTML: main content or all visible text (resiliparse; encoding detected)"),
    ("gopher-quality", "gopher_quality:GopherQuality", GopherParams,
     "Gopher quality rules (word count, word length, symbols, bullets, stop words)"),
    ("pii-mask", "pii_mask:PiiMask", PiiParams, "mask emails, US phone numbers and IPv4 addresses, counting them"),
    ("language-id", "language_id:LanguageId", LanguageParams,
     "keep chosen languages above a confidence (py3langid); label = language, score = probability"),
    ("toxicity", "toxicity:Toxicity", ToxicityParams,
     "drop toxic/profane text (alt-profanity-check; extra lmzoo[toxicity]); score = toxicity probability"),
    ("quality-classifier", "quality_classifier:QualityClassifier", QualityParams,
     "drop documents a trained word n-gram classifier scores below a threshold (lmzoo filter train-quality)"),
    ("length", "length:Length", LengthParams, "bounds on characters and words"),
    ("repetition", "repetition:Repetition", RepetitionParams,
     "Gopher repetition rules: duplicate lines, paragraphs, n-grams"),
    ("exact-line-dedup", "exact_line_dedup:ExactLineDedup", ExactLineParams,
     "drop lines that occur more than once in the corpus (multi-stage dedup)"),
    ("minhash-dedup", "minhash_dedup:MinHashDedup", MinHashParams,
     "near-duplicate removal: MinHash + LSH + true Jaccard (multi-stage dedup)"),
]


# ============================================================================ the noisy-web source

class NoisyWebParams(_Params):
    clean: dict = Field({"name": "shakespeare"},
                        description="the data source of clean text, {name: ..., **params} (e.g. {name: text, paths: [...]})")
    passage_words: int = Field(300, ge=0, description="cut clean documents into passages of about this many words "
                                                      "(at line ends); 0: keep them whole")
    noise_fraction: float = Field(0.5, ge=0, lt=1, description="fraction of training documents that are noise "
                                                               "(boilerplate, pii and toxic ones wrap a clean passage)")
    weights: Optional[dict[str, float]] = Field(None, description="relative frequency of each noise kind "
                                                                  "(None: all kinds equally often)")
    max_clean_docs: Optional[int] = Field(None, ge=1, description="cap on clean training passages (quick runs)")
    seed: int = Field(0, description="seed of the noise generator")

    @field_validator("weights")
    @classmethod
    def _kinds(cls, v):
        from lmzoo.plugins.filters.noisy_web import NOISE_KINDS

        from lmzoo.registry import did_you_mean

        if v is None:
            return v
        for k, w in v.items():
            if k not in NOISE_KINDS:
                raise ValueError(f"unknown noise kind {k!r}{did_you_mean(k, NOISE_KINDS)}; kinds: {', '.join(NOISE_KINDS)}")
            if w < 0:
                raise ValueError(f"weights.{k} = {w} must be >= 0")
        if not any(w > 0 for w in v.values()):
            raise ValueError("give at least one noise kind a positive weight")
        return v


class FilterOutputParams(_Params):
    path: str = Field(..., min_length=1, description="an output folder of `lmzoo filter` (holding kept/ and report.json)")
    val: dict = Field(default_factory=dict, description="a data source {name: ..., **params} whose val split is the "
                                                       "validation text; empty: hold out val_fraction of the kept documents")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of kept documents held out when `val` is empty")


# ============================================================================ the filter: recipe section

class SlurmParams(_Params):
    partition: Optional[str] = Field(None, description="SLURM partition (required with executor: slurm)")
    time: str = Field("4:00:00", description="time limit per task (sbatch --time)")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per task")
    mem_per_cpu_gb: float = Field(2, gt=0, description="memory per CPU in GB")
    job_name: str = Field("lmzoo-filter", description="SLURM job name prefix")
    qos: str = Field("normal", description="SLURM quality of service")
    env_command: Optional[str] = Field(None, description="shell command run before each task (e.g. activating a venv)")
    sbatch_args: dict = Field(default_factory=dict, description="extra sbatch options, e.g. {account: my-account}")


class RayParams(_Params):
    address: Optional[str] = Field(None, description="a running Ray cluster to join (ray.init(address)); "
                                                     "None: start a local Ray instance")
    cpus_per_task: int = Field(1, ge=1, description="CPUs reserved per task")
    mem_per_cpu_gb: float = Field(2, gt=0, description="memory reserved per CPU in GB")


QUALITY_NEGATIVE_KINDS = ["nav_page", "spam_links", "keyword_stuffing", "gibberish", "non_english"]


class QualityStudyParams(_Params):
    model: Optional[str] = Field(None, description="where `lmzoo filter train-quality --recipe` writes the study's "
                                                   "quality classifier; `--evaluate` scores it when it exists")
    positive_kinds: list[str] = Field(["clean"], min_length=1, description="noise-label kinds that are good text")
    negative_kinds: list[str] = Field(QUALITY_NEGATIVE_KINDS, min_length=1,
                                      description="noise-label kinds the classifier learns to reject")
    threshold: float = Field(0.5, ge=0, le=1, description="the threshold used when the classifier is evaluated")


class FilterSection(_Params):
    """data-quality options: how `lmzoo filter` runs and what it reads, and the toxicity of sampled
    generations after training"""

    inputs: list[str] = Field(default_factory=list, description="files, folders or fsspec URLs `lmzoo filter` reads "
                                                               "instead of the data source")
    executor: Literal["local", "slurm", "ray", "inline"] = Field(
        "local", description="datatrove's local, SLURM or Ray executor; inline: every task in this process")
    tasks: Optional[int] = Field(None, ge=1, description="tasks per pass over the data (None: one per input shard, "
                                                        "at most 4 per worker)")
    workers: int = Field(1, ge=1, description="tasks running at once")
    text_unit: Literal["file", "line", "paragraph", "eot"] = Field("file", description="what a document is in a text file")
    text_key: str = Field("text", description="the text field of JSONL and Parquet records")
    write_excluded: bool = Field(True, description="write dropped documents with the filter and reason to excluded/")
    slurm: SlurmParams = Field(default_factory=SlurmParams, description="SLURM settings (executor: slurm)")
    ray: RayParams = Field(default_factory=RayParams, description="Ray settings (executor: ray)")
    generations: int = Field(0, ge=0, description="after each training run, sample this many texts and score their toxicity")
    generation_tokens: int = Field(256, ge=1, description="tokens per sampled text")
    prompt_chars: int = Field(32, ge=0, description="each sample continues the start of a clean validation document")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_k: Optional[int] = Field(None, ge=1, description="sample from the top k tokens; None: all")
    toxicity: ToxicityParams = Field(default_factory=ToxicityParams,
                                     description="the classifier settings used to score the generations")
    quality: QualityStudyParams = Field(default_factory=QualityStudyParams,
                                        description="the data-quality study's trained quality classifier: trained on "
                                                    "the even-indexed labelled documents, evaluated on the odd ones")


# ============================================================================ hooks

@lmzoo.hookimpl
def lmzoo_register(registry):
    for name, ref, params, summary in FILTERS:
        registry.add("data_filter", name, factory=f"{PKG}.{ref}", params=params, summary=summary)
    registry.add("data_source", "noisy-web", factory=f"{PKG}.noisy_web:NoisyWeb", params=NoisyWebParams,
                 summary="clean text mixed with labelled web noise (boilerplate, spam, PII, toxic, duplicates, ...)")
    registry.add("data_source", "filter-output", factory=f"{PKG}.files:FilterOutput", params=FilterOutputParams,
                 summary="the kept documents of an `lmzoo filter` run, read directly (train on filtered data)")


@lmzoo.hookimpl
def lmzoo_recipe_sections():
    return {"filter": FilterSection}


@lmzoo.hookimpl
def lmzoo_filter_documents(documents, filters):
    """The data stage of `lmzoo run`: the recipe's data.filters over the training documents."""
    from lmzoo.plugins.filters.pipeline import apply_filters

    return apply_filters(documents, filters)


@lmzoo.hookimpl
def lmzoo_after_run(recipe, run_dir, summary):
    """With `filter.generations > 0`: toxicity of sampled generations and the data kept, into summary.json."""
    sec = getattr(recipe, "filter", None)
    if sec is None or sec.generations <= 0 or not summary:
        return
    from lmzoo.plugins.filters.study import after_run

    after_run(recipe, run_dir, summary, sec)


@lmzoo.hookimpl
def lmzoo_cli(app):
    from lmzoo.plugins.filters.cli import filter_app

    app.add_typer(filter_app(), name="filter")


# ============================================================================ the public API, imported on first use

_LAZY = {
    "Document": "document", "Decision": "document", "Drop": "document", "DocumentFilter": "document",
    "DedupStage": "document", "FilterError": "document", "build_filters": "document",
    "FilterStats": "stats", "FilterStep": "stats", "PipelineReport": "stats",
    "Pipeline": "pipeline", "apply_filters": "pipeline", "iter_kept": "pipeline",
    "plan_shards": "readers", "read_shard": "readers", "Shard": "readers",
    "exact_line_dedup_files": "files", "minhash_dedup_files": "files", "filter_files": "files",
    "extract_text": "html_text", "EMAIL_MASK": "pii_mask", "PHONE_MASK": "pii_mask", "IP_MASK": "pii_mask",
    "normalize_for_dedup": "minhash_dedup", "top_ngram_char_fraction": "repetition",
    "dup_ngram_char_fraction": "repetition", "QualityModel": "quality_classifier",
    "evaluate_filters": "study", "evaluation_markdown": "study", "study_report": "study",
    "generation_toxicity": "study",
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{PKG}.{mod}"), name)
