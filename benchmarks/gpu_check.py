"""The prepared GPU check: do training and evaluation run on a GPU, give the CPU's numbers there,
and how fast is our DPO trainer next to TRL's on it? One command, under 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out gpu-check.json] [--bundle DIR] [--quick]

Checks, each recorded in the JSON (`passed` per check, and overall):
  dpo_fp32        our DPO trainer on the device, fp32, on the tiny model (2 layers, SmolLM2's vocabulary,
                  random weights) and random pairs: step-0 loss = log 2 to 1e-6, and every step's loss
                  equals a CPU run's (its own process) to 1e-4.
  dpo_bf16        the same with bf16 autocast (GPU only): step-0 loss log 2 to 1e-2, losses within
                  5e-2 of the CPU's fp32 run (bf16 keeps 8 bits of mantissa).
  dpo_checkpointing  fp32 with gradient checkpointing on: the same losses as the CPU's run to 1e-4
                  (recomputing activations changes memory, not numbers).
  judge           the local logprob judge (pointwise_fewshot) on the device: its scores equal the
                  CPU's to 1e-4.
  eval_sampling   evaluation sampling (greedy) on the device: its recorded log-probs equal a CPU
                  forward of the same tokens to 1e-3 per token (same tokens as the CPU: reported).
  throughput      our trainer vs TRL's DPOTrainer on the same pairs, batches and steps (benchmarks/dpo.py's
                  children), fp32, on a model of SmolLM2-135M's shape with random weights (--quick: the
                  tiny model); each trainer keeps its defaults (ours: reference once, TRL: every step).
The last line is `RESULT gpu_dpo_vs_trl <ours/TRL tokens per second>`.

Offline GPU machines (no package registry): first, on a machine with PyPI,
    python benchmarks/gpu_check.py --make-bundle .gpu-bundle [--python-version 3.12]
downloads the pure-Python and manylinux wheels the check may lack (pinned to this venv's versions)
and saves SmolLM2's tokenizer (the GGUF itself is too big to carry). On the GPU machine,
`--bundle .gpu-bundle` installs, into .gpu-bundle/site (with --no-deps, no index), only those
the machine's Python cannot import or has too old, and puts them on the path.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the GPU machine has no installed rlaif: the repository is the package

# What the check imports beyond torch, transformers, peft, accelerate and pyarrow (the GPU machine
# has those): distribution name -> import name. Versions are pinned to this venv's at bundle time.
BUNDLED = {
    "pydantic": "pydantic", "pydantic-core": "pydantic_core", "annotated-types": "annotated_types",
    "typing-inspection": "typing_inspection", "typing-extensions": "typing_extensions",
    "trl": "trl", "datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess", "xxhash": "xxhash",
    "fsspec": "fsspec", "pandas": "pandas", "python-dateutil": "dateutil", "pytz": "pytz", "tzdata": "tzdata",
    "six": "six", "jinja2": "jinja2", "markupsafe": "markupsafe", "pyyaml": "yaml", "psutil": "psutil",
}


# ---- bundle (on a machine with PyPI) and install (on the GPU machine) ---------------------------

def make_bundle(directory: Path, python_version: str) -> None:
    from transformers import AutoTokenizer

    from lm.embedded import gguf_path

    wheels = directory / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in BUNDLED]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
               "--python-version", python_version, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
               "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "--platform", "any", *pins]
    subprocess.run(command, check=True)
    source = gguf_path()
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(directory / "tokenizer")
    (directory / "pins.json").write_text(json.dumps(pins, indent=1))
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20
    print(f"bundle: {directory} ({size:.1f} MiB): {len(pins)} wheels and SmolLM2's tokenizer")


def install_bundle(directory: Path) -> list[str]:
    """Install the bundle's wheels the running Python lacks (or has older) into DIR/site; returns them."""
    pins = json.loads((directory / "pins.json").read_text())
    site = directory / "site"
    missing = []
    for pin in pins:
        name, version = pin.split("==")
        try:
            have = importlib.metadata.version(name)
            if _version_tuple(have) >= _version_tuple(version):
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        missing.append(name)
    if missing:
        wheels = [str(w) for w in (directory / "wheels").glob("*.whl")
                  if w.name.split("-")[0].lower().replace("_", "-") in {m.lower() for m in missing}]
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", str(site),
                        *wheels], check=True)
    sys.path.insert(0, str(site))
    return missing


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


# ---- models and data ----------------------------------------------------------------------------

def tokenizer_dir(bundle: Path | None, tmp: Path) -> Path:
    if bundle is not None and (bundle / "tokenizer").is_dir():
        return bundle / "tokenizer"
    from transformers import AutoTokenizer

    from lm.embedded import gguf_path

    source = gguf_path()
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(tmp / "tokenizer")
    return tmp / "tokenizer"


def build_model(out: Path, tokenizer: Path, shape: str) -> Path:
    """A Llama with SmolLM2's vocabulary and random (seeded) weights: `tiny` (2 layers, as the test
    suite's) or `smollm2` (SmolLM2-135M's shape: 30 layers, hidden 576)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    sizes: dict[str, Any] = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
             "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3)}[shape]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, **sizes)
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    return out


def random_pairs(checkpoint: Path, n: int, completion_tokens: tuple[int, int], seed: int = 0) -> list[dict]:
    """Pairs of real chat-templated prompts with random completion tokens ending in <|im_end|>
    (benchmarks/dpo.py's data format)."""
    import torch

    from lm.loading import encode_chat, load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    g = torch.Generator().manual_seed(seed)
    low, high = completion_tokens
    pairs = []
    for i in range(n):
        prompt = encode_chat(tokenizer, "You are a support agent.", f"Where is my order #LS-{1000 + i}? It has been {i + 3} days.")
        lengths = torch.randint(low, high + 1, (2,), generator=g).tolist()
        chosen, rejected = (torch.randint(100, 49000, (k,), generator=g).tolist() + [tokenizer.eos_token_id] for k in lengths)
        pairs.append({"pair_id": str(i), "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                      "eos": tokenizer.eos_token_id})
    return pairs


# ---- the checks ---------------------------------------------------------------------------------

def train_losses(checkpoint: Path, pairs: list[dict], device: str, bf16: bool, checkpointing: bool) -> list[float]:
    """Per-step losses of our trainer (run in a child process: accelerate's state is per process)."""
    from lm.loading import load_model, load_tokenizer
    from training.pairs import PreferencePair
    from training.trainer import DPOParams, add_lora, train_dpo

    params = DPOParams(batch_size=4, epochs=2, lora_r=4, learning_rate=1e-2, bf16=bf16, gradient_checkpointing=checkpointing,
                       shuffle=False, reference="forward")
    model = add_lora(load_model(checkpoint, device=device), params, seed=0)
    result = train_dpo(model, [PreferencePair(**{k: v for k, v in p.items() if k != "eos"}) for p in pairs], params,
                       load_tokenizer(checkpoint).pad_token_id)
    return [m.loss for m in result.metrics]


def child(args: argparse.Namespace) -> None:
    data = json.loads(args.data.read_text())
    losses = train_losses(args.checkpoint, data, args.device, args.child == "train-bf16", args.child == "train-checkpointing")
    print("CHILD " + json.dumps({"losses": losses}), flush=True)


def run_child(script: Path, *arguments: str) -> dict:
    """Run `script` as a child process (this one's, or benchmarks/dpo.py's) and read its CHILD line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path[:2] + [os.environ.get("PYTHONPATH", "")] if p)}
    out = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("CHILD ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{script.name} {' '.join(arguments[:2])} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(line[len("CHILD "):])


def check_dpo(checkpoint: Path, data: Path, device: str, cpu_losses: list[float], mode: str) -> dict:
    """mode: fp32, bf16 or checkpointing (fp32 with gradient checkpointing)."""
    bf16 = mode == "bf16"
    losses = run_child(Path(__file__), "--child", f"train-{mode}", "--checkpoint", str(checkpoint),
                       "--data", str(data), "--device", device)["losses"]
    step0_tol, step_tol = (1e-2, 5e-2) if bf16 else (1e-6, 1e-4)
    gap = max(abs(a - b) for a, b in zip(losses, cpu_losses))
    return {"device": device, "losses": losses, "cpu_fp32_losses": cpu_losses, "max_gap_to_cpu": gap,
            "step0_minus_log2": losses[0] - math.log(2), "tolerances": {"step0": step0_tol, "steps": step_tol},
            "passed": abs(losses[0] - math.log(2)) <= step0_tol and gap <= step_tol and len(losses) == len(cpu_losses)}


def check_judge(checkpoint: Path, device: str) -> dict:
    from constitution.loader import load_constitution
    from judges.local_logprob import LocalLogprobJudge
    from judges.pointwise import question
    from lm.loading import load_model, load_tokenizer

    constitution = load_constitution("bundled:support")
    tokenizer = load_tokenizer(checkpoint)
    scores = {}
    for where in ("cpu", device):
        judge = LocalLogprobJudge(load_model(checkpoint, device=where), tokenizer, "tiny", formulation="pointwise_fewshot")
        turns = judge._examples(constitution, constitution.principles)
        asked = [(reply, p) for reply in ("It left today.", "Send me your password now.") for p in constitution.principles[:4]]
        prompts = [judge._chat_ids(turns, question(judge.template, p, "Where is my parcel?", reply)) for reply, p in asked]
        groups = [reply for reply, _ in asked]  # each reply's cache serves its four principles, as in a round
        scores[where] = [x for pair in judge._score(prompts, judge._prefix_ids(turns), groups, lambda d, t: None) for x in pair]
    gap = max(abs(a - b) for a, b in zip(scores["cpu"], scores[device]))
    return {"device": device, "n_scores": len(scores[device]), "max_gap_to_cpu": gap, "tolerance": 1e-4, "passed": gap <= 1e-4}


def check_eval_sampling(checkpoint: Path, device: str) -> dict:
    import torch

    from lm.loading import encode_chat, load_model, load_tokenizer
    from lm.logprobs import collate, sequence_logps
    from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample

    tokenizer = load_tokenizer(checkpoint)
    requests = [SampleRequest(key=str(i), system="You are a support agent.", user=u) for i, u in
                enumerate(["My parcel arrived crushed.", "How do I cancel my membership?", "I was charged twice."])]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=24, batch_size=3)
    prompts = [encode_chat(tokenizer, r.system, r.user) for r in requests]
    cpu_model = load_model(checkpoint, device="cpu")
    cpu_tokens = [s.token_ids for s in sample(TransformersSampler(cpu_model, tokenizer), requests, params, seed=0)]
    samples = sample(TransformersSampler(load_model(checkpoint, device=device), tokenizer), requests, params, seed=0)
    # The device's recorded log-probs must be the CPU model's log-probs of the same tokens. (Greedy
    # tokens may differ from the CPU's where a random model has near-ties: reported, not required.)
    with torch.no_grad():
        forward = sequence_logps(cpu_model, collate(prompts, [s.token_ids for s in samples], tokenizer.pad_token_id))
    gap = max(abs(float(f) - s.sum_logprob) / len(s.token_ids) for f, s in zip(forward, samples))
    return {"device": device, "same_tokens_as_cpu": cpu_tokens == [s.token_ids for s in samples],
            "max_logprob_gap_per_token": gap, "tolerance": 1e-3, "passed": gap <= 1e-3}


def check_throughput(checkpoint: Path, data: Path, device: str, steps: int) -> dict:
    sides = {}
    for name in ("ours", "trl"):
        sides[name] = run_child(REPO / "benchmarks" / "dpo.py", "--child", name, "--data", str(data), "--checkpoint", str(checkpoint),
                                "--device", device, "--batch-size", "4" if steps < 10 else "8", "--steps", str(steps))
    ratio = sides["ours"]["tokens_per_s"] / sides["trl"]["tokens_per_s"]
    return {"device": device, "ours": sides["ours"], "trl": sides["trl"], "ours_vs_trl": ratio, "passed": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default when there is a GPU) or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--bundle", type=Path, help="install what is missing from this bundle first (see above)")
    parser.add_argument("--make-bundle", type=Path, metavar="DIR", help="download the bundle into DIR and stop")
    parser.add_argument("--python-version", default="3.12", help="--make-bundle: the GPU machine's Python")
    parser.add_argument("--quick", action="store_true", help="throughput on the tiny model (the test suite's --device cpu run)")
    parser.add_argument("--child", choices=["train-fp32", "train-bf16", "train-checkpointing"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bundle is not None:
        installed = install_bundle(args.bundle.resolve())
        print(f"installed from the bundle: {', '.join(installed) or 'nothing (all present)'}", flush=True)
    if args.make_bundle is not None:
        make_bundle(args.make_bundle.resolve(), args.python_version)
        return
    if args.child:
        child(args)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    results: dict = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                     "transformers": importlib.metadata.version("transformers"), "trl": importlib.metadata.version("trl"),
                     "checks": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = tokenizer_dir(args.bundle, tmp)
        tiny = build_model(tmp / "tiny", tokenizer, "tiny")
        data = tmp / "pairs.json"
        data.write_text(json.dumps(random_pairs(tiny, 8, (5, 12))))
        cpu_losses = run_child(Path(__file__), "--child", "train-fp32", "--checkpoint", str(tiny), "--data", str(data), "--device", "cpu")["losses"]
        checks = results["checks"]

        def timed(name: str, check, *arguments, **keywords) -> None:
            began = time.perf_counter()
            checks[name] = check(*arguments, **keywords) | {"seconds": time.perf_counter() - began}

        timed("dpo_fp32", check_dpo, tiny, data, device, cpu_losses, "fp32")
        if device != "cpu":
            timed("dpo_bf16", check_dpo, tiny, data, device, cpu_losses, "bf16")
        timed("dpo_checkpointing", check_dpo, tiny, data, device, cpu_losses, "checkpointing")
        timed("judge", check_judge, tiny, device)
        timed("eval_sampling", check_eval_sampling, tiny, device)
        for name, check in checks.items():
            print(f"{name:14s} {'passed' if check['passed'] else 'FAILED'}  "
                  f"{ {k: v for k, v in check.items() if k not in ('losses', 'cpu_fp32_losses', 'passed')} }", flush=True)
        shape = "tiny" if args.quick else "smollm2"
        model = tiny if shape == "tiny" else build_model(tmp / shape, tokenizer, shape)
        long_data = tmp / "long-pairs.json"
        long_data.write_text(json.dumps(random_pairs(model, 8 if args.quick else 64, (60, 200), seed=1)))
        timed("throughput", check_throughput, model, long_data, device, steps=2 if args.quick else 10)
        checks["throughput"]["model"] = shape
    results["passed"] = all(c["passed"] for c in results["checks"].values())
    results["minutes"] = (time.perf_counter() - started) / 60
    args.out.write_text(json.dumps(results, indent=1))
    t = results["checks"]["throughput"]
    print(f"throughput ({shape} model, {device}): ours {t['ours']['tokens_per_s']:.0f} tokens/s, "
          f"TRL {t['trl']['tokens_per_s']:.0f} tokens/s; all checks {'passed' if results['passed'] else 'FAILED'}; "
          f"{results['minutes']:.1f} min; results: {args.out}")
    print(f"RESULT gpu_dpo_vs_trl {t['ours_vs_trl']:.2f}")
    if not results["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
