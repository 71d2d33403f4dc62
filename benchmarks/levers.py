"""Which lever makes a round's candidate better? One round of the bundled task at the size of
benchmarks/outcome.py, then one candidate per lever, each compared with round 0 (the base) on the
same held-out prompts (each answered `eval.samples_per_prompt` times per side), both orders, by the
same judge, decided by the round's promotion rule.

    .venv/bin/python benchmarks/levers.py [--out DIR] [--only LEVER ...] [--train-per-round 64] [--heldout 32]

Training levers (loss, beta, confidence weighting) train on the default round's judged pairs, so
only the training differs; sampling levers (more samples per prompt with max_min pairing, longer
answers) run their own round from the same base in their own store, and their candidate's numbers
are that round's own evaluation (the candidate against the base: a second comparison would only
repeat it with other seeds). Writes DIR/levers.json (one
entry per lever; rerunning with --only adds to it) and prints a table; the last line is the best
lever's length-controlled win rate. `training.mix_rounds` needs several rounds: benchmarks/outcome.py
measures it (`--set training.mix_rounds=2`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flows.compare import compare_models
from flows.config import checked_config, load_config
from flows.loop import rlaif_loop
from flows.round import RoundSummary
from flows.train import TrainRefused, train_round
from store.db import Store

from outcome import result_fields, write_config  # benchmarks/outcome.py: the config, the fields

REPO = Path(__file__).resolve().parent.parent

# name -> (kind, config overrides). "train": retrain on the default round's pairs; "round": a round of its own.
LEVERS: dict[str, tuple[str, dict[str, object]]] = {
    "default": ("round", {}),
    "robust_dpo_0.2": ("train", {"training.loss_type": "robust", "training.label_smoothing": 0.2}),
    "confidence_weighted": ("train", {"training.pair_weighting": "confidence"}),
    "beta_0.3": ("train", {"training.beta": 0.3}),
    "beta_0.03": ("train", {"training.beta": 0.03}),
    "n4_max_min": ("round", {"sampler.n": 4}),
    "max_new_tokens_160": ("round", {"sampler.max_new_tokens": 160, "eval.max_new_tokens": 160}),
}


def lever_config(out: Path, name: str, args: argparse.Namespace):
    kind, overrides = LEVERS[name]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    sets = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if kind == "train":  # the default round's store: its pairs, its base, its judge's qualification
        sets.append(f"store.path={json.dumps(str(out / 'default' / 'outcome.duckdb'))}")
    namespace = argparse.Namespace(train_per_round=args.train_per_round, heldout=args.heldout,
                                   max_new_tokens=args.max_new_tokens, set=sets)
    path = write_config(folder, namespace)
    return path, checked_config(load_config(path))


def run_lever(out: Path, name: str, args: argparse.Namespace) -> dict:
    kind, overrides = LEVERS[name]
    path, config = lever_config(out, name, args)
    started = time.perf_counter()
    if kind == "round":
        rlaif_loop(config_path=str(path), rounds=1)
    with Store(config.store, read_only=True) as store:
        rnd = store.round_by_index(1)
        assert rnd is not None, f"{config.store.file}: run the default lever first"
        base = rnd.policy_id
        summary = RoundSummary.model_validate(rnd.summary_json)
        judge, trusted, round_train = summary.judge_id, summary.judge_gate.qualified, summary.train.model_dump(mode="json")
    try:
        if kind == "train":
            train_outcome = train_round(config, 1, judge)
            assert train_outcome is not None  # one process: the main one
            trained = train_outcome.model_dump(mode="json")
        else:
            trained = round_train
    except TrainRefused as refused:
        trained = {"trained": False, "reason": str(refused)}
    train_s = time.perf_counter() - started
    if not trained.get("trained"):
        return {"lever": name, "kind": kind, "set": overrides, "trained": False, "reason": trained.get("reason")}
    with Store(config.store, read_only=True) as store:
        metrics = store.train_metrics(trained["run_id"])
    started = time.perf_counter()
    if kind == "round":
        assert summary.eval is not None, f"round 1 of {config.store.file} trained but was not evaluated"
        outcome = summary.eval
    else:
        outcome = compare_models(config, trained["candidate_id"], base)
    selected, audit = trained.get("audit") or {}, trained.get("audit_trained") or {}
    return {
        "lever": name, "kind": kind, "set": overrides, "trained": True, "candidate_id": trained["candidate_id"], "base": base,
        "judge": judge, "trusted_principles": trusted, "trained_pairs": trained["n_pairs"],
        # the trustworthy pairs before length balancing, and what was trained on after it
        "selected_pairs": selected.get("n_pairs"), "chosen_longer_share_selected": selected.get("chosen_longer_share"),
        "chosen_longer_share": audit.get("chosen_longer_share"),
        "first_loss": trained["first_loss"], "last_loss": trained["last_loss"],
        "last_reward_accuracy": metrics[-1].reward_accuracy if metrics else None,
        # a round lever's evaluation is part of its round's minutes
        "minutes": {"round_or_train": train_s / 60, "compare": None if kind == "round" else (time.perf_counter() - started) / 60},
        **result_fields(outcome),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "levers")
    parser.add_argument("--only", action="append", choices=sorted(LEVERS), help="run only these levers (repeatable)")
    parser.add_argument("--train-per-round", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "levers.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.only or list(LEVERS):
        print(f"\n=== lever {name}: {LEVERS[name]}", flush=True)
        results[name] = run_lever(out, name, args)
        results_path.write_text(json.dumps(results, indent=1))  # after each lever: a crash keeps what finished

    print("\nlever               | pairs | chosen longer | LC win (95% CI)   | raw win (95% CI)  | decision  | "
          "tokens cand/base | trusted pass cand/base")
    for name, r in results.items():
        if not r["trained"]:
            print(f"{name:19s} | not trained: {r['reason']}")
            continue
        cand, base = r["candidate"], r["baseline"]
        passes = ", ".join(f"{p} {cand['principle_pass'].get(p, float('nan')):.0%}/{base['principle_pass'].get(p, float('nan')):.0%}"
                           for p in r["trusted_principles"])
        longer = "-" if r["chosen_longer_share"] is None else f"{r['chosen_longer_share']:.0%}"
        lc = f"{r['lc_win_rate']:.2f} ({r.get('lc_win_rate_low', float('nan')):.2f}-{r.get('lc_win_rate_high', float('nan')):.2f})"
        print(f"{name:19s} | {r['trained_pairs']:5d} | {longer:>13s} | {lc:17s} | "
              f"{r['win_rate']:.2f} ({r['win_rate_low']:.2f}-{r['win_rate_high']:.2f}) | {r.get('decision', '-'):9s} | "
              f"{cand['mean_tokens']:6.1f}/{base['mean_tokens']:6.1f}   | {passes}")
    best = max((r for r in results.values() if r["trained"]), key=lambda r: r["lc_win_rate"], default=None)
    print(f"results: {results_path}; best lever: {best['lever'] if best else '-'}")
    print(f"RESULT levers_best_lc_win_rate {best['lc_win_rate'] if best else float('nan'):.3f}")


if __name__ == "__main__":
    main()
