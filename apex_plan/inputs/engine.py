"""Engine options: --engine NAME[@VERSION] and its settings, and search's lists of settings to sweep."""

from __future__ import annotations

import dataclasses

from apex_plan.errors import InputError
from apex_plan.inputs.lists import csv_list, int_list
from apex_plan.limits import MAX_BATCHED_TOKENS, MAX_NUM_SEQS
from apex_plan.model.spec import ModelSpec
from apex_plan.plan.spec import EngineConfig


def speculative_option(speculative: str | None, acceptance: str | None):
    """--speculative mtp:K|eagle3:K and --speculative-acceptance as a Speculative spec (or None)."""
    from apex_plan.engine.speculative import parse_speculative
    return parse_speculative(speculative, acceptance)



def engine_from_options(settings: EngineConfig) -> EngineConfig:
    """`settings` (the options given; None: the profile's) with `--engine NAME[@VERSION]` (its
    `name`) resolved to its profile and the routing spelled as the simulator names it."""
    from apex_plan.engine.load import resolve_engine_profile
    profile = resolve_engine_profile(settings.name)
    if settings.activation_scales not in (None, "dynamic", "static"):
        raise InputError("--activation-scales", None, f"unknown value '{settings.activation_scales}'",
                         "use dynamic or static")
    return dataclasses.replace(settings, routing=settings.routing.replace("-", "_"), profile=profile)


def check_engine_gpu(cfg: EngineConfig, gpu, option: str = "--engine") -> None:
    """An engine whose builds do not run on the cluster's GPU vendor (features.gpu_vendors), as one InputError."""
    vendors = cfg.profile.features.gpu_vendors if cfg.profile is not None else ()
    if vendors and gpu.vendor.lower() not in vendors:
        names = {"nvidia": "NVIDIA", "amd": "AMD"}
        raise InputError(option, None, f"{cfg.profile.family} runs on {' / '.join(names[v] for v in vendors)} GPUs "
                         f"only; {gpu.name} is {names.get(gpu.vendor.lower(), gpu.vendor)}",
                         "use --engine vllm or --engine sglang, which build for ROCm")


def check_engine(cfg: EngineConfig, model: ModelSpec) -> None:
    """Engine settings vLLM itself would refuse for this model, as one InputError."""
    from apex_plan.simulate.engine import resolve_engine
    eng = resolve_engine(cfg, model)
    if eng.max_batched_tokens < eng.max_num_seqs:   # vLLM SchedulerConfig._verify_args refuses this
        raise InputError("--max-batched-tokens", None,
                         f"{eng.max_batched_tokens} is below --max-num-seqs {eng.max_num_seqs}",
                         f"raise it to at least {eng.max_num_seqs} or lower --max-num-seqs")



_CHUNKED = {"auto": None, "on": True, "off": False, "true": True, "false": False}



def chunked_prefill_modes(text: str, sweep: bool) -> list[bool | None]:
    """--chunked-prefill: auto | on | off (None/True/False); a search sweep also takes lists and 'both'."""
    words = csv_list(text.lower(), "--chunked-prefill")
    if sweep:
        words = [w for word in words for w in (("on", "off") if word == "both" else (word,))]
    if len(words) > 1 and not sweep:
        raise InputError("--chunked-prefill", None, f"one value only in simulate, got '{text}'", "use auto, on or off")
    out: list[bool | None] = []
    for w in words:
        if w not in _CHUNKED:
            raise InputError("--chunked-prefill", None, f"unknown value '{w}'",
                             "use auto, on or off" + (" (or a list, or both)" if sweep else ""))
        if _CHUNKED[w] not in out:
            out.append(_CHUNKED[w])
    return out



def prefix_caching_modes(text: str | None) -> list[bool | None]:
    """search --prefix-caching: auto | on | off | both (or a list): None (the profile's default), True, False."""
    if text is None:
        return [None]
    words = [w for word in csv_list(text.lower(), "--prefix-caching")
             for w in (("on", "off") if word == "both" else (word,))]
    out: list[bool | None] = []
    for w in words:
        if w not in _CHUNKED:
            raise InputError("--prefix-caching", None, f"unknown value '{w}'", "use auto, on, off or both")
        if _CHUNKED[w] not in out:
            out.append(_CHUNKED[w])
    return out



def prefix_caching_mode(text: str) -> bool | None:
    """simulate --prefix-caching auto | on | off."""
    modes = prefix_caching_modes(text)
    if len(modes) > 1:
        raise InputError("--prefix-caching", None, f"one value only in simulate, got '{text}'", "use auto, on or off")
    return modes[0]



def speculative_list(text: str | None, acceptance: str | None) -> list:
    """search --speculative none,mtp:1,mtp:3 (each with --speculative-acceptance) -> [None, Speculative, ...]."""
    from apex_plan.engine.speculative import parse_speculative
    if text is None:
        if acceptance is not None:
            raise InputError("--speculative-acceptance", None, "given without --speculative", "add e.g. --speculative mtp:1")
        return [None]
    out = []
    for word in csv_list(text, "--speculative"):
        spec = parse_speculative(word, acceptance if word.lower() not in ("none", "off") else None)
        if spec not in out:
            out.append(spec)
    return out



def _setting_label(cfg: EngineConfig) -> str:
    budget = cfg.max_batched_tokens if cfg.max_batched_tokens is not None else "default"
    if cfg.max_num_seqs is None and cfg.profile is not None:
        cfg = dataclasses.replace(cfg, max_num_seqs=cfg.profile.scheduler.max_num_seqs)
    chunk = {None: "auto", True: "on", False: "off"}[cfg.chunked_prefill]
    extra = "" if cfg.prefix_caching is None else f" prefix_caching={'on' if cfg.prefix_caching else 'off'}"
    extra += "" if cfg.speculative is None else f" speculative={cfg.speculative.label}"
    return f"max_num_seqs={cfg.max_num_seqs} max_batched_tokens={budget} chunked_prefill={chunk}" + extra



def engine_sweep(base: EngineConfig, model: ModelSpec, max_num_seqs: str, max_batched_tokens: str | None,
                 chunked_prefill: str, prefix_caching: str | None = None, speculative: str | None = None,
                 acceptance: str | None = None) -> tuple[tuple[EngineConfig, ...], list[tuple[str, str]]]:
    """Every combination of search's engine lists; combinations vLLM would refuse (or the engine or
    model cannot run, as a speculative method) are skipped and returned as (setting, reason). All of
    them refused is an InputError with the first reason."""
    import dataclasses
    import itertools
    seqs = int_list(max_num_seqs, "--max-num-seqs", MAX_NUM_SEQS)
    budgets = int_list(max_batched_tokens, "--max-batched-tokens", MAX_BATCHED_TOKENS)
    modes = chunked_prefill_modes(chunked_prefill, sweep=True)
    caching = prefix_caching_modes(prefix_caching)
    specs = speculative_list(speculative, acceptance)
    kept: list[EngineConfig] = []
    rejected: list[tuple[str, str]] = []
    first: InputError | None = None
    for s, b, c, pc, sp in itertools.product(seqs, budgets, modes, caching, specs):
        cfg = dataclasses.replace(base, max_num_seqs=s, max_batched_tokens=b, chunked_prefill=c,
                                  prefix_caching=pc, speculative=sp)
        try:
            check_engine(cfg, model)
        except InputError as e:
            first = first or e
            rejected.append((_setting_label(cfg), e.render()))
            continue
        kept.append(cfg)
    if not kept:
        assert first is not None
        if len(rejected) == 1:
            raise first
        raise InputError(first.where, first.field, f"all {len(rejected)} engine settings are invalid; first: "
                         f"{first.problem}", first.fix)
    return tuple(kept), rejected
