"""Generated bad-input suite: every input file kind and every flag of every command.

Each case runs the console entry point in-process and must end with exit status 2, exactly one line
on stderr that names the file or option (and the field, where there is one) and ends with the fix in
parentheses, nothing on stdout, no traceback, within 10 s. Cases are built from tables: bad values per
option kind, and mutations of a valid file of each kind (model YAML, Hugging Face config.json, GPU
profile, cluster, and the four trace formats), each file fed to every command that reads it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from apex_plan.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODEL = "llama-3.1-8b"
GPU = "h100-sxm-80gb"
# cheap valid baselines: one GPU, 20 synthetic requests; each case changes one thing
SIM = ["simulate", "--model", MODEL, "--gpu", GPU, "--gpus", "1", "--workload", "chat", "--rate", "1",
       "--num-requests", "20", "--max-model-len", "8192"]
SEARCH = ["search", "--model", MODEL, "--gpu", GPU, "--gpus", "1", "--workload", "chat", "--rate", "1",
          "--num-requests", "20", "--max-model-len", "8192"]
WORKLOAD_OPTS = ("--workload", "--rate", "--num-requests")

# id -> (argv with {file:...} placeholders, needles); a needle is a string, or a tuple of alternatives
# (any of an option's spellings); the error line must contain every needle
CASES: dict[str, tuple[list[str], tuple]] = {}


def case(cid: str, argv: list[str], *needles) -> None:
    assert cid not in CASES, cid
    CASES[cid] = (argv, needles)


def with_opt(base: list[str], opt: str, value: str | None, drop: tuple[str, ...] = ()) -> list[str]:
    """`base` with `opt` set to `value` (a flag when value is None), and options in `drop` removed."""
    out, i = [], 0
    while i < len(base):
        if base[i] in (opt, *drop):
            i += 2
            continue
        out.append(base[i])
        i += 1
    if value is None:
        return out + [opt]
    return out + ([f"{opt}={value}"] if value.startswith("-") else [opt, value])


# ---------------------------------------------------------------------------------------------
# bad values per kind of option

INT_BAD = ["abc", "", "1.5", "1e3", "0x10", "99999999999999999999", "-1"]
FLOAT_BAD = ["abc", "", "nan", "inf", "-inf", "1e999", "-1", "0"]
SLO_BAD = ["", "500", "5xs", "-5ms", "0ms", "1e999ms", "ms", "500 mss", "2days", "100000s", "nan ms", "5 m s"]
LENGTH_BAD = ["", "abc", "-5", "0", "uniform:512-64", "uniform:a-b", "uniform:5", "lognormal:mean=100,std=-3",
              "lognormal:std=3", "normal:mean=0", "normal:mean=-1", "normal:mean=nan", "normal:mean=inf",
              "poisson:mean=3", "lognormal:mean=1e30", "99999999999", "normal:mean=10,mean=20",
              "normal:mean=10,foo=2", "uniform:1-99999999999", "1e400", "normal:", "normal:mean=,std=1",
              "lognormal:mean=74;std=120", "normal:mean=5x"]
PLAN_BAD = ["", ",", "dp=1,dp=2", "tp=0", "tp=-1", "xx=1", "tp", "tp=", "tp=1,,pp=1", "tp=1.5", "dp=1;tp=1",
            "tp=99999999", "ep=2", "dp=2", "tp=3", "pp=0", "dp=0", "tp=a", "dp=1 tp=1", "tp=1,pp=1,dp=1,tp=1",
            "dp=99999999999999999999"]
FLAG_VALUE_BAD = ["1", "yes"]


def _aliases(names: tuple[str, ...], value: str, base: list[str], kind: str, needle=None,
             drop: tuple[str, ...] = ()) -> None:
    """The bad value under every spelling of the option; the message may name any spelling."""
    for name in names:
        case(f"{base[0]}:{name}={value!r}:{kind}", with_opt(base, name, value, drop), needle or names)


def options_of(cmd: str, base: list[str]) -> None:
    s = cmd
    ints = {  # option spellings -> bad values beyond INT_BAD
        ("--gpus",): ["0", "-8", "2000000", "12"],               # 12 GPUs do not fill nodes of 8
        ("--gpus-per-node",): ["0", "1000"],
        ("--num-requests",): ["0", "1000000000000"],
        ("--seed",): ["99999999999999999999999"],
        ("--max-model-len",): ["0", "1", "99999999999", "200000"],
        ("--turns",): ["0", "100000"], ("--prefix-tokens",): ["99999999999"], ("--num-prefixes",): ["0"],
        ("--hash-block-tokens",): ["0", "100000"], ("--prompt-pool",): ["1000000000000"],
    }
    if s == "simulate":
        ints.update({("--concurrency",): ["0"], ("--max-num-seqs",): ["0", "100000000000"],
                     ("--max-batched-tokens", "--max-num-batched-tokens"): ["0", "99999999999", "100"],
                     ("--tensor-parallel-size", "-tp"): ["0"], ("--pipeline-parallel-size", "-pp"): ["0"],
                     ("--prefill-replicas",): ["0", "99999999"], ("--decode-replicas",): ["0", "99999999"],
                     ("--decode-max-num-seqs",): ["0", "100000000000"], ("--batch-wait-iters",): ["100001"]})
    else:
        ints.update({("--top",): ["0", "1000"], ("--max-gpus-per-replica",): ["0", "99999999"]})
    for names, extra in ints.items():
        for v in INT_BAD + extra:
            _aliases(names, v, base, "int")
    floats = {("--rate",): ["1e308", "1e-12"], ("--burstiness-cv",): ["1000"],
              ("--gpu-memory-utilization",): ["1.5", "-0.1"], ("--slo-percentile",): ["101", "1000"]}
    for names, extra in floats.items():
        for v in FLOAT_BAD + extra:
            _aliases(names, v, base, "float")
    for names in (("--ttft-slo",), ("--tpot-slo",)):
        for v in SLO_BAD:
            _aliases(names, v, base, "slo")
    for v in ("", "abc", "5", "-5s", "5xs", "2days", "100000s"):
        _aliases(("--think-time",), v, base + ["--turns", "3"], "duration")
    for names in (("--prompt-tokens",), ("--output-tokens",)):
        for v in LENGTH_BAD:
            _aliases(names, v, base, "length")
    choices = {("--format", "-f"): ["", "xml", "yaml", "JSON"], ("--arrival",): ["", "poison", "gama"],
               ("--workload",): ["", "chatt", "summary"], ("--engine",): ["", "vllmm", "foo", "vllm@0.1", "sglang@9.0", "trtllm@"],
               ("--model", "-m"): ["", "llama-3.1-7b", "nope.yaml", "/nonexistent/dir/config.json"],
               ("--gpu",): ["", "h100", "rtx4090", "nope.yaml"],
               ("--weight-dtype",): ["", "bf61", "BF16", "int3"],   # fp4 on H100 runs weight-only (MXFP4 via Marlin)
               ("--kv-dtype", "--kv-cache-dtype"): ["", "bf61", "fp9"],
               ("--trace",): ["/nonexistent/trace.jsonl", "nope.csv"],
               ("--cluster",): ["/nonexistent/cluster.yaml"]}
    if s == "simulate":
        choices.update({("--routing",): ["", "random", "rr"], ("--chunked-prefill",): ["", "maybe", "both", "on,off"],
                        ("--plan",): PLAN_BAD, ("--activation-scales",): ["", "dynamc", "per-token"]})
    else:
        choices.update({("--objective",): ["", "speed", "gpu"], ("--serving",): ["", "disaggregated", "pd", "agg,disagg"],
                        ("--chunked-prefill",): ["", "maybe", "on,maybe", ","],
                        ("--max-num-seqs",): ["", "0", "abc", "128,,256", "128,abc", "-1", "100000", "1.5", ","],
                        ("--max-batched-tokens", "--max-num-batched-tokens"): ["", "0", ",", "512,x", "99999999999",
                                                                              "100", "-5"]})
    if s == "simulate":   # disaggregated: one role's layout bad, the other valid
        for role, other in (("--prefill-plan", "--decode-plan"), ("--decode-plan", "--prefill-plan")):
            for v in PLAN_BAD:
                _aliases((role,), v, base + [other, "tp=1"], "choice")
    for names, values in choices.items():
        for v in values:
            drop = ("--gpu", "--gpus") if names == ("--cluster",) else (WORKLOAD_OPTS if names == ("--trace",) else ())
            needle = None
            if names[0] in ("--trace", "--cluster", "--model", "--gpu") and v not in ("", "h100", "rtx4090", "llama-3.1-7b"):
                needle = Path(v).name
            _aliases(names, v, base, "choice", needle, drop)
    for v in ("", "mtp", "mtp:0", "medusa:2", "mtp:99", "eagle3:2", "mtp:1", "eagle3:x") + (
            ("none,mtp:x", "mtp:1,,none") if s == "search" else ()):
        _aliases(("--speculative",), v, base, "choice")     # mtp:1: the base model has no MTP module
    for v in ("", "abc", "1.5", "-0.1", "0.5,0.6,0.7", "0.5,0.9"):
        _aliases(("--speculative-acceptance",), v, base + ["--speculative", "eagle3:2"], "choice")
    case(f"{s}:--speculative-acceptance:alone", base + ["--speculative-acceptance", "0.5"], "--speculative-acceptance")
    flags = ["--no-custom-allreduce", "--disable-custom-all-reduce"]
    if s == "search":
        flags += ["--homogeneous", "--all", "--allow-cross-node-tp", "--no-symmetry-pruning"]
    for flag in flags:
        for v in FLAG_VALUE_BAD:
            case(f"{s}:{flag}={v}:flag", base + [f"{flag}={v}"], flag)
    for v in ("maybe", "2"):
        case(f"{s}:--enable-chunked-prefill={v}", base + [f"--enable-chunked-prefill={v}"], "--chunked-prefill")
    for v in ("maybe", "2"):
        case(f"{s}:--enable-prefix-caching={v}", base + [f"--enable-prefix-caching={v}"], "--prefix-caching")
    for v in ("", "maybe", "on,maybe", ",") + (("both", "on,off") if s == "simulate" else ()):
        _aliases(("--prefix-caching",), v, base, "choice")
    # structure: unknown option, missing value, missing --model, conflicting sources
    case(f"{s}:unknown-option", base + ["--bogus"], "--bogus")
    case(f"{s}:typo-option", base + ["--max-num-seq", "8"], "--max-num-seq")
    case(f"{s}:missing-value", base + ["--gpus"], "--gpus")
    case(f"{s}:missing-model", [a for i, a in enumerate(base) if a != "--model" and base[i - 1] != "--model"],
         "--model")
    case(f"{s}:no-gpu", with_opt(base, "--gpus", "1", drop=("--gpu",)), "--gpu")
    case(f"{s}:no-gpus", with_opt(base, "--gpu", GPU, drop=("--gpus",)), "--gpus")
    case(f"{s}:cluster-and-gpu", base + ["--cluster", str(EXAMPLES / "cluster.yaml")], "--cluster")
    case(f"{s}:trace-and-workload", base + ["--trace", str(EXAMPLES / "chat.jsonl")], "--trace")
    case(f"{s}:extra-argument", base + ["surplus"], "surplus")
    case(f"{s}:--output=unwritable", base + ["--format", "json", "--output", "/nonexistent/dir/x.json"], "x.json")
    case(f"{s}:-o=folder", base + ["--format", "csv", "-o", "{dir}"], "--output")


options_of("simulate", SIM)
options_of("search", SEARCH)
for _v in ("abc", "", "nan", "inf", "-1", "1.5", "1e999"):     # 0 is valid (off), so not FLOAT_BAD
    _aliases(("--batch-wait-ratio",), _v, SIM, "float")
case("simulate:batch-wait-on-vllm", SIM + ["--batch-wait-iters", "20"], "--batch-wait-iters")
case("simulate:batch-ratio-on-vllm", SIM + ["--batch-wait-ratio", "0.5"], "--batch-wait-ratio")
for _s, _base in (("simulate", SIM), ("search", SEARCH)):     # SGLang's receive interval: whole steps >= 1, SGLang only
    for _v in INT_BAD + ["0", "100001"]:
        _aliases(("--scheduler-recv-interval",), _v, _base, "int")
    case(f"{_s}:recv-interval-on-vllm", _base + ["--scheduler-recv-interval", "10"], "--scheduler-recv-interval")
for _s, _base in (("simulate", SIM), ("search", SEARCH)):     # MoE all-to-all backends (engine.all2all)
    for _v in ("", "pplx", "deepep", "DeepEP"):                # vLLM (the default engine) spells them its own way
        case(f"{_s}:--all2all-backend={_v!r}", with_opt(_base, "--all2all-backend", _v), "--all2all-backend")
    _sg = with_opt(_base, "--engine", "sglang")
    for _v in ("", "deepep_low_latency", "mooncake"):
        case(f"{_s}:--moe-a2a-backend={_v!r}", with_opt(_sg, "--moe-a2a-backend", _v), "--all2all-backend")
    for _v in ("", "fast", "LOW_LATENCY"):
        case(f"{_s}:--deepep-mode={_v!r}", with_opt(_sg, "--deepep-mode", _v), "--deepep-mode")
    case(f"{_s}:--deepep-mode=auto-on-vllm", with_opt(_base, "--deepep-mode", "auto"), "--deepep-mode")
    case(f"{_s}:--deepep-mode=auto-without-deepep", with_opt(with_opt(_sg, "--moe-a2a-backend", "none"),
                                                             "--deepep-mode", "auto"), "--deepep-mode")
    case(f"{_s}:--all2all-backend=trtllm", with_opt(with_opt(_base, "--engine", "trtllm"), "--all2all-backend",
                                                    "deepep_low_latency"), "--all2all-backend")
case("search:cluster-too-big-to-search", with_opt(SEARCH, "--gpus", "8192"), "--gpus", "4,096")
case("simulate:no-rate", with_opt(SIM, "--workload", "chat", drop=("--rate",)), "--rate")
case("simulate:plan-too-big", with_opt(SIM, "--plan", "dp=2,tp=1"), "--plan")
case("simulate:tp-contradicts-plan", with_opt(SIM, "--plan", "tp=1") + ["-tp", "2"], "--tensor-parallel-size")
case("simulate:budget-below-len-nochunk", SIM + ["--chunked-prefill", "off", "--max-batched-tokens", "4096"],
     "--max-batched-tokens")
case("simulate:long-prompts", with_opt(SIM, "--prompt-tokens", "20000"), "--prompt-tokens")
for cmd in ("models", "hardware"):
    for v in ("", "xml", "yaml"):
        case(f"{cmd}:--format={v!r}", [cmd, "--format", v], "--format")
    case(f"{cmd}:--output=unwritable", [cmd, "--format", "json", "--output", "/nonexistent/dir/x.json"], "x.json")
    case(f"{cmd}:-o=folder", [cmd, "-o", "{dir}"], "--output")
    case(f"{cmd}:-f=xml", [cmd, "-f", "xml"], "--format")
    case(f"{cmd}:unknown-option", [cmd, "--bogus"], "--bogus")
    case(f"{cmd}:two-names", [cmd, "a", "b"], "b")
for v in ("llama-3.1-7b", "llama", "nope.yaml", "/nonexistent/config.json", " "):
    case(f"models:{v!r}", ["models", v], v.strip() or "--model")
for v in ("rtx4090", "h1OO", "nope.yaml", "/nonexistent/gpu.yaml", "h100"):
    case(f"hardware:{v!r}", ["hardware", v], Path(v).name)
case("root:unknown-command", ["frobnicate"], "frobnicate")
case("root:unknown-option", ["--bogus"], "--bogus")
case("root:version-with-value", ["--version=1"], "--version")
for cmd_base in (SIM, SEARCH):
    s_ = cmd_base[0]
    for v in ("x.txt", "report", "", "/nonexistent/dir/r.html"):
        case(f"{s_}:--report={v!r}", cmd_base + ["--report", v], "--report")
    for v in ("x.jpg", "", "plot.pdf", "/nonexistent/dir/p.svg"):
        case(f"{s_}:--plot={v!r}", cmd_base + ["--plot", v], "--plot")
case("search:--no-bound-pruning=1", SEARCH + ["--no-bound-pruning=1"], "--no-bound-pruning")
case("search:--slo-margin=1", SEARCH + ["--slo-margin=1"], "--slo-margin")
case("search:--slo-margin-uncalibrated", SEARCH + ["--engine", "vllm@0.6.0", "--slo-margin"], "--slo-margin",
     "calibrate")                                          # vllm-0.6 stores no error band
# power caps (W per GPU within the profile's power-limit range), locked SM clocks, power budget, prices
for v in ("", "abc", "-5W", "0W", "900W", "5kWh", "nanW", "1e999W", "100W", "500W,,600W", "W"):
    case(f"search:--power-cap={v!r}", with_opt(SEARCH, "--power-cap", v), "--power-cap")
for v in ("", "abc", "100MHz", "5000", "-1GHz", "2GHz", "MHz"):
    case(f"search:--sm-clock={v!r}", with_opt(SEARCH, "--sm-clock", v), "--sm-clock")
case("search:--power-cap=no-clock-ranges", with_opt(with_opt(SEARCH, "--gpu", "b200-sxm-180gb"), "--power-cap", "600W"),
     "--power-cap", "clocks")
for v in FLOAT_BAD + ["1e7"]:
    case(f"search:--max-power-kw={v!r}", with_opt(SEARCH, "--max-power-kw", v), "--max-power-kw")
case("search:--prices=missing", with_opt(SEARCH, "--prices", "/nonexistent/prices.yaml"), "prices.yaml")
case("search:--objective=cost-without-price", with_opt(SEARCH, "--objective", "cost"), "price", "--prices")

SWEEP = ["sweep", str(EXAMPLES / "sweep-48.yaml")]
for opts, needle in ((["--executor", "spark"], "--executor"), (["--executor", ""], "--executor"),
                     (["--jobs", "0"], "--jobs"), (["-j", "abc"], "--jobs"), (["--retry-failed=1"], "--retry-failed"),
                     (["--report", "x.txt"], "--report"), (["--output", "/nonexistent/d/x.jsonl"], "--output"),
                     (["-o", "{dir}"], "--output"), (["--format", "xml"], "--format"), (["-f", ""], "--format"),
                     (["--ray-address", "127.0.0.1:1"], "--ray-address")):
    case(f"sweep:{opts[0]}={opts[-1]!r}", SWEEP + opts, needle)
case("sweep:missing-file", ["sweep", "/nonexistent/s.yaml"], "s.yaml")
case("sweep:not-yaml-mapping", ["sweep", "{file:what.yaml}"], "what.yaml")
case("check:no-files", ["check"], ("FILES", "files"))
case("check:missing-file", ["check", "/nonexistent/x.yaml"], "x.yaml")
case("check:folder", ["check", "{dir}"], "not found")
case("check:unknown-suffix", ["check", "{file:notes.txt}"], "notes.txt")
case("check:unknown-yaml", ["check", "{file:what.yaml}"], "what.yaml")
case("check:unknown-option", ["check", "--bogus", str(EXAMPLES / "chat.jsonl")], "--bogus")
# calibrate / validate: every option refused with one line
_RUN = str(ROOT / "tests" / "fixtures" / "runs" / "profile_export_aiperf.json")
CAL = ["calibrate", _RUN, "--gpu", GPU, "--engine", "vllm@0.11.0", "--fit", "host.frontend_ms", "--rounds", "1"]
VAL = ["validate", _RUN, "--gpu", GPU, "--engine", "vllm@0.11.0"]
for _base in (CAL, VAL):
    for _opt, _v in (("--engine", "vllm@9.0"), ("--gpu", "h1OO"), ("--plan", "tp=0"), ("--model", "llama-3.1-7b"),
                     ("--weight-dtype", "fp7"), ("--requests-per-slot", "0"), ("--format", "xml")):
        case(f"{_base[0]}:{_opt}={_v!r}", with_opt(_base, _opt, _v), _opt)
    case(f"{_base[0]}:missing-run", with_opt(_base, "--gpu", GPU) + ["/nonexistent/run.json"], "run.json")
    case(f"{_base[0]}:not-a-run", [_base[0], "{file:what.yaml}", "--gpu", GPU], "what.yaml")
case("calibrate:--fit='host.nope'", with_opt(CAL, "--fit", "host.nope"), "--fit")
case("calibrate:--rounds='0'", with_opt(CAL, "--rounds", "0"), "--rounds")
case("calibrate:--folds='-1'", with_opt(CAL, "--folds", "-1"), "--folds")
case("calibrate:--output='x.txt'", with_opt(CAL, "--output", "x.txt"), "--output")
case("validate:--output={dir}", with_opt(VAL, "--output", "{dir}"), "folder")

# ---------------------------------------------------------------------------------------------
# files: mutations of a valid file of each kind

FILES: dict[str, bytes] = {"notes.txt": b"hello\n", "what.yaml": b"colour: blue\n"}


def add_file(name: str, content: str | bytes) -> str:
    assert name not in FILES, name
    FILES[name] = content.encode() if isinstance(content, str) else content
    return name


NUM_BAD = {"neg": -1, "zero": 0, "frac": 1.5, "text": "abc", "huge": 1e30, "bigint": 10**23, "bool": True,
           "list": [1, 2], "map": {"a": 1}, "inf": float("inf"), "nan": float("nan"), "unit": "3.35 TB/s"}
_BROKEN = {"malformed": "name: x\nhidden_size: [1,\n", "empty": "", "list": "- 1\n- 2\n", "scalar": "just text\n",
           "tabs": "name: x\n\thidden_size: 1\n"}


def model_files() -> list[tuple[str, tuple[str, ...]]]:
    """(file name, needles) of bad model files, YAML and config.json."""
    out = []
    for base_name in (MODEL, "mixtral-8x7b", "deepseek-v3"):
        base = yaml.safe_load((ROOT / "models" / f"{base_name}.yaml").read_text())
        ints = [k for k, v in base.items() if isinstance(v, int) and not isinstance(v, bool)]
        if base_name != MODEL:
            ints = [k for k in ints if "expert" in k or "lora" in k or "rope" in k or k.startswith("moe")]
        for field in ints:
            for tag, value in NUM_BAD.items():
                if tag == "zero" and field in ("first_k_dense_replace", "n_shared_experts", "q_lora_rank"):
                    continue
                doc = dict(base, **{field: value})
                if field in ("num_local_experts", "n_routed_experts") and tag in ("huge", "bigint"):
                    pass
                ext = "json" if tag in ("neg", "frac", "bool", "nan") else "yaml"
                text = json.dumps(doc) if ext == "json" else yaml.safe_dump(doc)
                name = add_file(f"model-{base_name}-{field}-{tag}.{ext}" if ext == "yaml"
                                else f"cfg-{base_name}-{field}-{tag}/config.json", text)
                out.append((name, (field,)))
            if field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                         "max_position_embeddings", "num_local_experts", "n_routed_experts", "kv_lora_rank"):
                doc = {k: v for k, v in base.items() if k != field}
                out.append((add_file(f"model-{base_name}-no-{field}.yaml", yaml.safe_dump(doc)), (field,)))
    base = yaml.safe_load((ROOT / "models" / f"{MODEL}.yaml").read_text())
    for tag, doc, field in (("arch", dict(base, architectures=["FooForCausalLM"]), "architectures"),
                            ("arch-num", dict(base, architectures=5), "architectures"),
                            ("arch-none", {k: v for k, v in base.items() if k != "architectures"}, "architectures"),
                            ("tie", dict(base, tie_word_embeddings="yes"), "tie_word_embeddings"),
                            ("kvheads", dict(base, num_key_value_heads=3), "num_key_value_heads"),
                            ("headdim", dict(base, hidden_size=4100, head_dim=None), "head_dim"),
                            ("exp-per-tok", dict(yaml.safe_load((ROOT / "models" / "mixtral-8x7b.yaml").read_text()),
                                                 num_experts_per_tok=9), "num_experts_per_tok"),
                            ("yaml12", dict(base, hidden_size="1e30"), "hidden_size")):
        text = yaml.safe_dump(doc).replace("'1e30'", "1e30")
        out.append((add_file(f"model-{tag}.yaml", text), (field,)))
    for tag, text in _BROKEN.items():
        out.append((add_file(f"model-broken-{tag}.yaml", text), ()))
    out.append((add_file("cfg-malformed/config.json", '{"hidden_size": 4096,'), ("config.json",)))
    out.append((add_file("cfg-array/config.json", "[1, 2]"), ("config.json",)))
    out.append((add_file("model-binary.yaml", b"\xff\xfe\x00bad"), ()))
    return out


def gpu_files() -> list[tuple[str, tuple[str, ...]]]:
    text = (ROOT / "hardware_profiles" / f"{GPU}.yaml").read_text()
    base = yaml.safe_load(text)
    out = []
    fields = [k for k, v in base.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for field in fields + ["peak_tflops.bf16", "peak_tflops.fp8"]:
        for tag, value in NUM_BAD.items():
            if (tag == "zero" and field == "idle_w") or (tag == "frac" and field != "num_sms"):
                continue
            doc = json.loads(json.dumps(base, allow_nan=True))
            if field.startswith("peak_tflops."):
                doc["peak_tflops"][field.split(".")[1]] = value
            else:
                doc[field] = value
            out.append((add_file(f"gpu-{field}-{tag}.yaml", yaml.safe_dump(doc)), (field,)))
        if not field.startswith("peak_tflops.") or field.endswith("bf16"):
            doc = json.loads(json.dumps(base))
            if "." in field:
                del doc["peak_tflops"]["bf16"]
            else:
                del doc[field]
            out.append((add_file(f"gpu-no-{field}.yaml", yaml.safe_dump(doc)), (field,)))
    for tag, change, field in (("unknown-field", {"memory_gb": 80}, "memory_gb"),
                               ("peak-not-map", {"peak_tflops": 989}, "peak_tflops"),
                               ("peak-dtype", {"peak_tflops": {"bf16": 989, "bf61": 1}}, "bf61"),
                               ("idle-above-tdp", {"idle_w": 900}, "idle_w"),
                               ("calib-not-map", {"calibration": 5}, "calibration"),
                               ("name-list", {"name": [1]}, "name")):
        out.append((add_file(f"gpu-{tag}.yaml", yaml.safe_dump(dict(base, **change))), (field,)))
    for tag, text in _BROKEN.items():
        out.append((add_file(f"gpu-broken-{tag}.yaml", text), ()))
    return out


def cluster_files() -> list[tuple[str, tuple[str, ...]]]:
    base = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())
    out = []
    for field in ("nodes", "gpus_per_node", "inter_node_bw_gbps", "inter_node_latency_us", "price_per_gpu_hour",
                  "intra_node_bw_gbps"):
        for tag, value in NUM_BAD.items():
            if (tag == "zero" and field in ("inter_node_latency_us", "price_per_gpu_hour")) or (
                    tag == "frac" and field not in ("nodes", "gpus_per_node")):
                continue
            out.append((add_file(f"cluster-{field}-{tag}.yaml", yaml.safe_dump(dict(base, **{field: value}))), (field,)))
    for tag, change, field in (("gpu-unknown", {"gpu": "h100"}, "gpu"), ("gpu-num", {"gpu": 5}, "gpu"),
                               ("gpu-path", {"gpu": "nope.yaml"}, "gpu"), ("unknown-field", {"gpu_count": 8}, "gpu_count"),
                               ("tera-nodes", {"nodes": 10**12}, "nodes"), ("tera-per-node", {"gpus_per_node": 10**12},
                                                                            "gpus_per_node"),
                               ("too-many", {"nodes": 200000, "gpus_per_node": 8}, "nodes")):
        out.append((add_file(f"cluster-{tag}.yaml", yaml.safe_dump(dict(base, **change))), (field,)))
    out.append((add_file("cluster-yaml12.yaml", yaml.safe_dump(base).replace("nodes: 2", "nodes: 1e12")), ("nodes",)))
    for field in ("gpu", "nodes", "gpus_per_node"):
        doc = {k: v for k, v in base.items() if k != field}
        out.append((add_file(f"cluster-no-{field}.yaml", yaml.safe_dump(doc)), (field,)))
    for tag, text in _BROKEN.items():
        if tag in ("malformed", "tabs"):
            out.append((add_file(f"cluster-broken-{tag}.yaml", text.replace("hidden_size", "nodes")), ()))
    return out


def trace_files() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    apex = (EXAMPLES / "chat.jsonl").read_text().splitlines()
    row = json.loads(apex[3])

    def jl(tag: str, line: str | None, field: str, at: int = 3, extra: tuple[str, ...] = ()) -> None:
        lines = list(apex)
        if line is not None:
            lines[at] = line
        out.append((add_file(f"apex-{tag}.jsonl", "\n".join(lines) + "\n"), (field,) + extra))

    for field in ("StartTimeOffset", "ContextTokens", "GeneratedTokens"):
        for tag, value in (("neg", -5), ("text", "abc"), ("null", None), ("bool", True), ("list", [1]), ("huge", 1e30),
                           ("bigint", 10**23), ("nan", "NaN"), ("inf", "Infinity")):
            if field == "StartTimeOffset" and tag == "neg":
                continue
            body = json.dumps(dict(row, **{field: value}))
            if tag in ("nan", "inf"):
                body = body.replace(f'"{value}"', value)
            jl(f"{field}-{tag}", body, field)
        jl(f"{field}-missing", json.dumps({k: v for k, v in row.items() if k != field}), field)
        if field != "StartTimeOffset":
            jl(f"{field}-frac", json.dumps(dict(row, **{field: 1.5})), field)
    jl("prompt-zero", json.dumps(dict(row, ContextTokens=0)), "ContextTokens")
    jl("output-zero", json.dumps(dict(row, GeneratedTokens=0)), "GeneratedTokens")
    jl("unsorted", json.dumps(dict(row, StartTimeOffset=0)), "StartTimeOffset")
    jl("not-json", "{oops", "JSON")
    jl("array", "[1, 2, 3]", "object")
    jl("span", json.dumps(dict(row, StartTimeOffset=10**18)), "StartTimeOffset", at=len(apex) - 1)
    out.append((add_file("apex-empty.jsonl", ""), ("empty",)))
    out.append((add_file("apex-blank.jsonl", "\n  \n"), ("empty",)))
    out.append((add_file("apex-binary.jsonl", b"\xff\xfe" + b"\x00" * 10), ("UTF-8",)))
    out.append((add_file("apex-csv-inside.jsonl", "a,b,c\n1,2,3\n"), ("JSON",)))

    def csv_cases(fmt: str, base_file: str, cols: tuple[str, str, str], sorted_: bool) -> None:
        lines = (EXAMPLES / base_file).read_text().splitlines()
        header = lines[0].split(",")
        idx = [header.index(c) for c in cols]

        def put(tag: str, cells: dict[int, str] | None = None, line: str | None = None, needles: tuple[str, ...] = (),
                at: int = 4) -> None:
            new = list(lines)
            if line is not None:
                new[at] = line
            elif cells:
                parts = new[at].split(",")
                for i, v in cells.items():
                    parts[i] = v
                new[at] = ",".join(parts)
            out.append((add_file(f"{fmt}-{tag}.csv", "\n".join(new) + "\n"), needles))

        for k, col in enumerate(cols):
            bad = ["abc", "", "nan", "inf", "-5", "1e30"] + (["1.5"] if k else [])
            if k == 0 and fmt == "azure":
                bad = ["abc", "", "2023-13-45 99:00:00", "yesterday", "1.5"]
            for j, v in enumerate(bad):
                put(f"{col.replace(' ', '_')}-{j}", {idx[k]: v}, needles=(col,) if k == 0 else (":5", col))
        put("prompt-zero", {idx[1]: "0"}, needles=(":5", cols[1]))
        if fmt != "burstgpt":
            put("output-zero", {idx[2]: "0"}, needles=(":5", cols[2]))
        put("extra-field", line=lines[4] + ",7", needles=(":5", "fields"))
        put("missing-field", line=",".join(lines[4].split(",")[:-1]), needles=(":5", "fields"))
        put("quoted-extra", line=lines[4] + ',"7"', needles=(":5", "fields"))
        if sorted_:
            parts = lines[4].split(",")
            parts[idx[0]] = "0"
            put("unsorted", line=",".join(parts), needles=(":5", cols[0]))
        for col in cols:
            hdr = ",".join(c if c != col else col + "x" for c in header)
            out.append((add_file(f"{fmt}-header-{col.replace(' ', '_')}.csv", "\n".join([hdr] + lines[1:]) + "\n"),
                        (":1",)))
        out.append((add_file(f"{fmt}-header-only.csv", lines[0] + "\n"), ("no requests",)))
        if fmt == "csv":
            put("span", {idx[0]: "1e300"}, needles=(cols[0],), at=len(lines) - 1)
        if fmt == "burstgpt":
            body = [ln.split(",") for ln in lines[1:]]
            for parts in body:
                parts[idx[2]] = "0"
            out.append((add_file("burstgpt-all-failed.csv", "\n".join([lines[0]] + [",".join(p) for p in body]) + "\n"),
                        ("Response tokens",)))

    csv_cases("csv", "chat.csv", ("arrival_s", "prompt_tokens", "output_tokens"), True)
    csv_cases("burstgpt", "burstgpt.csv", ("Timestamp", "Request tokens", "Response tokens"), False)
    csv_cases("azure", "azure.csv", ("TIMESTAMP", "ContextTokens", "GeneratedTokens"), False)
    moon = (EXAMPLES / "mooncake.jsonl").read_text().splitlines()
    mrow = json.loads(moon[3])
    for tag, change, field in (("ids-many", {"hash_ids": list(range(40))}, "hash_ids"),
                               ("ids-text", {"hash_ids": ["a"]}, "hash_ids"), ("ids-null", {"hash_ids": None}, "hash_ids"),
                               ("ids-neg", {"hash_ids": [-1]}, "hash_ids"), ("input-zero", {"input_length": 0}, "input_length"),
                               ("input-frac", {"input_length": 1.5}, "input_length"),
                               ("output-zero", {"output_length": 0}, "output_length"),
                               ("time-neg", {"timestamp": -3}, "timestamp"), ("time-text", {"timestamp": "x"}, "timestamp")):
        lines = list(moon)
        lines[3] = json.dumps(dict(mrow, **change))
        out.append((add_file(f"mooncake-{tag}.jsonl", "\n".join(lines) + "\n"), (":4", field)))
    lines = list(moon)
    lines[3] = json.dumps({k: v for k, v in mrow.items() if k != "hash_ids"})
    out.append((add_file("mooncake-ids-missing.jsonl", "\n".join(lines) + "\n"), (":4", "hash_ids")))
    sess = '{"session_id": "a", "timestamp": 0, "input_length": 10, "output_length": 5}\n'
    out.append((add_file("session-no-output.jsonl", sess + '{"session_id": "a", "timestamp": 9, "input_length": 4}\n'),
                (":2", "output_length")))
    out.append((add_file("csv-garbage-header.csv", "foo,bar\n1,2\n"), (":1",)))
    out.append((add_file("csv-empty.csv", ""), ("empty",)))
    return out


MODEL_FILES = model_files()
GPU_FILES = gpu_files()
CLUSTER_FILES = cluster_files()
TRACE_FILES = trace_files()

for name, needles in MODEL_FILES:
    shown = (Path(name).name,) + needles
    case(f"check:{name}", ["check", "{file:" + name + "}"], *shown)
    case(f"models:{name}", ["models", "{file:" + name + "}"], *shown)
    case(f"simulate--model:{name}", with_opt(SIM, "--model", "{file:" + name + "}"), *shown)
    case(f"search--model:{name}", with_opt(SEARCH, "--model", "{file:" + name + "}"), *shown)
for name, needles in GPU_FILES:
    shown = (name,) + needles
    case(f"check:{name}", ["check", "{file:" + name + "}"], *shown)
    case(f"hardware:{name}", ["hardware", "{file:" + name + "}"], *shown)
    case(f"simulate--gpu:{name}", with_opt(SIM, "--gpu", "{file:" + name + "}"), *shown)
for name, needles in CLUSTER_FILES:
    shown = (name,) + needles
    case(f"check:{name}", ["check", "{file:" + name + "}"], *shown)
    case(f"simulate--cluster:{name}", with_opt(SIM, "--cluster", "{file:" + name + "}", drop=("--gpu", "--gpus")),
         *shown)
    case(f"search--cluster:{name}", with_opt(SEARCH, "--cluster", "{file:" + name + "}", drop=("--gpu", "--gpus")),
         *shown)
for name, needles in TRACE_FILES:
    shown = (name,) + needles
    case(f"check:{name}", ["check", "{file:" + name + "}"], *shown)
    case(f"simulate--trace:{name}", with_opt(SIM, "--trace", "{file:" + name + "}", drop=WORKLOAD_OPTS), *shown)
    case(f"search--trace:{name}", with_opt(SEARCH, "--trace", "{file:" + name + "}", drop=WORKLOAD_OPTS), *shown)
# search needs a rate from the trace; a prompt beyond the model's context fits nowhere
one = add_file("one-request.jsonl", (EXAMPLES / "chat.jsonl").read_text().splitlines()[0] + "\n")
case("search--trace:one-request", with_opt(SEARCH, "--trace", "{file:" + one + "}", drop=WORKLOAD_OPTS), one, "--rate")
case("search--trace:one-request-with-rate", with_opt(SEARCH, "--trace", "{file:" + one + "}",
                                                     drop=("--workload", "--num-requests")), one, "arrive")
zero = add_file("all-at-zero.csv", "arrival_s,prompt_tokens,output_tokens\n0,10,5\n0,20,5\n0,30,5\n")
case("search--trace:all-at-zero", with_opt(SEARCH, "--trace", "{file:" + zero + "}", drop=WORKLOAD_OPTS), zero, "--rate")
case("search--trace:all-at-zero-with-rate", with_opt(SEARCH, "--trace", "{file:" + zero + "}",
                                                     drop=("--workload", "--num-requests")), zero, "arrive")
long_ = add_file("too-long.csv", "arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,200000,5\n2,30,5\n")
for base in (SIM, SEARCH):
    case(f"{base[0]}--trace:too-long", with_opt(base, "--trace", "{file:" + long_ + "}", drop=WORKLOAD_OPTS + (
        "--max-model-len",)), long_, "request 2")
big_cluster = add_file("cluster-too-big-to-search.yaml", "gpu: h100-sxm-80gb\nnodes: 1024\ngpus_per_node: 8\n")
case("search--cluster:too-big-to-search", with_opt(SEARCH, "--cluster", "{file:" + big_cluster + "}",
                                                   drop=("--gpu", "--gpus")), big_cluster, "4,096")
# size limits, refused before reading: a sparse 10 GiB trace
for argv in (["check", "{big}"], with_opt(SIM, "--trace", "{big}", drop=WORKLOAD_OPTS),
             with_opt(SEARCH, "--trace", "{big}", drop=WORKLOAD_OPTS)):
    case(f"{argv[0]}:sparse-10GiB", argv, "big.jsonl", "GiB")


# price files for --prices
for name, text, needle in (("prices-negative.yaml", "prices: {h100-sxm-80gb: -1}\n", "prices.h100-sxm-80gb"),
                           ("prices-not-a-map.yaml", "prices: 3\n", "prices"),
                           ("prices-euro.yaml", "currency: EUR\nprices: {h100-sxm-80gb: 2}\n", "currency"),
                           ("prices-typo.yaml", "price: {h100-sxm-80gb: 2}\n", "price"),
                           ("prices-text.yaml", "prices: {h100-sxm-80gb: cheap}\n", "prices.h100-sxm-80gb")):
    f = add_file(name, text)
    case(f"search:--prices={name}", with_opt(SEARCH, "--prices", "{file:" + f + "}"), name, needle)


# ---------------------------------------------------------------------------------------------
# measured runs, engine profiles, obsolete GPU-profile keys, HF quantisation, sweeps, plans, outputs:
# every reader refuses NaN, infinities, zero or negative measured figures, missing measured columns,
# absurd counts, unknown backends and contradictions, and every output path is checked before work
_RUNS = ROOT / "tests" / "fixtures" / "runs"
_RUN_OPTS = ["--gpu", GPU, "--engine", "vllm@0.11.0", "--plan", "tp=1"]


def _run_cmds(file_arg: str) -> list[list[str]]:
    """calibrate and validate of one run file (calibrate would fit: the error must come first)."""
    return [["calibrate", file_arg, *_RUN_OPTS, "--fit", "host.frontend_ms", "--rounds", "1"],
            ["validate", file_arg, *_RUN_OPTS]]


def vllm_bench_files() -> list[tuple[str, tuple[str, ...]]]:
    base = json.loads((_RUNS / "vllm-bench-llama8b-h100-c1.json").read_text())
    nan = float("nan")
    out = []
    for field, tags in (("mean_ttft_ms", {"nan": nan, "zero": 0, "neg": -5.0, "empty": "", "inf": "inf", "text": "fast",
                                          "huge": 1e12}),
                        ("mean_tpot_ms", {"nan": nan, "zero": 0.0, "neg": -1, "empty": "", "null": None}),
                        ("max_concurrency", {"zero": 0, "huge": 1e12, "frac": 2.5, "neg": -4, "text": "many"}),
                        ("completed", {"huge": 1e12, "text": "two", "neg": -1}),
                        ("total_input_tokens", {"huge": 1e15, "nan": nan, "neg": -10}),
                        ("total_output_tokens", {"huge": 1e15}),
                        ("request_rate", {"zero": 0, "neg": -1, "text": "fast"}),
                        ("backend", {"tgi": "tgi", "lmdeploy": "lmdeploy"})):
        for tag, value in tags.items():
            doc = dict(base, **{field: value})
            if field.startswith("total_"):          # per-request lengths would win over the totals
                doc = {k: v for k, v in doc.items() if k not in ("input_lens", "output_lens")}
            name = add_file(f"run-vllm-{field}-{tag}.json", json.dumps(doc))
            out.append((name, (field,)))
    doc = {k: v for k, v in base.items() if k != "mean_tpot_ms"}
    out.append((add_file("run-vllm-no-mean_tpot_ms.json", json.dumps(doc)), ("mean_tpot_ms",)))
    doc = dict(base, completed=None, num_prompts=None)
    out.append((add_file("run-vllm-no-count.json", json.dumps(doc)), ("num_prompts",)))
    latin = json.dumps(dict(base, label="caf\u00e9"), ensure_ascii=False).encode("latin-1")
    out.append((add_file("run-vllm-latin1.json", latin), ("UTF-8",)))
    aip = json.loads((_RUNS / "profile_export_aiperf.json").read_text())
    for key, value, field in (("time_to_first_token", {"unit": "ms", "avg": 0}, "time_to_first_token"),
                              ("inter_token_latency", {"unit": "ms", "avg": -2}, "inter_token_latency"),
                              ("inter_token_latency", {"unit": "fortnights", "avg": 2}, "inter_token_latency"),
                              ("request_count", {"unit": "requests", "avg": 1e12}, "request_count")):
        name = add_file(f"run-aiperf-{key}-{len(out)}.json", json.dumps(dict(aip, **{key: value})))
        out.append((name, (field,)))
    return out


_SILICON_ROW = {"id": "r1", "backend": "vllm", "backend_version": "0.11.0", "model_path": "meta-llama/Llama-3.1-8B",
                "system": "h100_sxm", "precision": "bf16", "mode": "agg", "isl": "1024", "osl": "128",
                "batch_size": "8", "tp_size": "1", "pp_size": "1", "attention_dp_size": "", "moe_tp_size": "",
                "moe_ep_size": "", "silicon_ttft_ms": "50.0", "silicon_tpot_ms": "10.0", "concurrency": "8"}
_REPLAY_ROW = {"experiment": "e1", "model": MODEL, "weight_dtype": "bf16", "kv_dtype": "bf16", "activation_scales": "",
               "gpu": GPU, "gpus": "1", "dp": "1", "tp": "1", "pp": "1", "engine": "vllm-0.6.0",
               "gpu_memory_utilization": "0.9", "max_model_len": "", "custom_allreduce": "True",
               "trace": "replay-trace.jsonl", "ttft_mean_s": "0.05", "tpot_mean_s": "0.01"}


def _csv(row: dict, drop: str | None = None) -> str:
    keys = [k for k in row if k != drop]
    return ",".join(keys) + "\n" + ",".join(row[k] for k in keys) + "\n"


def run_csv_files() -> list[tuple[str, tuple[str, ...]]]:
    add_file("replay-trace.jsonl", "".join((EXAMPLES / "chat.jsonl").read_text().splitlines(True)[:20]))
    out = []
    silicon = {"silicon_ttft_ms": ("nan", "0", "-3", "", "inf", "abc"), "silicon_tpot_ms": ("NaN", "0", ""),
               "concurrency": ("0", "1e12", "-2"), "batch_size": ("0", "1e12"), "backend": ("tgi", "vllmm"),
               "tp_size": ("-1", "two", "0", "3"), "pp_size": ("0", "9999"), "isl": ("0", "-5", "1e15", ""),
               "osl": ("0", ""), "system": ("tpu_v5",), "precision": ("fp7",), "model_path": ("",)}
    for field, values in silicon.items():
        for i, v in enumerate(values):
            row = dict(_SILICON_ROW, **{field: v})
            if field == "concurrency" and v in ("0",):
                row["batch_size"] = ""
            out.append((add_file(f"run-silicon-{field}-{i}.csv", _csv(row)), (field,)))
    for col in ("silicon_ttft_ms", "silicon_tpot_ms", "isl"):
        out.append((add_file(f"run-silicon-no-{col}.csv", _csv(_SILICON_ROW, drop=col)), (col,)))
    replay = {"dp": ("0", "two", "-1", "1.5"), "tp": ("-1", "0", "3", "8", "x"), "pp": ("0", "1e9"),
              "gpus": ("0", "two"), "ttft_mean_s": ("nan", "0", "-0.1", "", "1e9"), "tpot_mean_s": ("NaN", "0", ""),
              "engine": ("tgi-1.0", "vllm-"), "gpu_memory_utilization": ("1.5", "nan", "-1"),
              "max_model_len": ("0", "1e12"), "weight_dtype": ("bf61",), "trace": ("missing.jsonl",),
              "gpu": ("h1OO",)}
    for field, values in replay.items():
        for i, v in enumerate(values):
            needles = (field,) if not (field in ("tp", "gpus") and v in ("3", "8")) else (f"tp{v}", "GPUs")
            if field == "engine" and v == "vllm-":
                needles = ("version",)
            out.append((add_file(f"run-replay-{field}-{i}.csv", _csv(dict(_REPLAY_ROW, **{field: v}))), needles))
    for col in ("ttft_mean_s", "tpot_mean_s", "tp"):
        out.append((add_file(f"run-replay-no-{col}.csv", _csv(_REPLAY_ROW, drop=col)), (col,)))
    out.append((add_file("run-replay-short-row.csv", _csv(_REPLAY_ROW).rstrip("\n").rsplit(",", 1)[0] + "\n"),
                ("fields",)))
    out.append((add_file("run-replay-latin1.csv", _csv(dict(_REPLAY_ROW, experiment="caf\u00e9")).encode("latin-1")),
                ("UTF-8",)))
    return out


for name, needles in vllm_bench_files() + run_csv_files():
    for argv in _run_cmds("{file:" + name + "}") + [["check", "{file:" + name + "}"]]:
        case(f"{argv[0]}:{name}", argv, name, *needles)
# plans and options of calibrate / validate, checked by the rules simulate and search use
_AIP = str(_RUNS / "profile_export_aiperf.json")
for _cmd in _run_cmds(_AIP):
    c0 = _cmd[0]
    for plan in ("tp=3", "tp=64", "dp=0", "tp=2,ep=2", "pp=64", "tp=6"):
        case(f"{c0}:--plan={plan}:rules", with_opt(_cmd, "--plan", plan), "--plan")
    case(f"{c0}:--engine=vllm@", with_opt(_cmd, "--engine", "vllm@"), "--engine", "version")
    case(f"{c0}:--engine=sglang-vs-vllm-file", with_opt(_cmd, "--engine", "sglang") if False else
         [c0, str(_RUNS / "vllm-bench-llama8b-h100-c1.json"), "--gpu", GPU, "--engine", "sglang"], "--engine", "vllm")
for v in ("-0.1", "nan", "abc", "11", "inf", ""):
    case(f"search:--headroom={v!r}", with_opt(SEARCH, "--headroom", v), "--headroom")
case("calibrate:--folds=1", with_opt(_run_cmds(_AIP)[0], "--folds", "1"), "--folds")
for v in ("", ",", "host.step_ms,"):
    case(f"calibrate:--fit={v!r}:empty", with_opt(_run_cmds(_AIP)[0], "--fit", v), "--fit")
for base in (SIM, SEARCH):
    for v in ("vllm@", "sglang@", "@0.11.0"):
        case(f"{base[0]}:--engine={v!r}:empty-version", with_opt(base, "--engine", v), "--engine")
# outputs checked before any work: a missing folder, a place nothing can be created
for _argv, opt in ((with_opt(_run_cmds(_AIP)[0], "--output", "/nonexistent-dir/x.yaml"), "--output"),
                   (with_opt(_run_cmds(_AIP)[0], "--output", "/proc/apex-plan-x.yaml"), "--output"),
                   (with_opt(_run_cmds(_AIP)[1], "--output", "/proc/apex-plan-x.json"), "--output"),
                   (SEARCH + ["--report", "/proc/apex-plan-x.html"], "--report"),
                   (SEARCH + ["--plot", "/proc/apex-plan-x.svg"], "--plot"),
                   (SIM + ["--report", "/proc/apex-plan-x.html"], "--report"),
                   (SIM + ["--output", "/proc/apex-plan-x.json"], "--output"),
                   (SEARCH + ["--output", "/proc/apex-plan-x.json"], "--output"),
                   (SWEEP + ["--output", "/proc/apex-plan-x.jsonl"], "--output"),
                   (SWEEP + ["--report", "/proc/apex-plan-x.html"], "--report")):
    case(f"{_argv[0]}:{opt}-unwritable:{_argv[-1]}", _argv, opt)


def engine_profile_files() -> list[tuple[str, tuple[str, ...]]]:
    base = yaml.safe_load((ROOT / "engine_profiles" / "vllm-v1.yaml").read_text())
    out = []
    muts = {"scheduler.token_budget": (0,), "scheduler.max_num_seqs": (0, -1, 1.5), "host.overlap": (2.5, -0.5),
            "host.step_ms": (float("nan"), float("inf"), "fast"), "scheduler.block_size": (0,),
            "memory.gpu_memory_utilization": (0, 1.5), "scheduler.watermark_fraction": (2,),
            "min_version": ("2.0.0", "abc"), "scheduler.foo": (1,), "host.step_overhead_ms": (2,),
            "memory.engine_reserve_gib": (1,), "host.frontend_latency_ms": (10,)}
    for field, values in muts.items():
        for i, v in enumerate(values):
            doc = yaml.safe_load(yaml.safe_dump(base))
            if "." in field:
                sec, key = field.split(".")
                doc[sec][key] = v
            else:
                doc[field] = v
            out.append((add_file(f"engine-{field}-{i}.yaml", yaml.safe_dump(doc)), (field,)))
    return out


for name, needles in engine_profile_files():
    for base in (SIM, SEARCH, _run_cmds(_AIP)[1]):
        case(f"{base[0]}--engine:{name}", with_opt(base, "--engine", "{file:" + name + "}"), name, *needles)
    case(f"check:{name}", ["check", "{file:" + name + "}"], name, *needles)


def moved_gpu_keys() -> list[tuple[str, tuple[str, ...]]]:
    """GPU profiles with the engine keys that moved to engine profiles: each names its replacement."""
    from apex_plan.hardware.load import MOVED_TO_ENGINE
    base = yaml.safe_load((ROOT / "hardware_profiles" / f"{GPU}.yaml").read_text())
    out = []
    for key, new in MOVED_TO_ENGINE.items():
        for tag, value in (("nan", float("nan")), ("text", "fast"), ("ok", 1.0)):
            doc = yaml.safe_load(yaml.safe_dump(base))
            doc["calibration"][key] = value
            out.append((add_file(f"gpu-moved-{key}-{tag}.yaml", yaml.safe_dump(doc)), (key, new)))
    return out


for name, needles in moved_gpu_keys():
    for argv in (["check", "{file:" + name + "}"], ["hardware", "{file:" + name + "}"],
                 with_opt(SIM, "--gpu", "{file:" + name + "}")):
        case(f"{argv[0]}:{name}", argv, name, *needles)


def hf_quant_files() -> list[tuple[str, tuple[str, ...]]]:
    base = yaml.safe_load((ROOT / "models" / f"{MODEL}.yaml").read_text())
    out = []
    for tag, extra, field in (("method", {"quantization_config": {"quant_method": "xyz"}}, "quant_method"),
                              ("bnb", {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
                               "quant_method"),
                              ("string", {"quantization_config": "fp8"}, "quantization_config"),
                              ("list", {"quantization_config": ["fp8"]}, "quantization_config"),
                              ("ct-nothing", {"quantization_config": {"quant_method": "compressed-tensors"}},
                               "quantization_config"),
                              ("dtype", {"torch_dtype": "float99"}, "torch_dtype"),
                              ("dtype2", {"dtype": 16}, "dtype")):
        name = add_file(f"cfg-quant-{tag}/config.json", json.dumps(dict(base, **extra)))
        out.append((name, (field,)))
    return out


for name, needles in hf_quant_files():
    for argv in (["models", "{file:" + name + "}"], with_opt(SIM, "--model", "{file:" + name + "}"),
                 with_opt(SEARCH, "--model", "{file:" + name + "}"), ["check", "{file:" + name + "}"]):
        case(f"{argv[0]}:{name}", argv, "config.json", *needles)

_SC = {"model": MODEL, "gpu": GPU, "gpus": 1, "workload": "chat", "rate": 1}
for tag, doc, needles in (
        ("price-unknown-gpu", {"scenarios": [_SC], "prices": {"h100": 2.5}}, ("prices.h100",)),
        ("price-nan", {"scenarios": [_SC], "prices": {GPU: float("nan")}}, ("prices.",)),
        ("price-inf", {"scenarios": [_SC], "prices": {GPU: float("inf")}}, ("prices.",)),
        ("price-neg", {"scenarios": [_SC], "prices": {GPU: -1}}, ("prices.",)),
        ("price-bool", {"scenarios": [_SC], "prices": {GPU: True}}, ("prices.",)),
        ("dup-names", {"scenarios": [dict(_SC, name="a"), dict(_SC, name="a", rate=2)]}, ("'a'",))):
    name = add_file(f"sweep-{tag}.yaml", yaml.safe_dump(doc))
    case(f"sweep:{name}", ["sweep", "{file:" + name + "}", "--output", "{file:out-" + tag + ".jsonl}"], name, *needles)
    case(f"check:{name}", ["check", "{file:" + name + "}"], name, *needles)

# ---------------------------------------------------------------------------------------------
# the 2026 families' per-layer fields (their published config.json files, one field broken): DeciLM
# block_configs, DeepSeek-V4 compress_ratios, MiMo-V2 hybrid_layer_pattern, Step-3.7 layer_types,
# MiniMax-M3 moe_layer_freq, Kimi-K3 linear_attn_config.kda_layers

CARDS = ROOT / "tests" / "fixtures" / "model_cards"


def _decilm_block(doc: dict, part: str, **fields) -> dict:
    """The DeciLM config with block 0's `part` (attention / ffn) fields set."""
    blocks = [json.loads(json.dumps(b)) for b in doc["block_configs"]]
    blocks[0][part].update(fields)
    return dict(doc, block_configs=blocks)


def family_files() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    load = {f: json.loads((CARDS / f"{f}.json").read_text()) for f in
            ("decilm_nemotron_super_49b", "deepseek_v4_flash", "mimo_v2_flash", "step3p7_flash", "minimax_m3",
             "kimi_k3")}
    nas, v4, mimo = load["decilm_nemotron_super_49b"], load["deepseek_v4_flash"], load["mimo_v2_flash"]
    n_v4, n_mimo = v4["num_hidden_layers"], mimo["num_hidden_layers"]
    k3 = load["kimi_k3"]
    k3_text = k3["text_config"]
    muts = [
        ("nas-blocks-text", dict(nas, block_configs="all"), "block_configs"),
        ("nas-blocks-short", dict(nas, block_configs=nas["block_configs"][:5]), "block_configs"),
        ("nas-blocks-scalars", dict(nas, block_configs=[1] * nas["num_hidden_layers"]), "block_configs"),
        ("nas-noop-text", _decilm_block(nas, "attention", no_op="false"), "block_configs[0].attention.no_op"),
        ("nas-linear-num", _decilm_block(nas, "ffn", replace_with_linear=1.5), "block_configs[0].ffn.replace_with_linear"),
        ("nas-group-7", _decilm_block(nas, "attention", n_heads_in_group=7), "n_heads_in_group"),
        ("nas-group-0", _decilm_block(nas, "attention", n_heads_in_group=0), "n_heads_in_group"),
        ("nas-group-text", _decilm_block(nas, "attention", n_heads_in_group="8"), "n_heads_in_group"),
        ("nas-group-none", _decilm_block(nas, "attention", n_heads_in_group=None), "n_heads_in_group"),
        ("nas-mult-neg", _decilm_block(nas, "ffn", ffn_mult=-1.0), "block_configs[0].ffn.ffn_mult"),
        ("nas-mult-text", _decilm_block(nas, "ffn", ffn_mult="5.25"), "block_configs[0].ffn.ffn_mult"),
        ("nas-mult-nan", _decilm_block(nas, "ffn", ffn_mult=float("nan")), "block_configs[0].ffn.ffn_mult"),
        ("nas-sparsify", _decilm_block(nas, "ffn", sparsify={"ratio": 0.5}), "block_configs[0].ffn.sparsify"),
        ("nas-attn-list", dict(nas, block_configs=[dict(nas["block_configs"][0], attention=[1])]
                                + nas["block_configs"][1:]), "block_configs[0].attention"),
        ("v4-ratio-7", dict(v4, compress_ratios=[7] * n_v4), "compress_ratios"),
        ("v4-ratio-text", dict(v4, compress_ratios="4"), "compress_ratios"),
        ("v4-ratio-short", dict(v4, compress_ratios=[4, 128]), "compress_ratios"),
        ("v4-window-0", dict(v4, sliding_window=0), "sliding_window"),
        ("v4-topk-neg", dict(v4, index_topk=-512), "index_topk"),
        ("v4-olora-text", dict(v4, o_lora_rank="1024"), "o_lora_rank"),
        ("mimo-pattern-2", dict(mimo, hybrid_layer_pattern=[2] * n_mimo), "hybrid_layer_pattern"),
        ("mimo-pattern-short", dict(mimo, hybrid_layer_pattern=[0, 1]), "hybrid_layer_pattern"),
        ("mimo-moe-bool", dict(mimo, moe_layer_freq=[True] * n_mimo), "moe_layer_freq"),
        ("step-types-global", dict(load["step3p7_flash"], layer_types=["global"] * 60), "layer_types"),
        ("step-types-text", dict(load["step3p7_flash"], layer_types="full_attention"), "layer_types"),
        ("minimax-freq-short", dict(load["minimax_m3"], moe_layer_freq=[1, 1]), "moe_layer_freq"),
        ("k3-kda-zero", dict(k3, text_config=dict(k3_text, linear_attn_config=dict(
            k3_text["linear_attn_config"], kda_layers=[0, 1]))), "kda_layers"),
        ("k3-kda-beyond", dict(k3, text_config=dict(k3_text, linear_attn_config=dict(
            k3_text["linear_attn_config"], kda_layers=[1, 9999]))), "kda_layers"),
        ("k3-kda-text", dict(k3, text_config=dict(k3_text, linear_attn_config=dict(
            k3_text["linear_attn_config"], kda_layers="1-69"))), "kda_layers"),
        ("k3-lin-list", dict(k3, text_config=dict(k3_text, linear_attn_config=[1])), "linear_attn_config"),
    ]
    for tag, doc, field in muts:
        out.append((add_file(f"fam-{tag}/config.json", json.dumps(doc)), (field,)))
    return out


# a modelopt quantisation companion beside a config.json that states no quantization_config (NVFP4 exports)
_LLAMA_CFG = json.loads(json.dumps(yaml.safe_load((ROOT / "models" / f"{MODEL}.yaml").read_text())))
for tag, companion in (("malformed", "{\"quantization\": "), ("latin1", '{"quantization": {"quant_algo": "caf\u00e9"}}'),
                       ("not-a-map", '{"quantization": "NVFP4"}'), ("list", "[1, 2]")):
    cfg_name = add_file(f"comp-{tag}/config.json", json.dumps({k: v for k, v in _LLAMA_CFG.items()
                                                              if k not in ("name", "source", "aliases")}))
    FILES[f"comp-{tag}/hf_quant_config.json"] = companion.encode("latin-1")
    for cmd in (["check"], ["models"]):
        case(f"{cmd[0]}:{cfg_name}", [*cmd, "{file:" + cfg_name + "}"], "hf_quant_config.json")
    case(f"search--model:{cfg_name}", with_opt(SEARCH, "--model", "{file:" + cfg_name + "}"), "hf_quant_config.json")

for name, needles in family_files():
    shown = (Path(name).parent.name,) + needles
    case(f"check:{name}", ["check", "{file:" + name + "}"], *shown)
    case(f"models:{name}", ["models", "{file:" + name + "}"], *shown)
    case(f"search--model:{name}", with_opt(SEARCH, "--model", "{file:" + name + "}"), *shown)

# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-input")
    for name, content in FILES.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    big = d / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)        # sparse: no disk used
    (d / "folder").mkdir()
    return d


def _fill(arg: str, d: Path) -> str:
    if arg.startswith("{file:"):
        return str(d / arg[6:-1])
    return {"{dir}": str(d / "folder"), "{big}": str(d / "big.jsonl")}.get(arg, arg)


def test_suite_is_large_and_covers_everything():
    assert len(CASES) >= 1000, len(CASES)
    kinds = {"model-", "cfg-", "gpu-", "cluster-", "apex-", "csv-", "burstgpt-", "azure-", "mooncake-", "session-",
             "fam-nas-", "fam-v4-", "fam-mimo-", "fam-step-", "fam-minimax-", "fam-k3-"}
    for k in kinds:
        assert any(k in cid for cid in CASES), k
    from apex_plan.cli import app
    import typer.main
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        for p in cmd.params:
            if p.param_type_name == "option" and "--help" not in p.opts:
                spellings = p.opts + p.secondary_opts
                assert any(any(f"{s}=" in c or f":{s}" in c for s in spellings) for c in CASES), (name, spellings)


@pytest.mark.parametrize("cid", list(CASES))
def test_bad_input(cid, workdir, capsys, monkeypatch):
    argv, needles = CASES[cid]
    monkeypatch.setattr(sys, "argv", ["apex-plan", *(_fill(a, workdir) for a in argv)])
    monkeypatch.setenv("COLUMNS", "80")
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main()
    elapsed = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert e.value.code == 2, (e.value.code, err, out[:300])
    assert "Traceback" not in err + out
    if argv[0] != "check":
        assert out == "", out[:300]
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(("apex-plan: error: ", "bad ") if argv[0] == "check" else "apex-plan: error: "), line
    assert line.rstrip().endswith(")") and " (" in line, f"no fix in: {line}"
    for needle in needles:
        alternatives = needle if isinstance(needle, tuple) else (needle,)
        assert any(n in line for n in alternatives), (needle, line)
    assert elapsed < 10.0, elapsed
