"""How well does each judge on hand agree with people on real pairs, and does teaching help?

    .venv/bin/python benchmarks/judge_agreement.py [--judge NAME ...] [--limit N] [--gold bundled:support]
                                                   [--out DIR] [--record docs/results/judge-agreement.json]

On a gold set (review/gold/): every judge judges the teaching and the measuring part. The tie margin
is chosen on the teaching part (re-thresholding the stored per-principle scores: no new judging)
and every number is reported on the measuring part: per principle the kappa against people with
its 95% interval, the true and false positive rates, and the synthetic qualification's sensitivity
for the same principle (so the last table shows how well qualification predicts agreement with
people); overall, the judge's winner against people's overall preference; seconds per pair. The
default judge is then taught by people (its disagreements on the teaching part become worked
examples, `judge.examples_from_people`) and measured again: kappa before vs after.

Judges (`--judge`, repeatable; default: every one whose model is on this machine):
  smollm2-pointwise_fewshot (the default judge), smollm2-pointwise, smollm2-principle_ab,
  qwen0.5b-pointwise_fewshot and qwen1.5b-pointwise_fewshot (after `rlaif judge get qwen2.5-coder-0.5b`
  or `-1.5b`, the local transformers backend).

`--record FILE` keeps the judges FILE already holds for the same gold set and not measured in this run,
so a slow judge can be added later: each judge's entry says which command measured it.

Last line: `RESULT judge_gold_kappa <the taught default judge's overall kappa on the measuring part>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from constitution.loader import load_constitution
from flows.config import RoundConfig, checked_config, load_config
from flows.judging import choose_examples, qualification_for, taught_judge
from flows.progress import progress_bar
from judges.config import build_judge
from judges.stage import PairwiseJudge, judge_pairs
from judges.verdict import winner_of
from lm.judge_models import judge_checkpoint
from lm.loading import set_threads
from review.gold import GoldPair, store_gold
from review.labels import human_labels, principle_labels
from stats.agreement import label_agreement
from store.db import Store
from store.ids import stable_int
from store.rows import JudgmentRow

REPO = Path(__file__).resolve().parent.parent

DEFAULT_JUDGE = "smollm2-pointwise_fewshot"
MARGINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)


def judges_on_hand() -> dict[str, dict]:
    """name -> judge section overrides, for every judge whose model is here."""
    found = {f"smollm2-{f}": {"formulation": f} for f in ("pointwise_fewshot", "pointwise", "principle_ab")}
    for size in ("0.5b", "1.5b"):
        path = judge_checkpoint(f"qwen2.5-coder-{size}")
        if (path / "config.json").is_file():
            found[f"qwen{size}-pointwise_fewshot"] = {"formulation": "pointwise_fewshot", "model_path": str(path)}
    return found


def votes_at(judgments: tuple[JudgmentRow, JudgmentRow], principle: str, margin: float) -> str | None:
    """A principle's combined vote at another tie margin, from the two orders' stored scores."""
    votes = []
    for j in judgments:
        found = j.votes_json.get(principle) if j.parse_status == "ok" else None
        if found is None or found["vote"] == "n/a":
            return None
        votes.append(winner_of(found["score"], margin))
    return votes[0] if votes[0] == votes[1] else "tie"


def measure(store: Store, judge: PairwiseJudge, constitution, pairs: list[GoldPair], margin: float | None) -> dict:
    """The judge against people on `pairs` (judged now unless cached): per principle and overall."""
    started = time.perf_counter()
    with progress_bar(f"judging {len(pairs)} gold pairs") as progress:
        verdicts = judge_pairs(store, judge, constitution, [g.pair for g in pairs], progress)
    seconds = time.perf_counter() - started
    reviews = store.reviews_of_pairs([g.pair.pair_id for g in pairs])
    said, overall = principle_labels(reviews), human_labels(reviews)
    judgments = store.by_ids(JudgmentRow, [j for v in verdicts.values() for j in (v.judgment_ab, v.judgment_ba)])
    result: dict = {"principles": {}, "seconds_per_pair": seconds / max(len(pairs), 1)}
    for principle in (p.id for p in constitution.principles if p.judged):
        judge_side, people_side = [], []
        for g in pairs:
            label, verdict = said.get((g.pair.pair_id, principle)), verdicts[g.pair.pair_id]
            if label is None or verdict.status != "ok":
                continue
            vote = verdict.votes_json.get(principle) if margin is None else \
                votes_at((judgments[verdict.judgment_ab], judgments[verdict.judgment_ba]), principle, margin)
            if vote in ("a", "b", "tie"):
                judge_side.append(vote)
                people_side.append(label)
        result["principles"][principle] = label_agreement(judge_side, people_side, seed=stable_int("gold", principle)).model_dump()
    both = [(v.winner if v.consistent else "tie", overall[pid]) for pid, v in verdicts.items()
            if v.status == "ok" and v.winner is not None and pid in overall]
    result["overall"] = label_agreement([b[0] for b in both], [b[1] for b in both], seed=stable_int("gold", "overall")).model_dump()
    return result


def between_readers(store: Store, constitution, pairs: list[GoldPair]) -> dict:
    """The gold set's two first readers against each other on `pairs`, per principle and overall:
    how far people agree, the ceiling a judge can be expected to reach."""
    reviews = store.reviews_of_pairs([g.pair.pair_id for g in pairs])
    readers = sorted({r.reviewer for r in reviews})[:2]
    if len(readers) < 2:
        return {}
    said = {(r.reviewer, r.pair_id, r.principle): r.winner for r in reviews if r.winner != "skip"}
    out: dict = {"readers": readers, "principles": {}}
    for principle in [None] + [p.id for p in constitution.principles if p.judged]:
        both = [(said[(readers[0], g.pair.pair_id, principle)], said[(readers[1], g.pair.pair_id, principle)]) for g in pairs
                if (readers[0], g.pair.pair_id, principle) in said and (readers[1], g.pair.pair_id, principle) in said]
        found = label_agreement([a for a, _ in both], [b for _, b in both], seed=stable_int("readers", principle)).model_dump()
        if principle is None:
            out["overall"] = found
        else:
            out["principles"][principle] = found
    return out


def mean_kappa(measured: dict) -> float:
    kappas = [p["kappa"] for p in measured["principles"].values() if p["kappa"] is not None]
    return float(np.mean(kappas)) if kappas else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(str(resources.files("flows") / "demo.yaml")))
    parser.add_argument("--gold", default="bundled:support")
    parser.add_argument("--judge", action="append", help="judge name (repeatable; default: every one on hand)")
    parser.add_argument("--limit", type=int, help="use only this many pairs of each part (a quick slice)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "judge-agreement")
    parser.add_argument("--record", type=Path, help="write the results JSON here too (judges it already holds for "
                        "the same gold set and not measured now are kept, each with the command that measured it)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    threads = set_threads(None)
    base_config = checked_config(load_config(args.config))
    constitution = load_constitution(base_config.constitution)
    on_hand = judges_on_hand()
    names = args.judge or list(on_hand)
    unknown = [n for n in names if n not in on_hand]
    if unknown:
        raise SystemExit(f"--judge {', '.join(unknown)}: not on this machine (on hand: {', '.join(on_hand)})")

    results: dict = {"command": "python benchmarks/judge_agreement.py " + " ".join(sys.argv[1:]), "gold": args.gold,
                     "threads": threads, "judges": {}}
    with Store(out / "agreement.duckdb") as store:
        gold = store_gold(store, args.gold, constitution)
        teach = [g for g in gold if g.part == "teach"][: args.limit]
        measuring = [g for g in gold if g.part == "measure"][: args.limit]
        results |= {"teaching_pairs": len(teach), "measuring_pairs": len(measuring)}
        results["between_readers"] = between_readers(store, constitution, measuring)
        print_readers(results["between_readers"])
        for name in names:
            config = RoundConfig.model_validate(base_config.model_dump(mode="json") | {
                "judge": base_config.judge.model_dump(mode="json") | on_hand[name]})
            judge = build_judge(config.judge)
            print(f"\n=== {name}: {judge.judge_id}", flush=True)
            on_teach = {m: mean_kappa(measure(store, judge, constitution, teach, m)) for m in MARGINS}
            margin = max(MARGINS, key=lambda m: (np.nan_to_num(on_teach[m], nan=-2), -abs(m - config.judge.tie_margin)))
            found = measure(store, judge, constitution, measuring, margin)
            with progress_bar("synthetic qualification") as progress:
                qualification, _ = qualification_for(None, config, constitution, judge, "qualify", progress)
            for principle, q in qualification.principles.items():
                found["principles"][principle]["synthetic_sensitivity"] = q.sensitivity
                found["principles"][principle]["synthetic_interval"] = [q.sensitivity_low, q.sensitivity_high]
            entry = {"judge_id": judge.judge_id, "command": results["command"], "settings": on_hand[name], "tie_margin": margin,
                     "teaching_mean_kappa_by_margin": on_teach, **found}
            if name == DEFAULT_JUDGE:
                examples = choose_examples(store, constitution, judge, frozenset(g.pair.pair_id for g in teach),
                                           config.judge.examples_from_people)
                taught = taught_judge(judge, examples)
                entry["taught"] = {"judge_id": taught.judge_id, "examples": [e.model_dump() for e in examples],
                                   **measure(store, taught, constitution, measuring, None)}
                entry["untaught_default_margin"] = measure(store, judge, constitution, measuring, None)
            results["judges"][name] = entry
            print_judge(name, entry)
    if args.record and args.record.is_file():  # judges measured earlier on the same gold set stay in the record
        earlier = json.loads(args.record.read_text())
        if all(earlier.get(k) == results[k] for k in ("gold", "teaching_pairs", "measuring_pairs")):
            said_of_all = {k: earlier[k] for k in ("command", "timing_note") if k in earlier}  # now said of each
            kept = {n: said_of_all | e for n, e in earlier["judges"].items() if n not in results["judges"]}
            results["judges"] = kept | results["judges"]
    points = [(p["synthetic_sensitivity"], p["kappa"]) for e in results["judges"].values() for p in e["principles"].values()
              if p.get("synthetic_sensitivity") is not None and p["kappa"] is not None]
    if len(points) >= 3:
        rho, p_value = scipy_stats.spearmanr([x for x, _ in points], [y for _, y in points])
        results["qualification_predicts_agreement"] = {"spearman": float(rho), "p_value": float(p_value), "points": len(points)}
        print(f"\nsynthetic sensitivity vs kappa with people, every (judge, principle): Spearman {rho:+.2f} "
              f"(p {p_value:.2f}, {len(points)} points)")
    (out / "judge-agreement.json").write_text(json.dumps(results, indent=1))
    if args.record:
        args.record.write_text(json.dumps(results, indent=1) + "\n")
    default = results["judges"].get(DEFAULT_JUDGE, {})
    final = (default.get("taught") or default).get("overall", {}).get("kappa")
    print(f"RESULT judge_gold_kappa {float('nan') if final is None else final:.3f}")


def print_readers(found: dict) -> None:
    if not found:
        return
    print(f"the readers {' and '.join(found['readers'])} against each other on the measuring part (the ceiling):")
    for label, a in [("overall", found["overall"])] + list(found["principles"].items()):
        kappa = "-" if a["kappa"] is None else f"{a['kappa']:+.2f} ({a['kappa_low']:+.2f} to {a['kappa_high']:+.2f})"
        print(f"  {label:32s} n={a['n']:3d} kappa {kappa}")


def print_judge(name: str, entry: dict) -> None:
    print(f"{name}: tie margin {entry['tie_margin']} (chosen on the teaching part), {entry['seconds_per_pair']:.2f} s per pair")
    rows = [("overall (winner)", entry["overall"])] + list(entry["principles"].items())
    if "taught" in entry:
        rows += [(f"taught: {k}", v) for k, v in [("overall (winner)", entry["taught"]["overall"])]
                 + list(entry["taught"]["principles"].items())]
    for label, a in rows:
        kappa = "-" if a["kappa"] is None else f"{a['kappa']:+.2f} ({a['kappa_low']:+.2f} to {a['kappa_high']:+.2f})"
        synthetic = a.get("synthetic_sensitivity")
        print(f"  {label:32s} n={a['n']:3d} kappa {kappa:24s} TPR {fmt(a['true_positive_rate'])} "
              f"FPR {fmt(a['false_positive_rate'])}" + ("" if synthetic is None else f"  synthetic {synthetic:.0%}"))


def fmt(x: float | None) -> str:
    return "  -" if x is None else f"{x:3.0%}"


if __name__ == "__main__":
    main()
