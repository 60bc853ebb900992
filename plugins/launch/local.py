"""`lmzoo run --jobs N`: the runs of a study as child processes on this machine, N at a time, each
with its share of the CPU threads (cores / N) or its own GPUs (CUDA_VISIBLE_DEVICES).

The data is tokenized once in this process (`plan.prepare_once`), before any child starts, so the
children find the token cache built instead of all building it at once. Each child's output goes
to STUDY/logs/<run>.log. On Linux without CUDA devices, a child is a fork of this process after it
has imported torch and Lightning (and run no torch operation): it starts training at once instead
of spending seconds of CPU on the same imports while the other runs train; elsewhere (GPUs, other
platforms, or LMZOO_LAUNCH_NO_FORK=1) it is a fresh `python -m lmzoo.plugins.launch.worker`. Both
run `worker.main`.

Each child runs in a session of its own, so a Ctrl-C at the terminal reaches only this process,
which forwards exactly one SIGINT to every child (a second one would cut a child's graceful stop
short); SIGTERM here does the same. A child whose launcher dies gets SIGTERM (worker.py). On Linux
with autogroup scheduling, a session of its own also makes each child its own scheduling group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lmzoo.rundir import RunError

from .plan import Plan

NO_FORK_ENV = "LMZOO_LAUNCH_NO_FORK"  # set to 1: every child a fresh process, even where forking works


def last_error(log: Path) -> str:
    """The child's own `error: ...` line, else the last line of its log."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln.removeprefix("error: ")
    return lines[-1].strip() if lines else "no output"


def launch_local(plan: Plan) -> list[dict]:
    """Run the plan's runs as `python -m lmzoo.plugins.launch.worker` children, `plan.jobs` at a
    time; return one {"run", "run_dir", "error", "log"} per run."""
    n = len(plan.labels)
    where = f"GPUs {', '.join(plan.slots[:plan.jobs])}" if plan.slots else f"{plan.threads} thread(s) each"
    print(f"launching {n} runs, {plan.jobs} at a time ({where}); logs in {plan.study_dir / 'logs'}",
          file=sys.stderr, flush=True)
    (plan.study_dir / "logs").mkdir(parents=True, exist_ok=True)
    pending = list(range(n))
    free = list(plan.slots)
    running: dict[int, tuple] = {}  # index -> (process, log file, start time, slot)
    results: dict[int, dict] = {}
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    fork = can_fork()
    if fork:  # imported once here, shared by every forked child
        import lightning  # noqa: F401
        import torch  # noqa: F401
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        while pending or running:
            while pending and len(running) < plan.jobs:
                i = pending.pop(0)
                slot = free.pop(0) if plan.slots else None
                env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(plan.threads),
                           MKL_NUM_THREADS=str(plan.threads))
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                elif plan.spec.devices_per_run == 0:
                    env["CUDA_VISIBLE_DEVICES"] = ""
                log = plan.log_path(i).open("w")
                if fork:
                    proc = ForkedWorker(plan.worker_args(i), env, log)
                else:
                    proc = subprocess.Popen([sys.executable, "-m", "lmzoo.plugins.launch.worker",
                                             *plan.worker_args(i)], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                running[i] = (proc, log, time.perf_counter(), slot)
                print(f"[{i + 1}/{n}] start {plan.labels[i]} -> {plan.run_dirs[i]} (pid {proc.pid}"
                      + (f", GPU {slot})" if slot is not None else ")"), file=sys.stderr, flush=True)
            time.sleep(0.2)
            for i, (proc, log, t0, slot) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[i]
                if slot is not None:
                    free.append(slot)
                error = None if proc.returncode == 0 else last_error(plan.log_path(i))
                results[i] = {"run": plan.labels[i], "run_dir": plan.run_dirs[i], "error": error,
                              "log": str(plan.log_path(i))}
                state = "done" if error is None else f"FAILED (exit {proc.returncode}): {error}"
                print(f"[{i + 1}/{n}] {state} {plan.labels[i]} in {time.perf_counter() - t0:.1f}s",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        stop(running)
        done = sum(1 for r in results.values() if r["error"] is None)
        failed = f" ({len(results) - done} failed)" if len(results) > done else ""
        raise RunError(f"interrupted; {done} of {n} runs finished{failed}. Continue with lmzoo run RECIPE --resume "
                       f"--jobs {plan.jobs}") from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return [results[i] for i in range(n)]


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: stop the children as Ctrl-C does


def stop(running: dict) -> None:
    """Ask the children to stop as Ctrl-C does (each ends its step, and `--resume` continues from
    its last checkpoint); kill any still running a minute later."""
    for proc, *_ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    for proc, log, *_ in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def can_fork() -> bool:
    """Fork children where fork is the platform's own way to start processes (Linux) and no CUDA
    device is visible: CUDA does not survive a fork once this process has asked for the devices."""
    import multiprocessing as mp

    from .plan import visible_gpus

    if os.environ.get(NO_FORK_ENV, "") not in ("", "0"):
        return False
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() and not visible_gpus()


class ForkedWorker:
    """A child forked from this process that runs `worker.main(args)`, with the part of
    `subprocess.Popen` the launcher uses (pid, poll, wait, send_signal, kill, returncode)."""

    def __init__(self, args: list[str], env: dict, log):
        import multiprocessing as mp

        self._proc = mp.get_context("fork").Process(target=_forked_main, args=(args, env, log.fileno()),
                                                     daemon=False)
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:  # negative: killed by that signal, as Popen says
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired("lmzoo.plugins.launch.worker", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()


def _forked_main(args: list[str], env: dict, log_fd: int) -> None:
    """In the forked child: a session of its own, output to the run's log, the run's threads and
    devices, the signal handlers a fresh process has, then the worker."""
    os.setsid()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # new streams on the redirected descriptors (the inherited objects may be another program's,
    # e.g. a test runner's capture)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the launcher's handler
    from .worker import main

    sys.exit(main(args))
