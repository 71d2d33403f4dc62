"""Does the loop make the model better? Online rounds of the bundled support task with SmolLM2 on
this machine, then the held-out comparison of the last round's policy against round 0 (the base).

    .venv/bin/python benchmarks/outcome.py [--rounds 3] [--train-per-round 64] [--heldout 32] [--out DIR]
                                           [--set training.confounds=off ...]

Prints per round what was sampled, judged, trained and promoted, then the final comparison (raw and
length-controlled win rate, per-principle pass rates, mean length, judge consistency), writes the
HTML report of the last round to DIR/report.html and the comparison to DIR/outcome.json. Sampling
uses vLLM when `.venv-vllm` exists (`make vllm`), else transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from evals.report import render_html
from evals.report_data import build_report
from evals.stage import EvalOutcome
from flows.compare import compare_models
from flows.config import ConfigError, checked_config, load_config
from flows.loop import rlaif_loop
from flows.round import RoundSummary
from inputs.files import load_yaml
from store.db import Store

REPO = Path(__file__).resolve().parent.parent


def write_config(out: Path, args: argparse.Namespace) -> Path:
    """The demo config at benchmark size, with `--set SECTION.FIELD=VALUE` overrides (the CLI's own
    parser), written as one file that every process of the run reads."""
    config = load_yaml((resources.files("flows") / "demo.yaml").read_text())
    config["prompts"].update({"train_per_round": args.train_per_round, "heldout": args.heldout})
    config["sampler"].update({"max_new_tokens": args.max_new_tokens})
    config["eval"].update({"max_new_tokens": args.max_new_tokens})
    vllm_python = REPO / ".venv-vllm" / "bin" / "python"
    config["sampler"]["backend"] = "vllm" if vllm_python.exists() else "transformers"
    config["sampler"]["vllm"] = {"python": str(vllm_python)}
    config["store"] = {"path": str(out / "outcome.duckdb")}
    path = out / "outcome.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        final = load_config(path, args.set)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    path.write_text(yaml.safe_dump(final.model_dump(mode="json"), sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-per-round", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "outcome")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one config field (repeatable), e.g. training.mix_rounds=2")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the config's store path is written absolute: relative ones resolve from the config's folder
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = write_config(args.out, args)
    config = checked_config(load_config(config_path))

    started = time.perf_counter()
    rlaif_loop(config_path=str(config_path), rounds=args.rounds)
    loop_s = time.perf_counter() - started
    with Store(config.store, read_only=True) as store:
        rounds = [r for r in store.rounds() if r.status == "finished"][-args.rounds:]
        base = store.model_chain(rounds[0].policy_id)[0].model_id
        policy = store.current_policy()
        assert policy is not None  # the loop has run: the base model at least is promoted
        final = policy.model_id
        report = build_report(store, rounds[-1].round_index)
    (args.out / "report.html").write_text(render_html(report))

    print(f"\n{args.rounds} rounds in {loop_s / 60:.1f} min; per round:")
    print("round | policy            | pairs | consistent | qualified principles | DPO pairs | chosen longer | "
          "LC win | raw win (95% CI) | policy mean tokens | promoted")
    per_round = []
    for point, rnd in zip(report.history[-args.rounds:], rounds):
        s = RoundSummary.model_validate(rnd.summary_json)
        mean = sum(point.policy_lengths) / len(point.policy_lengths) if point.policy_lengths else float("nan")
        lc = "-" if point.lc_win_rate is None else f"{point.lc_win_rate.estimate:.2f}"
        raw = "-" if point.win_rate is None else f"{point.win_rate.estimate:.2f} ({point.win_rate.low:.2f}-{point.win_rate.high:.2f})"
        qualified = s.judge_gate.qualified
        longer = s.train.audit.chosen_longer_share if s.train.audit else None
        print(f"{rnd.round_index:5d} | {rnd.policy_id:17s} | {s.pairs_judged:5d} | {s.consistent_pairs:10d} | "
              f"{', '.join(qualified) or '-':20s} | {s.train.n_pairs:9d} | "
              f"{'-' if longer is None else f'{longer:.0%}':>13s} | {lc:>6s} | {raw:>16s} | {mean:18.1f} | "
              f"{'yes' if point.promoted else 'no'}")
        per_round.append({"round": rnd.round_index, "pairs_judged": s.pairs_judged, "consistent_pairs": s.consistent_pairs,
                          "qualified_principles": qualified, "trained_pairs": s.train.n_pairs,
                          "chosen_longer_share": longer, "policy_mean_tokens": mean, "promoted": point.promoted,
                          **({} if point.lc_win_rate is None or point.win_rate is None else {
                              "lc_win_rate": point.lc_win_rate.estimate, "lc_win_rate_ci": [point.lc_win_rate.low, point.lc_win_rate.high],
                              "win_rate": point.win_rate.estimate, "win_rate_ci": [point.win_rate.low, point.win_rate.high],
                              "samples_per_prompt": point.samples_per_prompt, "decision": point.verdict})})
    last = RoundSummary.model_validate(rounds[-1].summary_json)
    judge_id, trusted = last.judge_id, last.judge_gate.qualified

    started = time.perf_counter()
    outcome = compare_models(config, final, base)
    print(f"\nround {rounds[-1].round_index} policy {final} vs round 0 {base} on {outcome.prompts} held-out prompts x "
          f"{outcome.samples_per_prompt} samples ({(time.perf_counter() - started) / 60:.1f} min):")
    print(f"  win rate {outcome.raw.estimate:.3f} (95% CI {outcome.raw.low:.2f}-{outcome.raw.high:.2f}), "
          f"W/L/T {outcome.wins}/{outcome.losses}/{outcome.ties}; LC win rate {outcome.lc.estimate:.3f} "
          f"(95% CI {outcome.lc.low:.2f}-{outcome.lc.high:.2f}); judge position consistency {outcome.consistency:.0%}")
    print(f"  gate: {outcome.decision.reason}")
    print(f"  mean tokens {outcome.candidate.mean_tokens:.1f} vs {outcome.baseline.mean_tokens:.1f} "
          f"({outcome.candidate.mean_tokens / max(outcome.baseline.mean_tokens, 1e-9) - 1:+.0%})")
    for pid, rate in outcome.candidate.principle_pass.items():
        print(f"  pass {pid:24s} {rate:6.0%} vs {outcome.baseline.principle_pass.get(pid, float('nan')):6.0%}")
    for name, rate in outcome.candidate.probe_pass.items():
        print(f"  probe {name:23s} {rate:6.0%} vs {outcome.baseline.probe_pass.get(name, float('nan')):6.0%}")
    command = "python benchmarks/outcome.py " + " ".join(sys.argv[1:])
    (args.out / "outcome.json").write_text(json.dumps({"command": command, "rounds": args.rounds, "loop_minutes": loop_s / 60, "set": args.set,
                                                       "final": final, "base": base, "judge": judge_id,
                                                       "trusted_principles": trusted, "per_round": per_round,
                                                       **result_fields(outcome)}, indent=1))
    print(f"report: {args.out / 'report.html'}")
    print(f"RESULT outcome_lc_win_rate_last_vs_round0 {outcome.lc.estimate:.3f}")


def result_fields(outcome: EvalOutcome) -> dict:
    """A comparison as the flat fields earlier results files have, plus its size, intervals and decision."""
    return {"n": outcome.n, "wins": outcome.wins, "losses": outcome.losses, "ties": outcome.ties,
            "win_rate": outcome.raw.estimate, "win_rate_low": outcome.raw.low, "win_rate_high": outcome.raw.high,
            "lc_win_rate": outcome.lc.estimate, "lc_win_rate_low": outcome.lc.low, "lc_win_rate_high": outcome.lc.high,
            "lc_plain": outcome.lc_plain.estimate, "length_coef": outcome.length_coef, "consistency": outcome.consistency,
            "prompts": outcome.prompts, "samples_per_prompt": outcome.samples_per_prompt,
            "minimum_detectable": outcome.minimum_detectable, "decision": outcome.decision.verdict,
            "decision_reason": outcome.decision.reason,
            "differences": {name: d.model_dump() for name, d in outcome.differences.items()},
            "candidate": outcome.candidate.model_dump(), "baseline": outcome.baseline.model_dump()}

if __name__ == "__main__":
    main()
