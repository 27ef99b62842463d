"""The `simulate` result as JSON, CSV rows, and a rich summary with a per-op time breakdown."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from apex_plan.report.layout import print_table, table
from apex_plan.report.output import SCHEMA_VERSION, flatten
from apex_plan.simulate.run import SimResult


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


_LATENCY_ROWS = (("ttft_ms", "TTFT (ms)", ".1f"), ("tpot_ms", "TPOT (ms)", ".2f"),
                 ("e2e_s", "end-to-end (s)", ".2f"), ("queue_ms", "queueing (ms)", ".1f"))


def latency_table(metrics: dict) -> Table:
    """The client-view latency table (mean and percentiles) of a simulation's metrics; rows whose
    metric the run does not report (a disaggregated run has no single queue) are left out."""
    t = table("Latency (client view)", [(col, "right" if col != "metric" else "left")
                                         for col in ("metric", "mean", "p50", "p90", "p99")])
    for key, label, spec in _LATENCY_ROWS:
        if key in metrics:
            t.add_row(label, *(_fmt(metrics[key][k], spec) for k in ("mean", "p50", "p90", "p99")))
    return t


def step_breakdown(res: SimResult, batch: int, context: int) -> dict:
    """Per-op milliseconds of one representative decode step and one prefill chunk."""
    sc = res.step_cost
    _, dec = sc.step_s(decodes=batch, context=context)
    chunk = min(512, res.engine.max_batched_tokens)
    _, pf = sc.step_s(chunk=chunk)
    keep = ("gemm", "attention", "communication", "elementwise", "embed_lm_head", "engine_host")
    return {"decode_step": {"batch": batch, "context_tokens": context, **{k + "_ms": dec[k] * 1e3 for k in keep}},
            "prefill_chunk": {"tokens": chunk, **{k + "_ms": pf[k] * 1e3 for k in keep}}}


def simulate_json(res: SimResult, inputs: dict) -> dict:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "command": "simulate",
        "inputs": inputs,
        "plan": {"dp": res.plan.dp, "tp": res.plan.tp, "pp": res.plan.pp, "ep": res.plan.ep,
                 "weight_dtype": res.plan.weight_dtype, "kv_dtype": res.plan.kv_dtype,
                 "gpus": res.plan.num_gpus, "label": res.plan.label()},
        "engine": res.engine.as_dict(),
        "feasible": res.feasible,
        "reason": res.reason,
        "exit_status": 0 if res.feasible else 1,
        "memory_per_gpu": res.memory.as_dict(),
    }
    if res.feasible:
        from apex_plan.calibrate.interval import goodput_interval, metric_intervals
        iv = metric_intervals(res.engine.profile, res.metrics)       # from the profile's measured error
        if "slo" in res.metrics:
            from apex_plan.workload.spec import Slo
            s = res.metrics["slo"]
            slo = Slo(s["ttft_ms"] / 1e3 if s["ttft_ms"] else None, s["tpot_ms"] / 1e3 if s["tpot_ms"] else None)
            iv["goodput_requests_per_s"] = goodput_interval(res.engine.profile, res.times, slo, res.makespan_s)
        doc["metrics"] = {**res.metrics, "interval": iv}
        from apex_plan.calibrate.interval import uncalibrated_components
        doc["uncalibrated"] = uncalibrated_components(res.plan, res.step_cost.gpu, inputs.get("gpus_per_node", 8),
                                                     res.engine.profile)
        ctx = int(max(1, res.times.prompt_tokens.mean() + res.times.output_tokens.mean() / 2))
        doc["step_breakdown"] = step_breakdown(res, 8, ctx)
    return doc


def simulate_rows(res: SimResult, inputs: dict) -> list[dict]:
    doc = simulate_json(res, inputs)
    doc.pop("step_breakdown", None)
    return [flatten(doc)]


def _prefix_lines(m: dict, console: Console) -> None:
    """Prefix caching (hit rate, saved prefill, TTFT with / without) and speculative decoding lines."""
    pc = m.get("prefix_cache") or {}
    if pc.get("prefix_block_tokens"):
        line = (f"prefix cache {'on' if pc['enabled'] else 'off'}: hit rate {pc['hit_rate']:.1%} (an infinite cache: "
                f"{pc['infinite_cache_hit_rate']:.1%}), {pc['saved_prefill_tokens']:,} prefill tokens saved, "
                f"{pc['evicted_blocks']:,} KV blocks evicted")
        if "ttft_ms_with_caching" in pc:
            w, wo = pc["ttft_ms_with_caching"], pc["ttft_ms_without_caching"]
            line += (f"; TTFT p50 / p90 {_fmt(w['p50'])} / {_fmt(w['p90'])} ms with caching, {_fmt(wo['p50'])} / "
                     f"{_fmt(wo['p90'])} ms without")
            if "goodput_with_caching_rps" in pc:
                line += (f"; goodput {pc['goodput_with_caching_rps']:.2f} vs {pc['goodput_without_caching_rps']:.2f} "
                         "req/s")
        console.print(escape(line))
    sp = m.get("speculative")
    if sp:
        console.print(escape(f"speculative {sp['method']}:{sp['draft_tokens']}: {sp['tokens_per_step']:.2f} tokens per "
                             f"step expected ({sp['acceptance_source']}), {_fmt(sp['measured_tokens_per_step'], '.2f')} "
                             f"measured over {sp['verify_steps']:,} verifications"))


def simulate_table(res: SimResult, console: Console) -> None:
    p = res.plan
    console.print(f"[bold]{p.label()}[/bold] on {p.num_gpus} GPUs   engine: {res.engine.profile.label}, chunked prefill "
                  f"{'on' if res.engine.chunked_prefill else 'off'}, budget {res.engine.max_batched_tokens} tokens, "
                  f"max_num_seqs {res.engine.max_num_seqs}, max_model_len {res.engine.max_model_len}")
    if res.engine.profile.version_note:
        console.print(escape(f"engine version: {res.engine.profile.version_note}"))
    for note in res.engine.notes:
        console.print(escape(f"fitted to memory: {note}"))
    mem = res.memory.as_dict()
    console.print(f"memory per GPU: weights {mem['weights_gib']:.1f} GiB, activations {mem['activation_gib']:.2f} GiB, "
                  f"KV pool {mem['kv_pool_gib']:.1f} GiB = {mem['kv_cache_tokens']:,} tokens per replica")
    if not res.feasible:
        console.print(f"[red]infeasible:[/red] {res.reason}")
        return
    m = res.metrics
    print_table(console, latency_table(m))
    th = m["throughput"]
    console.print(f"throughput: {th['output_tokens_per_s']:.0f} output tok/s, {th['total_tokens_per_s']:.0f} total tok/s, "
                  f"{th['requests_per_s']:.2f} req/s over {m['makespan_s']:.0f} s; {m['completed']}/{m['requests']} "
                  f"requests completed; {m['steps']:,} steps")
    kv = m["kv_cache"]
    console.print(f"KV cache: mean {kv['mean_utilization']:.0%}, peak {kv['peak_utilization']:.0%}, "
                  f"{kv['preemptions']} preemptions")
    _prefix_lines(m, console)
    e = m["energy"]
    console.print(f"energy: {e['total_j'] / 3.6e6:.3f} kWh, {_fmt(e['j_per_output_token'], '.2f')} J per output token, "
                  f"mean {e['mean_power_w']:.0f} W")
    if "slo" in m:
        s = m["slo"]
        ok = "[green]met[/green]" if s["met"] else "[red]missed[/red]"
        console.print(f"SLO p{s['percentile']:g}: TTFT {s['ttft_at_percentile_ms']:.1f} ms (limit {_fmt(s['ttft_ms'])}), "
                      f"TPOT {s['tpot_at_percentile_ms']:.2f} ms (limit {_fmt(s['tpot_ms'], '.2f')}): {ok}; "
                      f"attainment {s['attainment']:.1%}, goodput {s['goodput_requests_per_s']:.2f} req/s")
    ctx = int(max(1, res.times.prompt_tokens.mean() + res.times.output_tokens.mean() / 2))
    bd = step_breakdown(res, 8, ctx)
    bt = table(f"Step time breakdown (ms): decode of 8 seqs at {ctx} tokens; one {bd['prefill_chunk']['tokens']}-token "
               "prefill chunk", [("op", "left"), ("decode step", "right"), ("prefill chunk", "right")])
    for k in ("gemm", "attention", "communication", "elementwise", "embed_lm_head", "engine_host"):
        bt.add_row(k.replace("_", " "), f"{bd['decode_step'][k + '_ms']:.2f}", f"{bd['prefill_chunk'][k + '_ms']:.2f}")
    print_table(console, bt)
