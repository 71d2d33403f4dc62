"""The held-out comparison of any two stored models (`rlaif compare`, `benchmarks/outcome.py`)."""

from __future__ import annotations

from constitution.loader import load_constitution
from evals.probes import load_probe_set
from evals.stage import EvalOutcome, eval_prompts, evaluate, sample_side
from flows.config import RoundConfig
from flows.judging import judge_server, taught_judge, trusted_principles
from flows.policy import model_sampler
from flows.progress import progress_bar
from judges.config import build_judge
from prompts.loader import load_prompts, select_heldout_prompts
from sampling.vllm_engine import choose_backend
from store.db import Store, StoreError
from store.ids import stable_id, stable_int
from store.rows import CompletionRow, ModelRow


def compare_models(config: RoundConfig, model_a: str, model_b: str) -> EvalOutcome:
    """A vs B on the config's held-out (and probe) prompts, sampled with the config's sampling
    backend (the same seeds on both sides), judged in both orders by its judge and decided by its
    eval section's rule, as a round's evaluation would be.

    Stored under round id `compare-<hash of the two ids and the seed>`: a rerun samples and judges
    nothing again.
    """
    constitution = load_constitution(config.constitution)
    heldout = select_heldout_prompts(load_prompts(config.prompts.source), config.prompts.heldout, config.seed)
    probes = [load_probe_set(source) for source in config.eval.probes]
    prompts = eval_prompts(heldout, probes)
    params = config.sampler.params().model_copy(update={"max_new_tokens": config.eval.max_new_tokens})
    seed = stable_int("compare-seed", config.seed) % 2**31
    eval_id = f"compare-{stable_id(model_a, model_b, seed)}"
    with Store(config.store) as store:
        known = store.by_ids(ModelRow, [model_a, model_b])
        for model_id in (model_a, model_b):
            if model_id not in known:
                raise StoreError(f"{store.name} has no model {model_id} (see `rlaif status`)")
        backend, _ = choose_backend(config.sampler.backend, config.sampler.vllm)

        def sample_more(first: int, k: int) -> tuple[list[CompletionRow], list[CompletionRow]]:
            sides = []
            for model_id in (model_a, model_b):  # one model (or engine) at a time
                with model_sampler(store, config, model_id, backend, eval_id) as sampler, \
                        progress_bar(f"sampling {model_id} {first + 1}-{first + k} ({backend})") as progress:
                    sides.append(sample_side(store, sampler, model_id, eval_id, prompts, config.system_prompt(), params,
                                             seed, first, k, progress))
            return sides[0], sides[1]

        with judge_server(config):
            judge = build_judge(config.judge)
            with progress_bar("measuring the judge") as progress:
                trusted, _, _ = trusted_principles(store, config, constitution, judge, progress)
            return evaluate(store, taught_judge(judge, trusted.taught), constitution, eval_id, heldout, probes, sample_more, config.eval.settings(),
                            progress_bar, trusted.uncounted)
