"""Speculative decoding settings: method, draft length, acceptance, and which engines and models run it.

`--speculative mtp:K | eagle3:K` drafts K tokens per decoding sequence per step and verifies them
in one target forward over K + 1 tokens; the accepted drafts plus the target's own next token are
emitted. Acceptance (`--speculative-acceptance`):

* one number a: each draft is accepted with probability a once the drafts before it were
  (the conditional rate of the EAGLE and DeepSeek-V3 papers), so a step emits
  1 + a + a^2 + ... + a^K tokens on average;
* a list p_1, ..., p_K: the per-position acceptance rates vLLM reports (spec_decode metrics:
  the share of steps whose i-th draft was accepted, non-increasing); the conditional rate of
  position i is p_i / p_(i-1), and a step emits 1 + p_1 + ... + p_K tokens on average.

Documented default, with its source (used only where it applies; otherwise the rate is required):
mtp:1 -> 0.85, the low end of DeepSeek-V3's measured second-token acceptance of 85-90 %
(DeepSeek-V3 technical report, arXiv 2412.19437, section 5.4.3).

Drafts: MTP runs the checkpoint's own multi-token-prediction module (a transformer block of the
target's shape plus the shared LM head: DeepSeek-V3 num_nextn_predict_layers), once per draft
token; EAGLE-3 runs a separate one-layer decoder of the target's width (EAGLE-3, arXiv 2503.01840),
once per draft token. Both write KV for the draft tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apex_plan.errors import InputError

METHODS = ("mtp", "eagle3")
MAX_DRAFT_TOKENS = 16
MTP1_DEFAULT_ACCEPTANCE = 0.85   # DeepSeek-V3 report sec. 5.4.3: 2nd-token acceptance 85-90 %, low end
MTP1_DEFAULT_SOURCE = "default: DeepSeek-V3 technical report (arXiv 2412.19437) sec. 5.4.3, 85-90 % second-token acceptance"


@dataclass(frozen=True)
class Speculative:
    """K draft tokens per step of `method`; `conditional[i]`: the chance draft i + 1 is accepted
    given drafts 1..i were."""

    method: str
    draft_tokens: int
    conditional: tuple[float, ...]
    source: str = "given"

    @property
    def position_rates(self) -> tuple[float, ...]:
        """Unconditional per-position acceptance (vLLM's per-position rates)."""
        out, p = [], 1.0
        for a in self.conditional:
            p *= a
            out.append(p)
        return tuple(out)

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens a sequence emits per verification step: the target's token plus the accepted drafts."""
        return 1.0 + sum(self.position_rates)

    @property
    def label(self) -> str:
        return f"{self.method}:{self.draft_tokens}"

    def as_dict(self) -> dict:
        return {"method": self.method, "draft_tokens": self.draft_tokens, "acceptance": list(self.conditional),
                "position_acceptance": list(self.position_rates), "tokens_per_step": self.tokens_per_step,
                "acceptance_source": self.source}


def _acceptance(text: str, k: int) -> tuple[tuple[float, ...], str]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError("--speculative-acceptance", None, f"cannot read '{text}'",
                         "give a rate such as 0.8, or one rate per draft position such as 0.9,0.7,0.5") from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise InputError("--speculative-acceptance", None, f"'{text}': rates must lie in [0, 1]", "e.g. 0.8")
    if len(values) == 1:
        return tuple(values * k), "given (per-draft conditional rate)"
    if len(values) != k:
        raise InputError("--speculative-acceptance", None, f"{len(values)} per-position rates for {k} draft tokens",
                         f"give one rate, or {k} comma-separated rates")
    if any(b > a for a, b in zip(values, values[1:])):
        raise InputError("--speculative-acceptance", None, f"'{text}': per-position rates must not increase",
                         "give vLLM's per-position acceptance rates (each <= the one before)")
    cond = [values[0]] + [b / a if a > 0 else 0.0 for a, b in zip(values, values[1:])]
    return tuple(cond), "given (per-position rates)"


def parse_speculative(text: str | None, acceptance: str | None) -> Speculative | None:
    """'mtp:3' / 'eagle3:4' (or None / 'none' / 'off') and the acceptance text -> Speculative."""
    if text is None or text.strip().lower() in ("none", "off"):
        if acceptance is not None:
            raise InputError("--speculative-acceptance", None, "given without --speculative", "add e.g. --speculative mtp:1")
        return None
    m = re.fullmatch(r"\s*([a-z0-9_]+)\s*:\s*(\d{1,3})\s*", text.lower())
    if not m or m.group(1) not in METHODS:
        raise InputError("--speculative", None, f"cannot read '{text}'", "write mtp:1, mtp:3 or eagle3:N (N draft tokens)")
    k = int(m.group(2))
    if not 1 <= k <= MAX_DRAFT_TOKENS:
        raise InputError("--speculative", None, f"{k} draft tokens", f"use 1 to {MAX_DRAFT_TOKENS}")
    method = m.group(1)
    if acceptance is None:
        if method == "mtp" and k == 1:
            return Speculative(method, 1, (MTP1_DEFAULT_ACCEPTANCE,), MTP1_DEFAULT_SOURCE)
        raise InputError("--speculative-acceptance", None, f"no documented acceptance rate for {method}:{k}",
                         "give the rate you measured, e.g. --speculative-acceptance 0.7 or 0.9,0.7,0.5")
    cond, source = _acceptance(acceptance, k)
    return Speculative(method, k, cond, source)


def check_supported(spec: Speculative | None, profile, model) -> None:
    """The engine runs the method and the model has what it needs (MTP: its own MTP modules)."""
    if spec is None:
        return
    if spec.method not in profile.features.speculative:
        runs = ", ".join(profile.features.speculative) or "none of mtp, eagle3"
        raise InputError("--speculative", None, f"engine profile {profile.name} runs {runs}",
                         "choose a supported method or another --engine")
    if spec.method == "mtp" and model.mtp_layers < 1:
        raise InputError("--speculative", None, f"{model.name} has no multi-token-prediction module "
                         "(num_nextn_predict_layers = 0)", "use eagle3:N with an EAGLE-3 draft, or drop --speculative")


EAGLE3_DRAFT_VOCAB = 32_000      # EAGLE-3 drafts predict over a reduced vocabulary (draft_vocab_size in the
                                 # published EAGLE-3 draft configs, e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B)
EAGLE3_FFN_RATIO = 3.5           # draft MLP width / hidden when the target has no dense width (Llama-3.1-8B: 14336/4096)


def draft_model(model, spec: Speculative):
    """The model one draft step runs: MTP, the checkpoint's MTP block (one layer of the target's
    last layer kind; the embedding and LM head are the target's, shared); EAGLE-3, one dense
    full-attention layer of the target's width with its own reduced-vocabulary LM head."""
    import dataclasses

    from apex_plan.model.spec import DENSE, LayerGroup, LayerKind
    if spec.method == "mtp":
        last = model.layers()[-1]
        return dataclasses.replace(model, name=f"{model.name}-mtp", num_layers=1, layer_groups=(LayerGroup((last,), 1),),
                                   num_dense_layers=-1 if last.mlp == DENSE else 0, mtp_layers=0)
    width = model.intermediate_size or int(EAGLE3_FFN_RATIO * model.hidden_size)
    return dataclasses.replace(model, name=f"{model.name}-eagle3", num_layers=1,
                               layer_groups=(LayerGroup((LayerKind(model.global_mixer, DENSE),), 1),), num_dense_layers=-1,
                               intermediate_size=width, vocab_size=EAGLE3_DRAFT_VOCAB, tie_word_embeddings=False,
                               mtp_layers=0)
