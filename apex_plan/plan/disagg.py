"""A disaggregated deployment: prefill instances and decode instances of one model on one GPU type.

Prefill instances compute prompts (and their first token); each finished prompt's KV cache moves
to a decode instance, which generates the rest (NVIDIA Dynamo, SGLang PD, TRT-LLM disaggregated
serving, vLLM with a KV connector). Each role has its own parallel layout and engine settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from apex_plan.plan.spec import Plan


@dataclass(frozen=True)
class DisaggPlan:
    """`prefill_replicas` instances of `prefill` and `decode_replicas` instances of `decode`
    (each Plan's dp is its replica count); decode_max_num_seqs: each decode attention rank's batch
    cap (None: the engine's)."""

    prefill: Plan
    decode: Plan
    decode_max_num_seqs: int | None = None
    prefill_max_num_seqs: int | None = None

    @property
    def prefill_replicas(self) -> int:
        return self.prefill.dp

    @property
    def decode_replicas(self) -> int:
        return self.decode.dp

    @property
    def num_gpus(self) -> int:
        return self.prefill.num_gpus + self.decode.num_gpus

    def label(self) -> str:
        """e.g. '1P x tp1-pp1-ep16-adp16 + 3D x tp16-pp1-ep16 fp8/bf16'."""
        p, d = self.prefill, self.decode
        role = lambda pl: pl.replica_label().split(" ")[0]
        return (f"{p.dp}P x {role(p)} + {d.dp}D x {role(d)}" + (f" b{self.decode_max_num_seqs}" if self.decode_max_num_seqs
                                                             else "") + f" {p.weight_dtype}/{p.kv_dtype}")
