"""The `lmzoo tokenizer` commands: train, encode, show. Imports only typer at load time (the
`lmzoo` CLI builds this sub-app on every start); each command imports what it needs."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional


def tokenizer_app():
    """The `lmzoo tokenizer` sub-app: train, encode, show."""
    import typer

    app = typer.Typer(help="Train, apply and inspect tokenizers.\n\n\b\nExample:\n"
                           "  lmzoo tokenizer train bpe --input corpus.txt --vocab-size 2000 --out tok/\n"
                           "  lmzoo tokenizer show tok/ \"Hello world\"",
                      no_args_is_help=True)

    @app.command("train")
    def train_cmd(
        kind: str = typer.Argument(..., help="tokenizer kind: bpe, hf-bpe, hf-unigram or byte"),
        inputs: List[Path] = typer.Option(..., "--input", "-i", help="training text file (repeat for several)"),
        out: Path = typer.Option(..., "--out", "-o", help="directory to save the tokenizer in"),
        vocab_size: Optional[int] = typer.Option(None, "--vocab-size", "-v", help="vocabulary size (trainable kinds)"),
        special: Optional[List[str]] = typer.Option(None, "--special", "-s",
                                                    help="special token (repeat; default <|endoftext|>; the first is eos)"),
        min_frequency: Optional[int] = typer.Option(None, "--min-frequency", help="minimum pair count (BPE kinds)"),
    ):
        """Train a tokenizer on text files and save it to a directory.

        The directory records the kind, so `encode` and `show` load any kind.

        \b
        Example:
          lmzoo tokenizer train bpe --input corpus.txt --vocab-size 2000 --out tok/
          lmzoo tokenizer train hf-unigram -i a.txt -i b.txt -v 4000 --special '<|endoftext|>' --out tok_uni/
        """
        import time

        from lmzoo.hooks import get_registry
        from lmzoo.registry import RegistryError

        for p in inputs:
            if not p.is_file():
                typer.echo(f"error: --input {p}: no such file", err=True)
                raise typer.Exit(2)
        reg = get_registry()
        try:
            entry = reg.get("tokenizer", kind)
        except RegistryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        given = {"vocab_size": vocab_size, "special_tokens": special or None, "min_frequency": min_frequency}
        params = {}
        for k, v in given.items():
            if v is None:
                continue
            if k not in entry.params.model_fields:
                flag = "--" + k.replace("_", "-").replace("special-tokens", "special")
                typer.echo(f"error: {flag} does not apply to tokenizer {kind!r} "
                           f"(its parameters: {', '.join(entry.params.model_fields) or 'none'})", err=True)
                raise typer.Exit(2)
            params[k] = v
        try:
            tok = reg.create("tokenizer", kind, **params)
        except RegistryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        t0 = time.perf_counter()
        if getattr(tok, "needs_training", False):
            tok.train_files(inputs)
        tok.save(out)
        typer.echo(f"trained {kind} (vocab {tok.vocab_size}) on {len(inputs)} file(s) in "
                   f"{time.perf_counter() - t0:.2f}s; saved to {out}")

    @app.command("encode")
    def encode_cmd(
        directory: Path = typer.Argument(..., help="a saved tokenizer directory"),
        file: Path = typer.Argument(..., help="text file to encode"),
        out: Path = typer.Option(..., "--out", "-o", help="output .npy file (uint16 when the vocabulary fits, else uint32)"),
    ):
        """Encode a text file (streamed) into a compact integer array saved with numpy.

        \b
        Example:
          lmzoo tokenizer encode tok/ corpus.txt --out corpus.npy
          python -c "import numpy; print(numpy.load('corpus.npy')[:20])"
        """
        import array

        import numpy as np

        tok = _load_or_exit(directory)
        if not file.is_file():
            typer.echo(f"error: {file}: no such file", err=True)
            raise typer.Exit(2)
        small = tok.vocab_size <= 1 << 16
        ids = array.array("H" if small else "I")
        n_bytes = file.stat().st_size
        with open(file, encoding="utf-8", newline="") as f:
            ids.extend(tok.encode_iterable(f))
        arr = np.frombuffer(ids, dtype=np.uint16 if small else np.uint32) if len(ids) else \
            np.zeros(0, dtype=np.uint16 if small else np.uint32)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, arr)
        bpt = n_bytes / len(ids) if len(ids) else float("nan")
        typer.echo(f"{len(ids)} tokens ({arr.dtype}) from {n_bytes} bytes ({bpt:.3f} bytes/token) -> {out}")

    @app.command("show")
    def show_cmd(
        directory: Path = typer.Argument(..., help="a saved tokenizer directory"),
        text: str = typer.Argument(..., help="text to split into pieces"),
        ids: bool = typer.Option(False, "--ids", help="also print each piece's id"),
    ):
        """Print the pieces a tokenizer splits TEXT into, separated by '|'.

        \b
        Example:
          lmzoo tokenizer show tok/ "The lowest newest widest"
          # prints e.g.  T|he| l|ow|est| new|est| w|id|est
          #              (10 tokens, 2.40 bytes/token)
          lmzoo tokenizer show tok/ --ids "Hi 🙂"     # id:'piece' pairs
        """
        from lmzoo.plugins.tokenizers.base import pieces

        tok = _load_or_exit(directory)
        ps = pieces(tok, text)
        if ids:
            typer.echo(" ".join(f"{i}:{p!r}" for i, p in ps))
        else:
            typer.echo("|".join(p for _, p in ps))
        n = len(ps)
        bpt = f", {len(text.encode('utf-8')) / n:.2f} bytes/token" if n else ""
        typer.echo(f"({n} tokens{bpt})")

    def _load_or_exit(directory: Path):
        from lmzoo.plugins.tokenizers.base import load_tokenizer

        try:
            return load_tokenizer(directory)
        except Exception as exc:
            typer.echo(f"error: cannot load tokenizer from {directory}: {exc}", err=True)
            raise typer.Exit(2)

    return app
