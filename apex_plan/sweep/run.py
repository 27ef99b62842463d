"""Run a sweep: each scenario is a `SearchRequest` run by `run_search_request` in a worker (a local
process pool or Ray tasks), its result the `search --format json` document; each result is appended
as one JSON line the moment it arrives, so a killed sweep restarts where it stopped."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from apex_plan.errors import InputError
from apex_plan.report.output import SCHEMA_VERSION, _clean
from apex_plan.sweep.scenarios import Scenario

EXECUTORS = ("local", "ray")


def _watch_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """In a worker: exit as soon as the sweep process that started it is gone (killed with -9 or
    SIGTERM), instead of finishing a search nobody will read."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def run_one(request: dict) -> dict:
    """In a worker: the search of one scenario (SearchRequest field -> value), in this process.
    Returns {"ok": True, "doc": the `search --format json` document} or {"ok": False, "kind":
    "input" | "error", "error": one line}."""
    from apex_plan.report.search_view import search_json
    from apex_plan.requests.search import SearchRequest, run_search_request
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            out = run_search_request(SearchRequest.from_mapping(request))
            return {"ok": True, "doc": _clean(search_json(out.result, out.inputs, out.show_all))}
    except InputError as e:
        return {"ok": False, "kind": "input", "error": str(e)}
    except Exception as e:                            # a bug in one scenario must not stop the others
        return {"ok": False, "kind": "error", "error": f"{type(e).__name__}: {e}".replace("\n", " ")}


def result_line(sc: Scenario, r: dict) -> dict:
    """The JSON line of one scenario: the search document with `inputs.scenario`, or the error."""
    meta = {"id": sc.id, "name": sc.name, "options": sc.options}
    if r.get("ok"):
        doc = r["doc"]
        doc["inputs"]["scenario"] = meta
        return doc
    return {"schema_version": SCHEMA_VERSION, "command": "search", "inputs": {"scenario": meta},
            "error": r["error"], "error_kind": r.get("kind", "error")}


def read_results(path: Path) -> dict[str, dict]:
    """Scenario id -> its last line in `path`; a line cut short by a kill is dropped from the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    out = {}
    for raw in data.splitlines():
        try:
            doc = json.loads(raw)
            out[doc["inputs"]["scenario"]["id"]] = doc
        except (ValueError, KeyError, TypeError):
            continue
    return out


def finished(doc: dict, retry_failed: bool) -> bool:
    """A scenario is done unless it failed and we retry failures (a crashed worker is always retried)."""
    if "error" not in doc:
        return True
    return not retry_failed and doc.get("error_kind") != "crash"


# ------------------------------------------------------------------------------------------------
def _local(todo: list[Scenario], jobs: int, done: Callable[[Scenario, dict], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    # fresh interpreters (spawn), as Ray workers are: no state is inherited from the parent
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_watch_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run_one, sc.request): sc for sc in todo}
        try:
            for f in as_completed(futures):
                try:
                    r = f.result()
                except Exception as e:                # the worker process died
                    r = {"ok": False, "kind": "crash", "error": f"worker failed: {type(e).__name__}: {e}"}
                done(futures[f], r)
        except KeyboardInterrupt:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()              # running searches too: leave no worker behind
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray(todo: list[Scenario], jobs: int, address: str | None, done: Callable[[Scenario, dict], None]) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("--executor", None, "ray is not installed",
                         "pip install 'apex-plan[ray]', or use --executor local") from None
    started = not ray.is_initialized()
    if started:
        kw = {"address": address} if address else {"num_cpus": jobs}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
        except ConnectionError as e:
            raise InputError("--ray-address", None, f"cannot connect to '{address}': {e}",
                             "give the address of a running Ray cluster (ray start --head), or leave it out") from None
    task = ray.remote(num_cpus=1, max_retries=1)(run_one)
    pending = {task.remote(sc.request): sc for sc in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                sc = pending.pop(ref)
                try:
                    r = ray.get(ref)
                except Exception as e:                # the task or its worker died
                    r = {"ok": False, "kind": "crash", "error": f"ray task failed: {type(e).__name__}: {e}"}
                done(sc, r)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


class _Progress:
    """A rich progress bar with ETA on a terminal; otherwise one line per scenario with the ETA."""

    def __init__(self, total: int, skipped: int):
        from rich.console import Console
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self.console = Console(stderr=True)
        self.bar = None
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                console=self.console)
            self.task = self.bar.add_task("", total=total)
        if skipped:
            self.console.print(f"sweep: {skipped} scenario(s) already done, skipped; {total} to run")

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def step(self, sc: Scenario, line: dict) -> None:
        self.n += 1
        status = "failed" if "error" in line else "ok"
        why = f": {line['error']}" if "error" in line else ""       # the reason, on one line
        if self.bar:
            self.bar.update(self.task, advance=1, description=f"{sc.name}: {status}")
            if why:
                self.console.print(f"[{self.n}/{self.total}] {sc.name}: failed{why}", markup=False,
                                   highlight=False, soft_wrap=True)
            return
        el = time.perf_counter() - self.t0
        eta = el / self.n * (self.total - self.n)
        print(f"[{self.n}/{self.total}] {sc.name}: {status}{why}  elapsed {el:.1f} s, ETA {eta:.1f} s",
              file=sys.stderr, flush=True)


def run_sweep(scenarios: list[Scenario], output: Path, executor: str = "local", jobs: int | None = None,
              ray_address: str | None = None, retry_failed: bool = False) -> tuple[dict[str, dict], float]:
    """Run every scenario not already finished in `output`; returns id -> line for all scenarios and
    the wall time of this run in seconds."""
    if executor not in EXECUTORS:
        raise InputError("--executor", None, f"unknown executor '{executor}'", "use local or ray")
    if jobs is not None and jobs < 1:
        raise InputError("--jobs", None, "must be at least 1", "e.g. --jobs 4")
    jobs = jobs or len(os.sched_getaffinity(0))
    try:
        lines = read_results(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        fh = open(output, "a", encoding="utf-8")
    except OSError as e:
        raise InputError(str(output), None, f"cannot write: {e.strerror}", "choose a writable --output path") from None
    todo = [sc for sc in scenarios if not (sc.id in lines and finished(lines[sc.id], retry_failed))]
    t0 = time.perf_counter()
    import signal
    import threading
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.getsignal(signal.SIGTERM) if main_thread else None

    def on_term(signum, frame):                # noqa: ARG001 -- SIGTERM ends the sweep as Ctrl-C does
        raise KeyboardInterrupt
    if main_thread:
        signal.signal(signal.SIGTERM, on_term)
    try:
        _run_todo(todo, scenarios, lines, fh, executor, jobs, ray_address)
    except KeyboardInterrupt:
        n_done = sum(1 for sc in scenarios if sc.id in lines)
        print(f"apex-plan: sweep interrupted: {n_done} of {len(scenarios)} scenarios have results in {output}; "
              "workers stopped (run the same command again to resume)", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
    return lines, time.perf_counter() - t0


def _run_todo(todo: list[Scenario], scenarios: list[Scenario], lines: dict, fh, executor: str, jobs: int,
              ray_address: str | None) -> None:
    """Run `todo`, appending each result to `fh` as it arrives and recording it in `lines`."""
    with fh, _Progress(len(todo), len(scenarios) - len(todo)) as prog:
        def done(sc: Scenario, r: dict) -> None:
            text = json.dumps(_clean(result_line(sc, r)), separators=(",", ":"))
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())          # a kill right after loses nothing that was reported
            lines[sc.id] = json.loads(text)
            prog.step(sc, lines[sc.id])
        if todo:
            if executor == "local":
                _local(todo, min(jobs, len(todo)), done)
            else:
                _ray(todo, jobs, ray_address, done)
