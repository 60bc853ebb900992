"""Run directories: the one place that writes and reads them.

A run directory holds `recipe.resolved.yaml`, `manifest.json` (seed, versions, git commit,
data and tokenizer hashes, checkpoint checksums, resumes), `metrics.csv`, `checkpoints/`,
`tokenizer/`, `model.safetensors`, `eval.json` and `summary.json`, plus `.lmzoo-run`, the
marker that says lmzoo made it (nothing without the marker is ever deleted) and `.lock`, the
advisory lock its one writer holds. Every file is written to a temporary name and renamed
into place, so a crash, a full disk or a kill never leaves a half-written file behind.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

MARKER = ".lmzoo-run"
STUDY_MARKER = ".lmzoo-study"
LOCK = ".lock"


class RunError(Exception):
    """A run could not start or finish, or a run directory cannot be used; the message says why
    and what to do."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write a file whole or not at all: a temporary file beside it, fsync, rename. A full disk
    leaves the old file untouched and raises RunError naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunError(f"no space left to write {path}; free some disk space (nothing already written was "
                           "lost) and run again with --resume") from None
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_info() -> dict:
    """Commit and dirty flag of the lmzoo checkout (or the working directory's repository)."""
    for where in (Path(__file__).resolve().parents[1], Path.cwd()):
        try:
            commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10)
            if commit.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()), "repo": str(where)}
        except (OSError, subprocess.SubprocessError):
            continue
    return {"commit": None, "dirty": None, "repo": None}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("lmzoo", "torch", "lightning", "pydantic", "tokenizers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def device_name(accelerator: str = "auto") -> str:
    import torch

    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)"


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def check_removable(path: str | Path, inside: str | Path, marker: str = MARKER) -> Path:
    """`path`, resolved, if lmzoo made it (it holds `marker`) and it lies inside `inside`; else a RunError."""
    path, inside = Path(path).resolve(), Path(inside).resolve()
    if path != inside and inside not in path.parents:
        raise RunError(f"refusing to delete {path}: it is outside the study directory {inside}")
    if not (path / marker).is_file():
        raise RunError(f"refusing to delete {path}: lmzoo did not create it (no {marker} marker); move it away or "
                       "choose another --out")
    return path


def remove_tree(path: str | Path, inside: str | Path, marker: str = MARKER) -> None:
    """Delete a directory lmzoo made that lies inside `inside`; refuse anything else, deleting nothing."""
    shutil.rmtree(check_removable(path, inside, marker))


class RunDir:
    """One run's directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ existence and ownership
    @property
    def exists(self) -> bool:
        return (self.path / MARKER).is_file() or (self.path / "recipe.resolved.yaml").is_file()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / MARKER).exists():
            atomic_write(self.path / MARKER, json.dumps({"created": now()}) + "\n")

    @contextmanager
    def lock(self):
        """Hold the run's advisory lock for the block: a second writer is refused at once with the
        holder's process id; a lock left by a killed process is free (the kernel drops it)."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(f"{self.path} is being written by another lmzoo process (pid {holder}); wait for it to "
                           "finish, stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # ------------------------------------------------------------------ files
    def write_text(self, name: str, text: str) -> Path:
        atomic_write(self.path / name, text)
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, default=str) + "\n")

    def read_json(self, name: str, default=None):
        path = self.path / name
        if not path.is_file():
            return default
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise RunError(f"{path} is unreadable ({exc}); delete it or re-train with --overwrite") from None

    @property
    def manifest(self) -> dict:
        return self.read_json("manifest.json", {})

    def update_manifest(self, **changes) -> dict:
        manifest = {**self.manifest, **changes}
        self.write_json("manifest.json", manifest)
        return manifest

    @property
    def summary(self) -> dict | None:
        return self.read_json("summary.json")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>.ckpt for name in last | best."""
        return self.path / "checkpoints" / f"{name}.ckpt"

    def record_checkpoint(self, path: str | Path) -> None:
        """Put a finished checkpoint's checksum into the manifest (read back by load_checkpoint)."""
        path = Path(path)
        sums = dict(self.manifest.get("checkpoints") or {})
        sums[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "written": now()}
        self.update_manifest(checkpoints=sums)

    def load_checkpoint(self, name_or_path: str | Path) -> dict:
        """A checkpoint's contents, read without running code from it (weights_only) after its
        checksum is checked against the manifest; a clear RunError otherwise."""
        import torch

        path = Path(name_or_path) if str(name_or_path).endswith(".ckpt") else self.checkpoint(str(name_or_path))
        if not path.is_file():
            raise RunError(f"checkpoint {path} is missing; train the run first (lmzoo run) or choose another "
                           "--checkpoint (final, last or best)")
        if path.stat().st_size == 0:
            raise RunError(f"checkpoint {path} is empty; delete it and resume from another, or re-train with "
                           "--overwrite")
        recorded = (self.manifest.get("checkpoints") or {}).get(path.name)
        if recorded and sha256_file(path) != recorded["sha256"]:
            raise RunError(f"checkpoint {path} does not match its checksum in manifest.json (it was changed or "
                           "damaged after it was written); delete it and resume from another, or re-train with "
                           "--overwrite")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle opcode, disallowed global ...
            raise RunError(f"checkpoint {path} is corrupt or not a safe checkpoint ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}); delete it and resume from another, or re-train "
                           "with --overwrite") from None


# ============================================================================ reading a run back

CHECKPOINTS = ("final", "last", "best")


def load_run(run_dir: str | Path, checkpoint: str = "final", plugins=(), trust_plugins: bool = False):
    """(recipe, model, tokenizer) of a finished or interrupted run. `checkpoint`: final
    (model.safetensors, else last.ckpt), last or best. Plugin files named in the run's recorded
    recipe are imported only when passed in `plugins` or with `trust_plugins=True`."""
    import yaml

    from .hooks import get_registry, load_plugin_files
    from .model import build_model
    from .recipe import RecipeError, validate

    if checkpoint not in CHECKPOINTS:
        raise RunError(f"--checkpoint {checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    run = RunDir(run_dir)
    rfile = run / "recipe.resolved.yaml"
    if not rfile.is_file():
        raise RunError(f"{run.path} is not a run directory (no recipe.resolved.yaml)")
    try:
        doc = yaml.safe_load(rfile.read_text())
    except yaml.YAMLError as exc:
        raise RunError(f"{rfile} is not valid YAML ({exc}); it was edited or damaged") from None
    recorded = [str(p) for p in doc.get("plugins") or []]
    load_plugin_files(list(plugins))
    if recorded and trust_plugins:
        load_plugin_files(recorded)
    try:
        recipe = validate(doc, str(rfile))
    except RecipeError as exc:
        hint = (f"; the run used plugin files {', '.join(recorded)}: pass them with --plugin FILE, or "
                "--trust-plugins to import the files the run directory names") if recorded and not trust_plugins else ""
        raise RunError(f"{rfile} no longer validates ({'; '.join(exc.errors)}){hint}") from None
    reg = get_registry()
    tok_spec = recipe.data.tokenizer
    tok_cls = type(reg.create("tokenizer", tok_spec.name, params=tok_spec))
    tok = tok_cls.load(run / "tokenizer")
    vocab = recipe.model.vocab_size or tok.vocab_size
    model = build_model(recipe.model.model_copy(update={"vocab_size": vocab}), eos_id=tok.eos_id)
    st = run / "model.safetensors"
    if checkpoint == "final" and st.is_file():
        from safetensors.torch import load_model

        try:
            load_model(model, str(st))
        except Exception as exc:
            raise RunError(f"{st} is damaged ({type(exc).__name__}: {str(exc)[:200]}); use --checkpoint last") from None
    else:
        name = "best" if checkpoint == "best" else "last"
        state = run.load_checkpoint(name)["state_dict"]
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    return recipe, model.eval(), tok
