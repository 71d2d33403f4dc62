"""A whole round as a Prefect flow, on the tiny model, against a real DuckDB file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from store.db import Store
from store.rows import CompletionRow, ModelRow, PromptRow, TrainRunRow
from training.data import select_preferences


def test_round_writes_every_stage_and_a_rerun_inserts_nothing(prefect_harness, round_config):
    from flows.round import rlaif_round

    summary = rlaif_round(config=round_config)
    assert summary.round_index == 1 and summary.pairs_judged == 8
    assert summary.train.trained, summary.train.reason
    assert summary.train.first_loss == pytest.approx(0.693147, abs=1e-5)
    assert summary.eval is not None and summary.eval.n == 3 * 2  # 3 held-out prompts x 2 samples
    assert summary.promoted  # margin -0.49: any candidate not clearly worse is promoted
    ev = summary.eval
    assert ev.prompts == 3 and ev.samples_per_prompt == 2
    assert ev.raw.low <= ev.raw.estimate <= ev.raw.high and ev.lc.low <= ev.lc.estimate <= ev.lc.high
    assert ev.candidate.model_id == summary.candidate_id and ev.baseline.model_id == summary.policy_id
    assert "short" in ev.candidate.principle_pass and "short" in ev.baseline.principle_pass

    with Store(round_config.store, read_only=True) as store:
        counts = store.count_rows()
        assert counts["prompts"] == 220
        assert counts["completions"] == 8 * 2 + 3 * 2 * 2      # train pairs + (candidate, baseline) x 2 per held-out prompt
        assert counts["pairs"] == 8 + 3 * 2
        assert counts["judgments"] >= 2 * counts["pairs"] - 2   # both orders (identical texts share a cache entry)
        assert counts["verdicts"] == 14 and counts["review_queue"] >= 1
        assert counts["train_runs"] == 1 and counts["train_metrics"] == summary.train.n_pairs // 2 + summary.train.n_pairs % 2
        assert counts["models"] == 2 and counts["evals"] > 0
        (rnd,) = store.rounds()
        assert rnd.status == "finished" and rnd.candidate_id == summary.candidate_id
        assert store.by_ids(ModelRow, [rnd.candidate_id])[rnd.candidate_id].promoted
        assert store.current_policy().model_id == summary.candidate_id
        assert [m.model_id for m in store.model_chain(summary.candidate_id)] == [rnd.policy_id, summary.candidate_id]
        for q in store.review_queue(rnd.round_id):
            assert q.reasons and all(r in ("random", "low_confidence") or r.startswith("high_stakes:") for r in q.reasons)

        # the check principle's pass rate is the share of each model's held-out answers that pass it
        eval_completions = store.completions(rnd.round_id, "eval")
        for stats in (ev.candidate, ev.baseline):
            texts = [c.text for c in eval_completions if c.model_id == stats.model_id]
            assert len(texts) == 6 and stats.principle_pass["short"] == sum(len(t.split()) <= 5 for t in texts) / 6
        assert ev.differences["short"].estimate == pytest.approx(ev.candidate.principle_pass["short"] - ev.baseline.principle_pass["short"])
        # common random numbers: sample j of a prompt has the same seed on both sides
        seeds = {(c.prompt_id, c.sample_index, c.model_id): c.seed for c in eval_completions}
        assert {(p, s) for p, s, _ in seeds} == {(c.prompt_id, s) for c in eval_completions for s in (0, 1)}
        for (prompt_id, index, _), seed in seeds.items():
            assert seed == seeds[(prompt_id, index, ev.baseline.model_id)]
        assert {e.metric for e in store.evals(rnd.round_id)} >= {"win_rate", "lc_win_rate_low", "pass:short:candidate",
                                                                 "diff:short", "minimum_detectable"}

    again = rlaif_round(config=round_config, round_index=1)
    with Store(round_config.store, read_only=True) as store:
        assert store.count_rows() == counts
    assert again.candidate_id == summary.candidate_id and again.eval == summary.eval

    # the next round samples from the promoted candidate, and mixes in round 1's pairs (recorded)
    mixing = round_config.model_copy(update={"training": round_config.training.model_copy(update={"mix_rounds": 1})})
    second = rlaif_round(config=mixing)
    assert second.round_index == 2 and second.policy_id == summary.candidate_id
    with Store(round_config.store, read_only=True) as store:
        (run,) = [r for r in store.by_ids(TrainRunRow, [second.train.run_id]).values()]
        assert run.config_json["mix_rounds"] == 1
        assert run.n_pairs >= summary.train.n_pairs  # round 1's trustworthy pairs are in round 2's data
        # older policies sampled round 1's pairs: their log-probs are not this reference, so it was recomputed
        assert run.audit_json["reference"].startswith("forward")


def test_a_candidate_that_loses_is_not_promoted_and_the_next_round_samples_the_old_policy(prefect_harness, round_config):
    from flows.round import rlaif_round

    config = round_config.model_copy(update={"eval": round_config.eval.model_copy(update={"margin": 0.49})})  # a bar of 0.99
    first = rlaif_round(config=config)
    assert first.train.trained and first.eval is not None and first.eval.lc.low < 0.99
    assert not first.promoted and first.eval.decision.verdict != "promote"
    assert first.decision.startswith(("undecided, the current policy stays", "not promoted, the candidate is worse"))
    second = rlaif_round(config=config)
    assert second.round_index == 2 and second.policy_id == first.policy_id  # still the base model
    with Store(config.store, read_only=True) as store:
        (candidate,) = store.by_ids(ModelRow, [first.candidate_id]).values()
        assert not candidate.promoted and candidate.promotion_reason == first.decision
        assert store.rounds()[1].policy_id == first.policy_id
        sampled = {c.model_id for c in store.completions("round-0002", "train")}
        assert sampled == {first.policy_id}


def test_round_without_enough_trustworthy_pairs_does_not_train(prefect_harness, round_config):
    from flows.round import rlaif_round

    config = round_config.model_copy(update={"training": round_config.training.model_copy(update={"min_pairs": 1000})})
    summary = rlaif_round(config=config)
    assert not summary.train.trained and not summary.promoted and summary.eval is None
    assert "min_pairs 1000" in summary.decision
    with Store(config.store, read_only=True) as store:
        assert store.count_rows()["train_metrics"] == 0 and store.count_rows()["models"] == 1
        assert store.rounds()[0].status_reason == summary.decision


def test_round_with_n3_judges_a_round_robin_and_trains_on_best_vs_worst(prefect_harness, round_config):
    from flows.round import rlaif_round

    config = round_config.model_copy(update={"sampler": round_config.sampler.model_copy(update={"n": 3, "backend": "transformers"})})
    summary = rlaif_round(config=config)
    assert summary.sampling_backend == "transformers"
    assert summary.pairs_judged == 8 * 3  # every two of 3 samples, 8 prompts
    with Store(config.store, read_only=True) as store:
        rnd = store.rounds()[0]
        pairs = store.pairs(rnd.round_id, "train")
        robin = [p for p in pairs if p.pairing == "round_robin"]
        chosen = [p for p in pairs if p.pairing == "max_min"]
        assert len(robin) == 24 and 1 <= len(chosen) <= 8
        assert len({p.prompt_id for p in chosen}) == len(chosen)  # at most one training pair per prompt
        ((_, verdicts),) = store.verdicts_of_round(rnd.round_id).items()
        winners = {v.pair_id: v.winner for v in verdicts if v.status == "ok" and v.consistent}
        for pair in chosen:
            # the selected pair's two samples are the prompt's top and bottom by wins minus losses
            score: dict[str, int] = {}
            for p in (r for r in robin if r.prompt_id == pair.prompt_id):
                w = winners.get(p.pair_id)
                for cid, sign in ((p.completion_a, 1), (p.completion_b, -1)):
                    score[cid] = score.get(cid, 0) + {"a": sign, "b": -sign}.get(w, 0)
            assert {score[pair.completion_a], score[pair.completion_b]} == {max(score.values()), min(score.values())}
        records = select_preferences(store.judged_pairs(rnd.round_id, summary.judge_id, rnd.constitution_hash), {})
        assert {r.pair_id for r in records} <= {p.pair_id for p in chosen}  # round-robin comparisons never train
        assert summary.train.n_pairs == len(records)
        queued = {q.pair_id for q in store.review_queue(rnd.round_id)}
        assert queued <= {p.pair_id for p in chosen}  # reviewers see training pairs only


@pytest.mark.slow
def test_rounds_sampled_by_the_vllm_engine_follow_the_promoted_lineage(prefect_harness, round_config, smollm2_dir,
                                                                            vllm_settings):
    """Rounds sample the base, then base + adapter per request, then the merged parent + newest adapter;
    each round's evaluation samples the candidate and the policy through vLLM too.

    Stored sampling logprobs must equal a transformers forward of the model that sampled them (its
    lineage merged in memory): that proves vLLM served exactly that model.
    """
    from flows.round import rlaif_round
    from flows.stages import load_policy
    from lm.loading import encode_chat
    from lm.logprobs import collate, sequence_logps

    # Checks on common words, so that some of SmolLM2's 16-token samples pass and others fail: each
    # round then has trustworthy pairs to train on.
    constitution = Path(round_config.constitution).with_name("word-checks.yaml")
    constitution.write_text(r"""
name: word-checks
principles:
  - {id: no_the, text: Avoid the word "the"., weight: 2, check: {forbidden_patterns: ['(?i)\bthe\b']}}
  - {id: apologises, text: Apologise., weight: 1.5, check: {required_patterns: ['(?i)sorry|apolog']}}
  - {id: addresses_you, text: Address the customer., weight: 1, check: {required_patterns: ['(?i)\byou']}}
""")
    config = round_config.model_copy(update={
        "constitution": str(constitution),
        "policy": round_config.policy.model_copy(update={"path": str(smollm2_dir)}),
        "prompts": round_config.prompts.model_copy(update={"train_per_round": 8, "heldout": 2}),
        "sampler": round_config.sampler.model_copy(update={"backend": "vllm", "vllm": vllm_settings, "max_new_tokens": 16}),
        "eval": round_config.eval.model_copy(update={"max_new_tokens": 8}),
    })
    summaries = []
    while sum(s.promoted for s in summaries) < 2:  # until the policy is base + 2 adapters (a round may find no pairs)
        assert len(summaries) < 5, [s.decision for s in summaries]
        summaries.append(rlaif_round(config=config))
    # samples from base + 2 adapters: merged parent + newest adapter. It need not train: the evaluation
    # of the round before already served a two-adapter lineage (its candidate), and a third engine
    # start would cost ~35 s of CI
    sample_only = config.model_copy(update={"training": config.training.model_copy(update={"min_pairs": 10**6})})
    summaries.append(rlaif_round(config=sample_only))
    assert {s.sampling_backend for s in summaries} == {"vllm-engine"}
    for previous, summary in zip(summaries, summaries[1:]):
        assert summary.policy_id == (previous.candidate_id if previous.promoted else previous.policy_id)
    first_promoted = next(s for s in summaries if s.promoted)
    assert (config.artifacts_dir() / "merged" / first_promoted.candidate_id / "config.json").exists()

    def mean_token_gap(store, model_id, completions) -> float:
        """|stored sampling log-prob - a transformers forward of `model_id`'s merged lineage| per token."""
        policy, tokenizer = load_policy.fn(store, model_id)
        prompts = store.by_ids(PromptRow, [c.prompt_id for c in completions])
        with torch.no_grad():
            recomputed = sequence_logps(policy, collate(
                [encode_chat(tokenizer, config.system_prompt(), prompts[c.prompt_id].text) for c in completions],
                [c.token_ids for c in completions], tokenizer.pad_token_id))
        gaps = [abs(float(r) - c.sum_logprob) / len(c.token_ids) for r, c in zip(recomputed, completions)]
        return sum(gaps) / len(gaps)

    with Store(config.store, read_only=True) as store:
        for summary in summaries:
            rnd = store.round_by_index(summary.round_index)
            pairs = store.pairs(rnd.round_id, "train")
            completions = list(store.by_ids(CompletionRow, [c for p in pairs for c in (p.completion_a, p.completion_b)]).values())
            assert len(completions) == 16 and {c.sampling_json["backend"] for c in completions} == {"vllm-engine"}
            assert mean_token_gap(store, rnd.policy_id, completions) < 1e-3, summary.round_index
            if summary.eval is None:
                continue
            # Evaluation sampled through the same backend: the candidate as its adapter per request
            # on the policy's weights, the policy from the same engine without it.
            evaluated = store.completions(rnd.round_id, "eval")
            assert {c.sampling_json["backend"] for c in evaluated} == {"vllm-engine"}
            for model_id in (summary.candidate_id, summary.policy_id):
                side = [c for c in evaluated if c.model_id == model_id]
                assert side and mean_token_gap(store, model_id, side) < 1e-3, (summary.round_index, model_id)


def test_gate_waits_for_reviews_then_refuses_to_train_when_humans_disagree(prefect_harness, round_config):
    """Outside a deployment, `review.gate: wait` ends the round as waiting; reviewed and rerun, it checks agreement."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.round import rlaif_round
    from review.session import add_reviewer, next_item, record_review

    config = round_config.model_copy(update={"review": round_config.review.model_copy(
        update={"gate": "wait", "min_reviewed": 1, "min_kappa": 0.2, "min_accuracy": 0.6})})
    waiting = rlaif_round(config=config)
    assert waiting.status == "waiting_for_review" and not waiting.train.trained and "waiting for reviews: 0/" in waiting.decision

    with Store(config.store) as store:
        rnd = store.rounds()[0]
        assert rnd.status == "waiting_for_review" and rnd.status_reason == waiting.decision
        add_reviewer(store, "alice")
        verdicts = store.verdicts([q.pair_id for q in store.review_queue(rnd.round_id)], waiting.judge_id, rnd.constitution_hash)
        # the human always says the opposite of what the judge would train on
        while (item := next_item(store, 1, "alice", reviews_per_pair=1)) is not None:
            v = verdicts[item.pair_id]
            judge_says = v.winner if v.status == "ok" and v.consistent and v.winner in ("a", "b") else "tie"
            human_wants = {"a": "b", "b": "a", "tie": "a"}[judge_says]
            left_is = "a" if item.shown_order == "ab" else "b"
            record_review(store, 1, "alice", item.pair_id, "left" if human_wants == left_is else "right", None, 1)

    summary = rlaif_round(config=config)  # resumes the waiting round
    assert summary.round_index == 1 and summary.status == "finished"
    assert not summary.agreement.passed and summary.agreement.accuracy == 0.0
    assert not summary.train.trained and summary.candidate_id is None and not summary.promoted
    assert "judge-human agreement too low" in summary.decision
    with Store(config.store, read_only=True) as store:
        assert store.count_rows()["train_runs"] == 0
        overall = [a for a in store.agreement("round-0001") if a.scope == "overall"]
        assert overall[0].accuracy == 0.0 and overall[0].n == summary.agreement.n > 0
    status = CliRunner().invoke(app, ["status", "--db", str(config.store.file)], env={"COLUMNS": "80"})
    assert status.exit_code == 0 and "round 1 (policy" in status.output, status.output
    assert "judge-human agreement too low" in " ".join(status.output.split()), status.output
    # the rounds table fits an 80-column terminal with every header whole
    table = status.output.split("round 1 (policy")[0].splitlines()
    assert max(len(line) for line in table) <= 80 and "…" not in "".join(table), status.output
    header = next(line for line in table if line.split()[:2] == ["#", "status"])
    assert header.split() == ["#", "status", "pairs", "consistent", "reviewed", "κ", "DPO", "loss", "LC", "win", "promoted"]


def test_release_lets_a_waiting_round_train_without_reviews(prefect_harness, round_config):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.round import rlaif_round

    config = round_config.model_copy(update={"review": round_config.review.model_copy(update={"gate": "wait"})})
    assert rlaif_round(config=config).status == "waiting_for_review"
    runner = CliRunner()
    added = runner.invoke(app, ["review", "add-reviewer", "alice", "--db", str(config.store.file)])
    assert added.exit_code == 0 and "reviewer alice added" in added.output
    again = runner.invoke(app, ["review", "add-reviewer", "alice", "--db", str(config.store.file)])
    assert again.exit_code == 2 and "already exists" in again.output
    released = runner.invoke(app, ["review", "release", "1", "--db", str(config.store.file)])
    assert released.exit_code == 0 and "round 1 released" in released.output, released.output

    summary = rlaif_round(config=config)
    assert summary.status == "finished" and summary.train.trained
    assert summary.agreement.passed and summary.agreement.reason.startswith("not checked: 0 reviewed pairs")

    # the round's DPO dataset, exported in TRL's conversational format
    import json

    import pyarrow.parquet as pq

    for name in ("dpo.jsonl", "dpo.parquet"):
        exported = runner.invoke(app, ["export", str(config.store.file.parent / name), "--db", str(config.store.file)])
        assert exported.exit_code == 0 and f"wrote {summary.train.audit.n_pairs} pairs of round 1" in exported.output, exported.output
    rows = [json.loads(line) for line in (config.store.file.parent / "dpo.jsonl").read_text().splitlines()]
    assert rows == pq.read_table(config.store.file.parent / "dpo.parquet").to_pylist()
    assert len(rows) == summary.train.audit.n_pairs and {r["source"] for r in rows} == {"judge"}  # before length balancing
    first = rows[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"] and first["prompt"][0]["content"] == config.system_prompt()
    assert [m["role"] for m in first["chosen"]] == [m["role"] for m in first["rejected"]] == ["assistant"]
    bad = runner.invoke(app, ["export", str(config.store.file.parent / "dpo.csv"), "--db", str(config.store.file)])
    assert bad.exit_code == 2 and "use a .jsonl or .parquet" in bad.output


def test_a_round_trained_on_two_processes_matches_one_process(prefect_harness, round_config, tmp_path):
    """`training.processes: 2` runs `rlaif train` under `accelerate launch` (DDP over gloo); the flow
    waits with its DuckDB connection released, then evaluates the candidate the launched run recorded."""
    import json

    from typer.testing import CliRunner

    from flows.cli import app
    from flows.round import rlaif_round

    # more prompts, and no length balancing: enough trustworthy pairs for several 2-pair steps
    one_config = round_config.model_copy(update={
        "prompts": round_config.prompts.model_copy(update={"train_per_round": 32}),
        "training": round_config.training.model_copy(update={"confounds": "off"})})
    one = rlaif_round(config=one_config)
    ddp_dir = tmp_path / "ddp"
    two_config = one_config.model_copy(update={
        "training": one_config.training.model_copy(update={"processes": 2}),
        "store": one_config.store.model_copy(update={"path": str(ddp_dir / "rlaif.duckdb")})})
    two = rlaif_round(config=two_config)

    assert two.train.trained and two.candidate_id == one.candidate_id  # same data, same config, same id
    assert two.eval is not None and two.eval.n == 3 * 2 and two.promoted
    assert (ddp_dir / "rlaif-artifacts" / "launch" / "train-round-0001.log").is_file()
    with Store(one_config.store, read_only=True) as store:
        single = store.train_metrics(one.train.run_id)
    with Store(two_config.store, read_only=True) as store:
        ddp = store.train_metrics(two.train.run_id)
        assert store.current_policy().model_id == two.candidate_id
    assert len(single) == len(ddp) >= 2 and two.train.n_pairs >= 3  # some steps hold 2 pairs: one per process
    for a, b in zip(single, ddp):
        for key in ("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "grad_norm"):
            assert getattr(b, key) == pytest.approx(getattr(a, key), abs=1e-4), (a.step, key)

    # `rlaif train` by hand: the candidate is recorded already; a data policy it fails is refused
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(json.dumps(two_config.model_dump(mode="json")))
    again = CliRunner().invoke(app, ["train", "--config", str(config_file), "--round", "1"])
    assert again.exit_code == 0 and f"candidate {one.candidate_id}" in again.output, again.output
    strict = two_config.model_copy(update={"training": two_config.training.model_copy(update={"min_pairs": 1000})})
    config_file.write_text(json.dumps(strict.model_dump(mode="json")))
    refused = CliRunner().invoke(app, ["train", "--config", str(config_file), "--round", "1"])
    assert refused.exit_code == 1 and "not training: only" in refused.output and "min_pairs 1000" in refused.output
    missing = CliRunner().invoke(app, ["train", "--config", str(config_file), "--round", "7"])
    assert missing.exit_code == 1 and "has no round 7" in missing.output


def test_a_constitution_changed_mid_round_is_refused_and_nothing_is_written(prefect_harness, round_config):
    from flows.round import rlaif_round
    from store.db import StoreError

    config = round_config.model_copy(update={"review": round_config.review.model_copy(update={"gate": "wait"})})
    assert rlaif_round(config=config).status == "waiting_for_review"  # round 1 is unfinished
    with Store(config.store, read_only=True) as store:
        before = store.primary_keys()
    constitution = Path(config.constitution)
    constitution.write_text(constitution.read_text().replace("At most 5 words.", "At most 6 words."))
    with pytest.raises(StoreError, match="Refusing to mix them in one round"):
        rlaif_round(config=config)
    with Store(config.store, read_only=True) as store:
        assert store.primary_keys() == before and store.rounds()[0].status == "waiting_for_review"


def test_promotion_follows_the_gate_and_never_a_collapsed_candidate(round_config):
    """The round promotes exactly when the evaluation's gate says promote, with its reason; a collapsed
    candidate never, whatever the evaluation says."""
    from evals.decision import Decision
    from evals.stage import EvalOutcome, ModelStats
    from flows.round import promote
    from stats.intervals import Interval
    from training.candidate import TrainOutcome

    stats = ModelStats(model_id="m", mean_tokens=10, median_tokens=10, principle_pass={})
    rate = Interval(estimate=0.6, low=0.52, high=0.7)
    trained = TrainOutcome(trained=True, reason="trained", candidate_id="cand")
    with Store(round_config.store) as store:
        store.append([ModelRow(model_id="cand", parent_id=None, kind="adapter", path="a", created_round=1, promoted=False)])
        for verdict in ("promote", "undecided", "worse", "vetoed", "promote"):
            evaluation = EvalOutcome(prompts=8, samples_per_prompt=4, n=32, wins=20, losses=12, ties=0, raw=rate, lc=rate,
                                     lc_plain=rate, length_coef=0.0, length_decided=0.0, consistency=1.0,
                                     decision=Decision(verdict=verdict, reason=f"because {verdict}"), candidate=stats, baseline=stats)
            promoted, decision = promote.fn(store, trained, evaluation)
            assert promoted is (verdict == "promote") and decision == f"because {verdict}"
            assert store.by_ids(ModelRow, ["cand"])["cand"].promoted is promoted
            assert store.by_ids(ModelRow, ["cand"])["cand"].promotion_reason == decision
        collapsed = trained.model_copy(update={"collapsed": True, "reason": "collapse"})
        promoted, decision = promote.fn(store, collapsed, evaluation)  # the last evaluation says promote
        assert not promoted and decision == "not promoted: collapse"
