"""The `hf-dataset` data source: text from the Hugging Face `datasets` library.

Registered (with its parameters) by plugins/data_sources.py; this module is imported only
when the source is built, so `datasets` (the `hf` extra) is needed only by recipes that use it.
"""
from __future__ import annotations

import glob as globlib
import json
import math
from pathlib import Path
from typing import Iterator

from lmzoo.data import DataError
from lmzoo.registry import did_you_mean

from .data_sources import _check_split, _sha, _Source, _tail_split

FORMAT_VERSION = 1  # bump when rows -> documents changes (re-keys token caches)
# file suffix -> the `datasets` builder that reads it (compression suffixes are looked through)
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv",
            ".arrow": "arrow", ".txt": "text"}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")
BATCH_ROWS = 1000


def _builder_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION:
        suffixes.pop()
    return BUILDERS.get(suffixes[-1]) if suffixes else None


def _content_hash(files: list[Path], root: Path | None = None) -> str:
    """xxh3-128 of the files' names (relative to root) and bytes: the same data keeps its token
    cache wherever it lies; any edit re-keys it. xxhash ships with `datasets`."""
    import xxhash

    h = xxhash.xxh3_128()
    for f in files:
        h.update(str(f.relative_to(root) if root else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


class HFDataset(_Source):
    """Documents from one text column of a Hugging Face dataset: a directory written by
    `save_to_disk`, local Parquet/JSON/CSV/Arrow/text files (a file, a glob or a directory of
    them; splits inferred from file names such as train-*.parquet), or a dataset name on the
    Hub (where it can be reached). Validation is a named split (`val_split`) or the last
    `val_fraction` of the rows. `streaming` reads rows lazily instead of converting the data to
    Arrow files first; `max_rows` keeps the first rows only."""

    name = "hf-dataset"

    def __init__(self, path, field="text", split="train", val_split=None, val_fraction=0.1, max_rows=None,
                 max_val_rows=None, streaming=False, config=None, revision=None, format=None):
        self.path, self.field, self.split, self.val_split = path, field, split, val_split
        self.val_fraction, self.max_rows, self.max_val_rows = val_fraction, max_rows, max_val_rows
        self.streaming, self.config, self.revision, self.format = streaming, config, revision, format
        self._local = Path(path).expanduser()
        self._files = self._data_files()
        self._loaded: dict[str, object] = {}
        self._fingerprint: str | None = None
        self._n_streamed: int | None = None

    # ------------------------------------------------------------------ where the data is

    def _data_files(self) -> list[Path] | None:
        """The local data files a file path or glob names; None for a directory or a Hub name."""
        text = str(self._local)
        if globlib.has_magic(text):
            files = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
            if not files:
                raise DataError(f"hf-dataset.path: the glob {self.path!r} matches no files")
        elif self._local.is_file():
            files = [self._local]
        else:
            return None
        if self.format is None:
            unknown = sorted({f.name for f in files if _builder_of(f) is None})
            if unknown:
                raise DataError(f"hf-dataset.path: cannot tell the format of {unknown[0]!r} from its suffix "
                                f"(known: {', '.join(BUILDERS)}); set the source's `format`")
            kinds = {_builder_of(f) for f in files}
            if len(kinds) > 1:
                raise DataError(f"hf-dataset.path: {self.path!r} mixes formats ({', '.join(sorted(kinds))}); "
                                "point it at files of one format")
        return files

    def _kind(self) -> str:
        if self._files is not None:
            return "files"
        if _is_saved_dataset(self._local):
            return "saved"
        if self._local.is_dir():
            return "directory"
        if self._local.exists():
            raise DataError(f"hf-dataset.path: {self.path!r} is neither a data file, a glob, a directory nor a "
                            "dataset saved with save_to_disk")
        # Hub names are "name" or "owner/name"; anything else is meant as a local path
        if self.path.startswith((".", "/", "~")) or self.path.count("/") > 1 or _builder_of(self._local):
            raise DataError(f"hf-dataset.path: {self.path!r} not found (looked at {self._local.resolve()})")
        return "hub"

    def _load(self, split: str):
        """One split as a Dataset (memory-mapped Arrow) or, when streaming, an IterableDataset."""
        if split in self._loaded:
            return self._loaded[split]
        import datasets

        kind = self._kind()
        try:
            if kind == "saved":
                data = datasets.load_from_disk(str(self._local))
                if isinstance(data, datasets.DatasetDict):
                    if split not in data:
                        raise DataError(f"hf-dataset: the saved dataset {self.path!r} has no split {split!r}"
                                        f"{did_you_mean(split, list(data))}; splits: {', '.join(data)}")
                    data = data[split]
                elif split != self.split:
                    raise DataError(f"hf-dataset: {self.path!r} was saved as a single Dataset (no splits), so "
                                    f"there is no {split!r} split; leave val_split unset to hold out val_fraction")
                if self.streaming:
                    data = data.to_iterable_dataset()
            elif kind == "files":
                builder = self.format or _builder_of(self._files[0])
                data = datasets.load_dataset(builder, data_files=[str(f) for f in self._files], split=split,
                                             streaming=self.streaming)
            else:  # a directory of data files, or a Hub name
                data = datasets.load_dataset(str(self._local) if kind == "directory" else self.path, self.config,
                                             split=split, streaming=self.streaming, revision=self.revision)
        except DataError:
            raise
        except ValueError as exc:  # datasets' "Unknown split" and the like
            raise DataError(f"hf-dataset {self.path!r}: {str(exc).splitlines()[0]}") from None
        except (ConnectionError, OSError) as exc:
            where = "the Hugging Face Hub could not be reached" if kind == "hub" else "it could not be read"
            raise DataError(f"hf-dataset.path: {self.path!r} is not a local file or directory and {where} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        columns = data.column_names or []
        if columns and self.field not in columns:
            raise DataError(f"hf-dataset: {self.path!r} split {split!r} has no column {self.field!r}"
                            f"{did_you_mean(self.field, columns)}; columns: {', '.join(columns)} (set `field`)")
        self._loaded[split] = data
        return data

    # ------------------------------------------------------------------ documents

    def _rows(self, split: str, limit: int | None, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """The `field` texts of rows [start, stop) of the first `limit` rows of a split."""
        ends = [x for x in (limit, stop) if x is not None]
        end = min(ends) if ends else None
        data = self._load(split)
        if not self.streaming:
            end = len(data) if end is None else min(end, len(data))
            data = data.select_columns([self.field]).select(range(start, max(start, end)))
            rows = (t for batch in data.iter(batch_size=BATCH_ROWS) for t in batch[self.field])
        else:
            data = data.skip(start) if start else data
            data = data.take(end - start) if end is not None else data
            rows = (self._field_of(r, split) for r in data)
        for i, text in enumerate(rows, start):
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"hf-dataset {self.path!r}: row {i} of split {split!r}: column {self.field!r} "
                                f"holds {type(text).__name__}, expected text (set `field` to a string column)")
            if text:
                yield text

    def _field_of(self, row: dict, split: str):
        if self.field not in row:  # a streamed JSON dataset may not know its columns until it reads a row
            raise DataError(f"hf-dataset: {self.path!r} split {split!r} has no column {self.field!r}"
                            f"{did_you_mean(self.field, row)}; columns: {', '.join(row)} (set `field`)")
        return row[self.field]

    def _n_rows(self) -> int:
        """Rows of the training split after max_rows (where the held-out tail starts)."""
        data = self._load(self.split)
        if not self.streaming:
            n = len(data)
        else:
            info = (getattr(data.info, "splits", None) or {}).get(self.split)
            n = info.num_examples if info is not None and info.num_examples else None
            if n is None and self.max_rows is None:
                if self._kind() == "hub":
                    raise DataError("hf-dataset: streaming from the Hub without val_split needs max_rows (the split "
                                    "size is unknown, so the held-out tail cannot be placed); set val_split or "
                                    "max_rows")
                if self._n_streamed is None:  # local data: one counting pass
                    self._n_streamed = sum(1 for _ in data)
                n = self._n_streamed
        return min(x for x in (n, self.max_rows) if x is not None)

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        if self.val_split is not None:
            if split == "train":
                return self._rows(self.split, self.max_rows)
            return self._rows(self.val_split, self.max_val_rows)
        n = self._n_rows()
        n_val = math.floor(n * self.val_fraction)
        if 1 <= n_val < n:  # whole rows held out, as the file sources do
            return self._rows(self.split, n, *((0, n - n_val) if split == "train" else (n - n_val, n)))
        # too few rows to hold whole ones out: the tail of each row's text instead
        return iter(_tail_split(list(self._rows(self.split, n)), self.val_fraction, split))

    # ------------------------------------------------------------------ identity

    def _data_identity(self) -> str:
        kind = self._kind()
        if kind == "files":
            return _content_hash(self._files)
        if kind in ("saved", "directory"):
            root = self._local
            files = sorted(p for p in root.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(root).parts)  # .git, .cache
                           and (kind == "saved" or _builder_of(p)))  # a data directory: its data files
            return _content_hash(files, root)
        # a Hub dataset: its commit, or (from the local cache) the fingerprint datasets gives it
        if self.streaming:
            from huggingface_hub import HfApi

            try:
                return "hub:" + HfApi().dataset_info(self.path, revision=self.revision).sha
            except Exception as exc:  # offline, private, misspelt
                raise DataError(f"hf-dataset.path: cannot find the Hub revision of {self.path!r} "
                                f"({type(exc).__name__}); streaming from the Hub needs it to key the token cache")
        parts = [self._load(self.split)._fingerprint]
        if self.val_split is not None:
            parts.append(self._load(self.val_split)._fingerprint)
        return "hub-cache:" + ":".join(parts)

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # hashing large data once per process is enough
            self._fingerprint = _sha("hf-dataset", FORMAT_VERSION, json.dumps(self._settings(), sort_keys=True),
                                     self._data_identity())
        return self._fingerprint

    def _settings(self) -> dict:
        return {"field": self.field, "split": self.split, "val_split": self.val_split,
                "val_fraction": self.val_fraction, "max_rows": self.max_rows, "max_val_rows": self.max_val_rows,
                "config": self.config, "revision": self.revision, "format": self.format}

    def _settings_text(self) -> str:
        val = f"val split {self.val_split!r}" if self.val_split else f"val_fraction={self.val_fraction}"
        return f"{self.path}, split {self.split!r}, field {self.field!r}, {val}, max_rows={self.max_rows}"
