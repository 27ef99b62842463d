"""Engine settings per plan: the label of a settings variant (max_model_len is fitted to the KV cache by
`apex_plan.simulate.fit.fit_engine`, the rule `simulate` uses too)."""

from __future__ import annotations

from apex_plan.plan.spec import EngineConfig


def engine_label(cfg: EngineConfig, base: EngineConfig) -> str:
    parts = []
    if cfg.max_num_seqs != base.max_num_seqs:
        parts.append(f"seqs{cfg.max_num_seqs}")
    if cfg.max_batched_tokens:
        parts.append(f"budget{cfg.max_batched_tokens}")
    if cfg.chunked_prefill is not None:
        parts.append("chunked" if cfg.chunked_prefill else "nochunk")
    if cfg.prefix_caching is not None:
        parts.append("cache" if cfg.prefix_caching else "nocache")
    if cfg.speculative is not None:
        parts.append(cfg.speculative.label)
    return ("+" + ",".join(parts)) if parts else ""
