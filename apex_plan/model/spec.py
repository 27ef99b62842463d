"""What a cost model needs to know about a decoder-only transformer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# Token mixers a layer can have.
FULL = "full"            # causal attention over every cached token
MLA = "mla"              # multi-head latent attention over every cached token (DeepSeek-V2/V3, Kimi-K2)
SLIDING = "sliding"      # attention over the last `window` tokens (gpt-oss, Gemma)
CHUNKED = "chunked"      # attention inside fixed chunks of `window` tokens (Llama-4 local layers)
SPARSE = "sparse"        # DeepSeek sparse attention: an indexer picks `index_topk` cached tokens
LINEAR = "linear"        # Gated DeltaNet linear attention: a fixed-size state per sequence
MAMBA = "mamba"          # Mamba-2 state-space mixer: a fixed-size state per sequence
PROJ = "proj"            # one hidden x hidden linear in place of attention, no cache (DeciLM replace_with_linear)
NO_MIXER = "none"        # a block with only an MLP (Nemotron-H '-' and 'E' blocks)
MIXERS = (FULL, MLA, SLIDING, CHUNKED, SPARSE, LINEAR, MAMBA, PROJ, NO_MIXER)
ATTENTION_MIXERS = (FULL, MLA, SLIDING, CHUNKED, SPARSE)   # mixers that keep a per-token KV cache
STATE_MIXERS = (LINEAR, MAMBA)                        # mixers that keep a per-sequence state

# MLPs a layer can have.
DENSE, MOE, NO_MLP = "dense", "moe", "none"
PROJ_MLP = "proj"        # one hidden x hidden linear in place of the FFN (DeciLM replace_with_linear)


@dataclass(frozen=True, order=True)
class LayerKind:
    """One kind of decoder block: its token mixer and its MLP."""

    mixer: str = FULL
    mlp: str = DENSE
    window: int = 0          # SLIDING / CHUNKED: tokens a query sees; compressed FULL / SPARSE: the raw
                             # window kept beside the compressed rows (DeepSeek-V4); 0 otherwise
    mlp_width: int = 0       # DENSE: this layer's MLP width when layers differ (DeciLM / Nemotron-NAS);
                             # 0: the model's intermediate_size
    compress: int = 0        # FULL / SPARSE: tokens pooled into one cached KV row (DeepSeek-V4 CSA 4, HCA 128)
    kv_heads: int = 0        # attention: this layer's KV heads when layers differ (DeciLM n_heads_in_group);
                             # 0: the model's num_kv_heads

    def label(self) -> str:
        w = f"{self.window}" if self.mixer in (SLIDING, CHUNKED) else ""
        c = f"/c{self.compress}" if self.compress else ""
        kv = f"/kv{self.kv_heads}" if self.kv_heads else ""
        m = f"{self.mlp_width}" if self.mlp_width else ""
        return f"{self.mixer}{w}{c}{kv}+{self.mlp}{m}"


@dataclass(frozen=True)
class LayerGroup:
    """`kinds` in this order, repeated `repeat` times (e.g. 3 linear + 1 full, x15)."""

    kinds: tuple[LayerKind, ...]
    repeat: int = 1

    @property
    def num_layers(self) -> int:
        return len(self.kinds) * self.repeat


def group_layers(layers: list[LayerKind]) -> tuple[LayerGroup, ...]:
    """Compress a per-layer list into repeated groups: each run of a repeating pattern (shortest
    period first, periods up to 8 layers) becomes one group."""
    groups: list[LayerGroup] = []
    i, n = 0, len(layers)
    while i < n:
        best = (1, 1)                                           # (period, repeats)
        for period in range(1, min(8, n - i) + 1):
            unit = layers[i:i + period]
            reps = 1
            while layers[i + reps * period:i + (reps + 1) * period] == unit:
                reps += 1
            if reps * period > best[0] * best[1] and reps > 1:
                best = (period, reps)
        period, reps = best
        groups.append(LayerGroup(tuple(layers[i:i + period]), reps))
        i += period * reps
    return tuple(groups)


@dataclass(frozen=True)
class ModelSpec:
    """A dense, mixture-of-experts or hybrid decoder, in normalised form.

    Loaded from `models/*.yaml` or a Hugging Face `config.json` (see `apex_plan.model.load`);
    the YAML files use Hugging Face field names, this class uses one name per concept.
    """

    name: str
    source: str                      # Hugging Face repo id the figures come from
    architecture: str                # e.g. LlamaForCausalLM
    num_layers: int                  # transformer blocks (num_hidden_layers)
    hidden_size: int
    num_heads: int                   # query heads
    num_kv_heads: int                # key/value heads (GQA); == num_heads for MHA
    head_dim: int                    # per-head dim of q/k/v (GQA); for MLA the v head dim
    intermediate_size: int           # dense MLP hidden width (SwiGLU: gate, up, down)
    vocab_size: int
    tie_word_embeddings: bool
    max_context: int                 # max_position_embeddings
    # --- mixture of experts (0 for dense models) ---
    num_experts: int = 0             # routed experts per MoE layer
    experts_per_token: int = 0       # routed experts each token goes to (top-k)
    num_shared_experts: int = 0      # always-on experts per MoE layer
    expert_intermediate_size: int = 0          # width of one routed expert's MLP
    shared_expert_intermediate_size: int = 0   # width of one shared expert's MLP
    num_dense_layers: int = -1       # layers with a dense MLP; -1 means all (dense model)
    # --- multi-head latent attention (DeepSeek-V2/V3); attention == "mla" ---
    attention: str = "gqa"           # "gqa" (covers MHA/MQA) or "mla"
    q_lora_rank: int = 0             # 0: queries projected directly
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # --- layer structure: repeated groups of layer kinds; () means `num_dense_layers` dense
    #     full-attention layers first, then MoE full-attention layers (the classic layout) ---
    layer_groups: tuple[LayerGroup, ...] = ()
    # --- attention details ---
    qkv_bias: bool = False           # q/k/v projections carry biases (Qwen2, gpt-oss)
    o_bias: bool = False             # o_proj carries a bias (gpt-oss)
    qk_norm: str = ""                # "" none, "head": RMSNorm of head_dim on q and k, "layer": of the full q/k width
    attention_sinks: bool = False    # one learned sink logit per query head (gpt-oss)
    attn_output_gate: bool = False   # q_proj also emits a sigmoid gate per head (Qwen3.5/Qwen3-Next)
    global_head_dim: int = 0         # full-attention layers' head dim when it differs (Gemma 4); 0: head_dim
    global_num_kv_heads: int = 0     # full-attention layers' KV heads when they differ (Gemma 4); 0: num_kv_heads
    global_k_eq_v: bool = False      # full-attention layers reuse the key projection as value (Gemma 4 attention_k_eq_v)
    extra_norms_per_layer: int = 0   # RMSNorms of hidden_size beyond the pre-mixer and pre-MLP ones (Gemma: post-norms)
    o_lora_rank: int = 0             # output projection through a low-rank bottleneck per group (DeepSeek-V4)
    o_groups: int = 0                # groups of heads sharing one o_lora bottleneck (DeepSeek-V4)
    kv_one_vector: bool = False      # one cached vector per token and KV head serves as K and V (DeepSeek-V4)
    hc_mult: int = 0                 # manifold-constrained hyper-connections: residual streams (DeepSeek-V4 mHC)
    # --- DeepSeek sparse attention indexer (mixer SPARSE) ---
    index_topk: int = 0              # cached tokens each query attends to
    index_n_heads: int = 0
    index_head_dim: int = 0
    # --- Gated DeltaNet linear attention (mixer LINEAR) ---
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 0
    linear_kind: str = "gdn"         # "gdn" Gated DeltaNet (Qwen3.5) | "kda" Kimi Delta Attention (Kimi-Linear, K3)
    linear_full_rank_gate: bool = False  # KDA: the output gate is a full hidden -> heads*dim projection
    # --- Mamba-2 (mixer MAMBA) ---
    mamba_num_heads: int = 0
    mamba_head_dim: int = 0
    mamba_state_size: int = 0
    mamba_n_groups: int = 0
    mamba_conv_kernel: int = 0
    mamba_state_bytes: float = 0.0   # bytes per element of the cached state (fp32 per mamba_ssm_cache_dtype)
    # --- MLP / MoE details ---
    mlp_gated: bool = True           # SwiGLU (gate, up, down) vs a plain up/down MLP (Nemotron-H relu2)
    router_bias: bool = False        # router Linear has a bias (gpt-oss)
    expert_bias: bool = False        # expert projections carry biases (gpt-oss)
    score_bias: bool = False         # e_score_correction_bias per expert (DeepSeek-V3, MiniMax-M2, GLM-5)
    shared_expert_gate: bool = False  # sigmoid gate hidden -> 1 on the shared expert (Qwen2-MoE, Qwen3.5)
    moe_latent_size: int = 0         # routed experts work in a projected latent of this width (Nemotron-3)
    moe_with_dense_mlp: bool = False  # MoE layers also run the dense MLP beside the experts (Gemma 4 26B-A4B)
    router_scales: bool = False      # router input scale (hidden) and per-expert output scale (Gemma 4)
    # --- checkpoint weight formats per component (see apex_plan.model.quant); () = all in the
    #     plan's weight dtype ---
    weight_formats: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()      # what the loader left out (vision tower, MTP modules)
    mtp_layers: int = 0              # multi-token-prediction modules (num_nextn_predict_layers): MTP drafts
    aliases: tuple[str, ...] = ()    # other repo ids of the same weights in other formats (built-in YAML)
    aliases_dtype: str = ""          # dtype of the aliases without a quantisation tag ("": the checkpoint's)
    alias_formats: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()   # alias -> the per-component
                                     # formats its own quantization_config states (YAML alias_quantization)
    remote_code: bool = False        # the config names its own modelling code (auto_map): engines need
                                     # --trust-remote-code to load it (DeciLM, Kimi-K3)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        """The layer groups; the classic layout when none were given."""
        if self.layer_groups:
            return self.layer_groups
        n_dense = self.num_layers if (self.num_dense_layers < 0 or not self.is_moe) else self.num_dense_layers
        out = []
        if n_dense:
            out.append(LayerGroup((LayerKind(self.global_mixer, DENSE),), n_dense))
        if self.num_layers - n_dense:
            out.append(LayerGroup((LayerKind(self.global_mixer, MOE),), self.num_layers - n_dense))
        return tuple(out)

    @property
    def global_mixer(self) -> str:
        """The mixer of this model's attention over every cached token: MLA for a latent-attention model
        (`attention == "mla"`, a config with kv_lora_rank), else full attention."""
        return MLA if self.attention == "mla" else FULL

    def layers(self) -> tuple[LayerKind, ...]:
        """The kind of every layer, first to last."""
        return tuple(k for g in self.groups for _ in range(g.repeat) for k in g.kinds)

    def kind_counts(self) -> dict[LayerKind, int]:
        """How many layers of each kind (first appearance order)."""
        return dict(Counter(self.layers()))

    @property
    def n_dense_layers(self) -> int:
        """Layers whose MLP is dense."""
        return sum(n for k, n in self.kind_counts().items() if k.mlp == DENSE)

    @property
    def n_moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts."""
        return sum(n for k, n in self.kind_counts().items() if k.mlp == MOE)

    @property
    def n_attention_layers(self) -> int:
        """Layers that keep a per-token KV cache."""
        return sum(n for k, n in self.kind_counts().items() if k.mixer in ATTENTION_MIXERS)

    def attention_dims(self, mixer: str, kv_heads: int = 0) -> tuple[int, int]:
        """(head_dim, KV heads) of an attention layer of kind `mixer` (full layers may differ); `kv_heads`:
        the layer kind's own KV heads (LayerKind.kv_heads), 0 for the model's."""
        if mixer == FULL and (self.global_head_dim or self.global_num_kv_heads):
            return self.global_head_dim or self.head_dim, kv_heads or self.global_num_kv_heads or self.num_kv_heads
        return self.head_dim, kv_heads or self.num_kv_heads

    @property
    def checkpoint_dtype(self) -> str:
        """The dtype the checkpoint's weights are in (bf16 when it states no format): the default plan dtype."""
        from apex_plan.model.quant import checkpoint_dtype
        return checkpoint_dtype(dict(self.weight_formats))

    def stated_formats(self, repo_id: str) -> dict[str, str]:
        """The per-component formats alias `repo_id`'s own quantization_config states ({} when not recorded)."""
        rid = repo_id.strip().lower()
        return next((dict(f) for a, f in self.alias_formats if a.lower() == rid), {})

    def checkpoint_repo(self, weight_dtype: str) -> tuple[str, bool]:
        """(repo id to serve, True when its config already says the quantisation) for weights in `weight_dtype`:
        the source when its checkpoint is in that dtype, else an alias whose formats (its stated config, else
        its tag: `quant.repo_formats`) are in it, else the source."""
        from apex_plan.model.quant import checkpoint_dtype, repo_formats
        if self.checkpoint_dtype == weight_dtype:
            return self.source, weight_dtype not in ("bf16", "fp16", "fp32")
        untagged = self.aliases_dtype or self.checkpoint_dtype
        for alias in self.aliases:
            formats = repo_formats(alias, self.stated_formats(alias))
            dtype = checkpoint_dtype(formats) if formats else untagged
            if dtype == weight_dtype:
                return alias, dtype not in ("bf16", "fp16", "fp32")
        return self.source, False

    def weight_format(self, component: str) -> str:
        """Checkpoint format of `component` ("" when the checkpoint gives none)."""
        return dict(self.weight_formats).get(component, "")
