"""docs/results.md, generated from the results files in docs/results/, so its numbers cannot drift
from what was measured.

    .venv/bin/python benchmarks/results_page.py          # rewrites docs/results.md

A test fails while the page is out of date. Each section names the command that made its file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
PAGE = REPO / "docs" / "results.md"

INTRO = """# Results

Everything measured on this project's machine (2 CPU cores, 24 GiB RAM, no GPU; SmolLM2-135M-Instruct
as policy and judge unless a section says otherwise), generated from the files in `docs/results/`
by `benchmarks/results_page.py`. Every comparison carries its n and its 95% interval; a difference
inside the interval is no difference, and the tables say so.
"""


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def f2(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def pct(x: Any) -> str:
    return "-" if x is None else f"{x:.0%}"


def ci(low: Any, high: Any) -> str:
    return "" if low is None or high is None else f" ({low:.2f}-{high:.2f})"


def difference(diff: dict | None) -> str:
    """A paired pass-rate difference with its interval, in points."""
    return "-" if diff is None else f"{diff['estimate']:+.0%} ({diff['low']:+.0%} to {diff['high']:+.0%})"


def decision_section(d: dict) -> list[str]:
    out = ["## The promotion gate's error rates", "", f"`{d['command']}` (`docs/results/decision.json`)", "",
           f"One round of the bundled task trained candidate `{d['candidate']}` from `{d['parent']}` "
           f"({d['heldout_prompts']} held-out prompts; sampling on {d['backend']}; judge `{d['judge']}`, counting "
           f"{', '.join(d['trusted_principles']) or 'no model-judged principle'}). Both answered every held-out prompt "
           f"{d['pool']} times with common random numbers.", ""]
    out += ["**What each k costs** (an evaluation of fresh samples: sampling both sides, then judging):", "",
            "| samples per prompt (k) | wall time | sampling | judging | per held-out prompt |", "|---|---|---|---|---|"]
    for k, c in sorted(d["cost"].items(), key=lambda kv: int(kv[0])):
        out.append(f"| {k} | {c['wall_s'] / 60:.1f} min | {c['sampling_s']:.0f} s | {c['judging_s']:.0f} s | {c['per_prompt_s']:.1f} s |")
    if d.get("cost_note"):
        out += ["", d["cost_note"]]
    out += ["", "**Reproducibility**: the pool cut into disjoint (independent) evaluations of the same candidate "
            "against its parent; the share that reach the most common decision (goal >= 90%):", "",
            "| k | evaluations | decisions | same decision | LC win rate: mean (min-max, sd) | mean interval width | "
            "smallest true LC it detects (mean) |", "|---|---|---|---|---|---|---|"]
    for k, r in sorted(d["reproducibility"].items(), key=lambda kv: int(kv[0])):
        decisions = ", ".join(f"{v} {n}" for n, v in sorted(r["decisions"].items()))
        out.append(f"| {k} | {r['evaluations']} | {decisions} | {pct(r['same_decision'])} | {r['lc_mean']:.2f} "
                   f"({r['lc_min']:.2f}-{r['lc_max']:.2f}, sd {f2(r['lc_sd'])}) | {r['interval_width_mean']:.2f} | "
                   f"{r['minimum_detectable_mean']:.2f} |")
    out += ["", "**A/A**: the parent against itself (two independent draws from its pooled samples per evaluation); "
            "the share the gate promotes is its false-promotion rate (goal <= 5%; the rule states 2.5%):", "",
            "| k | evaluations | promoted (95% CI) | called worse | undecided |", "|---|---|---|---|---|"]
    for k, a in sorted(d["a_a"].items(), key=lambda kv: int(kv[0])):
        low, high = a["false_promotion_ci"]
        out.append(f"| {k} | {a['evaluations']} | {pct(a['false_promotion_rate'])} ({pct(low)}-{pct(high)}) | "
                   f"{pct(a['worse_rate'])} | {pct(a['verdicts'].get('undecided', 0) / a['evaluations'])} |")
    return out + [""]


def outcome_section(d: dict, title: str, source: str) -> list[str]:
    out = [f"## {title}", "", f"`{d.get('command', 'python benchmarks/outcome.py ' + ' '.join(d.get('set', [])))}` "
           f"(`docs/results/{source}`): {d['rounds']} rounds, {d['loop_minutes']:.0f} min; judge `{d.get('judge', '-')}`, "
           f"counting {', '.join(d.get('trusted_principles') or []) or 'no model-judged principle (the executable checks decide)'}.", "",
           "| round | pairs judged | consistent | trained on | chosen longer | raw win (95% CI) | LC win (95% CI) | "
           "k | decision | policy mean tokens | promoted |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d.get("per_round", []):
        raw = "-" if r.get("win_rate") is None else f"{r['win_rate']:.2f}" + ci(*(r.get("win_rate_ci") or [None, None]))
        lc = "-" if r.get("lc_win_rate") is None else f"{r['lc_win_rate']:.2f}" + ci(*(r.get("lc_win_rate_ci") or [None, None]))
        out.append(f"| {r['round']} | {r['pairs_judged']} | {r['consistent_pairs']} | {r['trained_pairs']} | "
                   f"{pct(r.get('chosen_longer_share'))} | {raw} | {lc} | {r.get('samples_per_prompt') or 1} | "
                   f"{r.get('decision', '-')} | {r['policy_mean_tokens']:.1f} | {'yes' if r['promoted'] else 'no'} |")
    prompts = d.get("prompts", d["n"])
    k = d.get("samples_per_prompt", 1)
    out += ["", f"The last round's policy `{d['final']}` against round 0 `{d['base']}`, {prompts} held-out prompts x {k} "
            f"samples, both orders: raw win rate {d['win_rate']:.2f}{ci(d['win_rate_low'], d['win_rate_high'])} "
            f"(W/L/T {d['wins']}/{d['losses']}/{d['ties']}), length-controlled {d['lc_win_rate']:.2f}"
            f"{ci(d.get('lc_win_rate_low'), d.get('lc_win_rate_high'))}, mean length {d['candidate']['mean_tokens']:.0f} vs "
            f"{d['baseline']['mean_tokens']:.0f} tokens."]
    if d.get("decision_reason"):
        out += ["", f"Decision: {d['decision_reason']}."]
    out += ["", "| principle / probe | last policy | round 0 | difference (95% CI) |", "|---|---|---|---|"]
    diffs = d.get("differences", {})
    for pid, rate in d["candidate"]["principle_pass"].items():
        out.append(f"| {pid} | {pct(rate)} | {pct(d['baseline']['principle_pass'].get(pid))} | {difference(diffs.get(pid))} |")
    for name, rate in d["candidate"].get("probe_pass", {}).items():
        out.append(f"| probe: {name} | {pct(rate)} | {pct(d['baseline'].get('probe_pass', {}).get(name))} | "
                   f"{difference(diffs.get(f'probe:{name}'))} |")
    if d.get("note"):
        out += ["", d["note"]]
    return out + [""]


def levers_section(d: dict) -> list[str]:
    out = ["## Levers", "", f"`{d['command']}` (`docs/results/levers.json`, {d['date']}). {d['what']}", "",
           "| lever | pairs selected -> trained (length balancing) | chosen longer, selected / trained | "
           "wins / losses / ties | raw win (95% CI) | LC win (95% CI) | k | decision | smallest true LC it detects | "
           "pass-rate differences whose 95% interval excludes 0 | tokens candidate / base |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in d["levers"].items():
        if not r.get("trained"):
            out.append(f"| {name} | not trained: {r.get('reason')} | | | | | | | | | |")
            continue
        clear = [f"{p} {difference(v)}" for p, v in r["differences"].items() if v["low"] > 0 or v["high"] < 0]
        out.append(f"| {name} | {r['selected_pairs']} -> {r['trained_pairs']} | "
                   f"{pct(r.get('chosen_longer_share_selected'))} / {pct(r.get('chosen_longer_share'))} | "
                   f"{r['wins']} / {r['losses']} / {r['ties']} | "
                   f"{r['win_rate']:.2f}{ci(r['win_rate_low'], r['win_rate_high'])} | "
                   f"{r['lc_win_rate']:.2f}{ci(r.get('lc_win_rate_low'), r.get('lc_win_rate_high'))} | "
                   f"{r.get('samples_per_prompt', 1)} | {r.get('decision', '-')} | {f2(r.get('minimum_detectable'))} | "
                   f"{'; '.join(clear) or 'none'} | "
                   f"{r['candidate']['mean_tokens']:.0f} / {r['baseline']['mean_tokens']:.0f} |")
    if d.get("conclusion"):
        out += ["", d["conclusion"]]
    return out + [""]


def agreement_section(d: dict) -> list[str]:
    out = ["## The judges against people", "", f"`{d['command']}` (`docs/results/judge-agreement.json`; a judge measured "
           "by another command says so): gold set "
           f"{d['gold']}, {d['measuring_pairs']} measuring pairs (teaching part: {d['teaching_pairs']}); kappa with its "
           "95% interval against the gold reader, per principle and for the overall winner; the tie margin chosen on "
           "the teaching part; the synthetic qualification's sensitivity beside it.", ""]
    if d.get("timing_note"):
        out += [f"Timing: {d['timing_note']}", ""]
    readers = d.get("between_readers")
    if readers:
        out += [f"**The two readers against each other** ({' and '.join(readers['readers'])}, the ceiling a judge can be "
                "expected to reach; both are sessions of one AI assistant, so this overstates two independent people):", "",
                "| | n | kappa (95% CI) |", "|---|---|---|"]
        for label, a in [("overall winner", readers["overall"])] + list(readers["principles"].items()):
            kappa = "-" if a["kappa"] is None else f"{a['kappa']:+.2f} ({f2(a['kappa_low'])} to {f2(a['kappa_high'])})"
            out.append(f"| {label} | {a['n']} | {kappa} |")
        out.append("")
    for name, e in d["judges"].items():
        out += [f"**{name}** (`{e['judge_id']}`, tie margin {e['tie_margin']}, {e['seconds_per_pair']:.1f} s per pair)", ""]
        if e.get("command", d["command"]) != d["command"]:
            out += [f"Measured by `{e['command']}`.", ""]
        if e.get("timing_note"):
            out += [f"Timing: {e['timing_note']}", ""]
        if e.get("note"):
            out += [f"Note: {e['note']}", ""]
        out += ["| | n | kappa (95% CI) | TPR | FPR | synthetic sensitivity |", "|---|---|---|---|---|---|"]
        rows = [("overall winner", e["overall"])] + list(e["principles"].items())
        if "taught" in e:
            rows += [(f"taught: {k}", v) for k, v in [("overall winner", e["taught"]["overall"])] + list(e["taught"]["principles"].items())]
        for label, a in rows:
            kappa = "-" if a["kappa"] is None else f"{a['kappa']:+.2f} ({f2(a['kappa_low'])} to {f2(a['kappa_high'])})"
            out.append(f"| {label} | {a['n']} | {kappa} | {pct(a['true_positive_rate'])} | {pct(a['false_positive_rate'])} | "
                       f"{pct(a.get('synthetic_sensitivity'))} |")
        out.append("")
    q = d.get("qualification_predicts_agreement")
    if q:
        out += [f"Synthetic sensitivity against kappa with people, over every (judge, principle): Spearman "
                f"{q['spearman']:+.2f} (p = {q['p_value']:.2f}, {q['points']} points).", ""]
    return out


def qualification_section(d: dict) -> list[str]:
    out = ["## Judge qualification (known-answer pairs)", "", f"`{d['command']}` (`docs/results/judge-qualification.json`). "
           f"{d['how_chosen']} Chosen: `{d['chosen']}`. {d['machine']}.", "",
           "| judge / formulation / split | mean sensitivity | position consistency | slot bias | s per pair | qualified on |",
           "|---|---|---|---|---|---|"]
    for label, j in sorted(d["judges"].items()):
        out.append(f"| {label} | {j['mean_sensitivity']:.2f} | {pct(j['position_consistency'])} | {f2(j['slot_bias'])} | "
                   f"{j['seconds_per_pair']:.1f} ({j['threads']} threads) | {', '.join(j['qualified']) or '-'} |")
    return out + [""]


def store_section(d: dict) -> list[str]:
    out = ["## The store under concurrent writers", "", f"`{d['command']}` (`docs/results/store.json`): appends per second of "
           "one writer, and the review page's latency while another process writes.", "",
           "| store | appends/s alone | writer every 0.5 s: answered / requests, p50, p95 | writer flat out: answered / requests, p95 |",
           "|---|---|---|---|"]
    for kind, r in d["results"].items():
        paced, flat = r["writer_pause_0.5s"], r["writer_pause_0.0s"]
        out.append(f"| {kind} | {r['appends_per_s_alone']} | {paced['answered']} / {paced['requests']}, "
                   f"{f2(paced['p50_ms'])} ms, {f2(paced['p95_ms'])} ms | {flat['answered']} / {flat['requests']}, "
                   f"{f2(flat['p95_ms'])} ms |")
    return out + [""]


def benchmarks_section(d: dict) -> list[str]:
    out = ["## Speed benchmarks", "", f"`{d['command']}` (`docs/results/benchmarks.json`, {d['date']}). {d.get('note', '')}", "",
           "| benchmark | measures | result | goal |", "|---|---|---|---|"]
    for r in d["results"]:
        out.append(f"| `{r['script']}` | {r['measures']} | {r['name']} = {r['value']} | {r['goal']} |")
    return out + [""]


def gpu_section(d: dict | None) -> list[str]:
    if d is None:
        return ["## On a GPU", "", "Not run on a GPU yet: no GPU machine has been lent to this project's sessions. The "
                "prepared check is `benchmarks/gpu_check.py` ([scaling.md](scaling.md)).", ""]
    return ["## On a GPU", "", f"`{d.get('command', 'benchmarks/gpu_check.py')}` (`docs/results/gpu-check.json`).", "",
            "```json", json.dumps({k: v for k, v in d.items() if k != "command"}, indent=1)[:4000], "```", ""]


def render() -> str:
    out = [INTRO]
    sections = [("decision", decision_section), ("judge-agreement", agreement_section)]
    for name, make in sections:
        found = load(name)
        if found is not None:
            out += make(found)
    outcome = load("outcome")
    if outcome is not None:
        out += outcome_section(outcome, "Does the loop make the model better? (3 online rounds)", "outcome.json")
    for name, make in (("levers", levers_section), ("judge-qualification", qualification_section),
                       ("store", store_section), ("benchmarks", benchmarks_section)):
        found = load(name)
        if found is not None:
            out += make(found)
    out += gpu_section(load("gpu-check"))
    older = [(n, load(n)) for n in ("outcome-confounds-off", "outcome-mix-rounds-2")]
    if any(d for _, d in older):
        out += ["## Earlier outcome runs", "", "One sample per held-out prompt and a point-estimate bar, before the "
                "evaluation had intervals:", ""]
        for name, d in older:
            if d:
                d = d.get("final_comparison", d)
                out.append(f"- `docs/results/{name}.json`: raw win rate {d['win_rate']:.2f}"
                           f"{ci(d['win_rate_low'], d['win_rate_high'])}, LC {d['lc_win_rate']:.2f} over {d['n']} prompts "
                           f"({d.get('command', 'benchmarks/outcome.py ' + ' '.join(d.get('set', [])))}).")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description="Rewrite docs/results.md from the JSON files in docs/results/.").parse_args()
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
