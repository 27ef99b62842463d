"""`apex-plan check`: recognise a file's kind and validate it with the matching loader."""

from __future__ import annotations

from pathlib import Path

import yaml

from apex_plan.errors import InputError
from apex_plan.yamlio import load_yaml


def _run_file(path: Path, suffix: str) -> str | None:
    """A measured-run file (bench JSON, silicon or trace-replay CSV) read as calibrate/validate read it,
    or None when the file is not one."""
    try:
        head = path.open(encoding="utf-8", errors="replace").read(4096)
    except OSError:
        return None
    if suffix == ".csv" and ("silicon_ttft_ms" in head.split("\n", 1)[0] or "ttft_mean_s" in head.split("\n", 1)[0]):
        from apex_plan.calibrate.runs import read_runs
        cases, skipped = read_runs(path)
        return f"measured runs, {len(cases)} to simulate, {len(skipped)} skipped (disaggregated)"
    if suffix in (".json", ".jsonl") and ("mean_ttft_ms" in head or "time_to_first_token" in head):
        from apex_plan.calibrate.formats import read_summaries
        runs = read_summaries(path)
        return f"measured run file ({runs[0].fmt}), {len(runs)} run(s)"
    return None


def check_file(path: Path) -> str:
    """Validate one file; return a one-line summary, or raise InputError naming file and field."""
    from apex_plan.hardware.load import load_cluster, load_gpu
    from apex_plan.model.load import load_model
    from apex_plan.workload.trace import read_trace
    if not path.is_file():
        raise InputError(str(path), None, "file not found", "check the path")
    suffix = path.suffix.lower()
    run = _run_file(path, suffix)
    if run is not None:
        return run
    if suffix in (".jsonl", ".csv"):
        tr = read_trace(path)
        return (f"trace, {len(tr)} requests over {tr.duration_s:.0f} s, {int(tr.prompt_tokens.sum()):,} prompt and "
                f"{int(tr.output_tokens.sum()):,} output tokens")
    if suffix == ".json":
        m = load_model(str(path))
        return f"model {m.name} ({m.architecture}, {m.num_layers} layers)"
    if suffix in (".yaml", ".yml"):
        try:
            doc = load_yaml(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(str(path), None, "not UTF-8 text", "save the file as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise InputError(str(path), None, f"malformed YAML{at}", "fix the YAML syntax") from None
        if not isinstance(doc, dict):
            raise InputError(str(path), None, "expected a mapping of fields", "see models/ or hardware_profiles/ for examples")
        if "peak_tflops" in doc or "mem_bw_gbps" in doc:
            g = load_gpu(str(path))
            return f"GPU profile {g.name} ({g.memory_bytes / 2**30:.0f} GiB, {g.mem_bw_gbps:g} GB/s)"
        if "groups" in doc:
            from apex_plan.hardware.fleet import load_fleet
            f = load_fleet(path)
            return f"fleet {f.name}: " + " + ".join(
                f"{g.name} {g.cluster.num_nodes} x {g.cluster.gpus_per_node} {g.cluster.gpu.name}" for g in f.groups)
        if "prices" in doc and not any(k in doc for k in ("base", "grid", "scenarios")):   # else a sweep file
            from apex_plan.hardware.fleet import load_prices
            return f"price file: {len(load_prices(path))} GPU prices (USD per GPU-hour)"
        if "gpus_per_node" in doc or "nodes" in doc:
            c = load_cluster(path)
            return f"cluster {c.name}: {c.num_nodes} x {c.gpus_per_node} {c.gpu.name}"
        if "num_hidden_layers" in doc or "architectures" in doc:
            m = load_model(str(path))
            return f"model {m.name} ({m.architecture}, {m.num_layers} layers)"
        if "family" in doc and ("min_version" in doc or "scheduler" in doc):
            from apex_plan.engine.load import load_engine_file
            e = load_engine_file(path)
            return f"engine profile {e.name} ({e.family} [{e.min_version}, {e.max_version}))"
        if any(k in doc for k in ("base", "grid", "scenarios")):
            from apex_plan.sweep.scenarios import load_scenarios
            scs, _ = load_scenarios(path)
            return f"sweep file, {len(scs)} scenarios"
        raise InputError(str(path), None, "not a model, GPU profile, cluster, engine profile or sweep file",
                         "a model has num_hidden_layers, a GPU profile peak_tflops, a cluster gpus_per_node, "
                         "an engine profile family, a sweep base/grid/scenarios")
    raise InputError(str(path), None, f"unknown file type '{suffix}'", "use .yaml, .json, .jsonl or .csv")
