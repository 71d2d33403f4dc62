-- Initial schema (DESIGN.md section 2). Tables are append-only and keyed by deterministic ids
-- (content hashes), so re-running a crashed or finished step inserts nothing twice. Only `rounds`
-- (status) and `models` (promotion) are updated in place.

CREATE TABLE rounds (
    round_id          VARCHAR PRIMARY KEY,
    round_index       INTEGER NOT NULL UNIQUE,
    status            VARCHAR NOT NULL,      -- running | finished | failed
    status_reason     VARCHAR,
    policy_id         VARCHAR NOT NULL,      -- the model sampled from (fixed at round start)
    constitution_hash VARCHAR NOT NULL,
    seed              BIGINT NOT NULL,
    config_json       VARCHAR NOT NULL,      -- snapshot of the validated config
    summary_json      VARCHAR,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP
);

CREATE TABLE models (
    model_id          VARCHAR PRIMARY KEY,
    parent_id         VARCHAR,
    kind              VARCHAR NOT NULL,      -- base | adapter (an adapter applies on top of its parent)
    path              VARCHAR NOT NULL,
    created_round     INTEGER NOT NULL,      -- 0 for a base model
    promoted          BOOLEAN NOT NULL,
    promotion_reason  VARCHAR,
    data_hash         VARCHAR,
    config_json       VARCHAR,
    created_at        TIMESTAMP NOT NULL
);

CREATE TABLE prompts (
    prompt_id         VARCHAR PRIMARY KEY,   -- hash(text, source)
    text              VARCHAR NOT NULL,
    source            VARCHAR NOT NULL,
    tags              VARCHAR[] NOT NULL,
    split             VARCHAR NOT NULL       -- train | heldout
);

CREATE TABLE completions (
    completion_id     VARCHAR PRIMARY KEY,   -- hash(round, prompt, model, sample index, seed, purpose)
    round_id          VARCHAR NOT NULL,
    prompt_id         VARCHAR NOT NULL,
    model_id          VARCHAR NOT NULL,
    purpose           VARCHAR NOT NULL,      -- train | eval
    sample_index      INTEGER NOT NULL,
    seed              BIGINT NOT NULL,
    text              VARCHAR NOT NULL,
    token_ids         INTEGER[] NOT NULL,    -- sampled tokens, including the end-of-turn token if emitted
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason     VARCHAR NOT NULL,      -- stop | length
    sum_logprob       DOUBLE NOT NULL,       -- sum of log p(token) under the untempered policy
    sampling_json     VARCHAR NOT NULL,
    created_at        TIMESTAMP NOT NULL
);

CREATE TABLE pairs (
    pair_id           VARCHAR PRIMARY KEY,   -- hash(round, completion a, completion b)
    round_id          VARCHAR NOT NULL,
    prompt_id         VARCHAR NOT NULL,
    purpose           VARCHAR NOT NULL,      -- train | eval
    completion_a      VARCHAR NOT NULL,
    completion_b      VARCHAR NOT NULL
);

-- One row per judge call: a pair judged in one presentation order. The id is the judge cache key.
CREATE TABLE judgments (
    judgment_id       VARCHAR PRIMARY KEY,   -- hash(judge, constitution, prompt version, prompt, texts, order)
    pair_id           VARCHAR NOT NULL,      -- the pair that first asked for this judgment
    judge_id          VARCHAR NOT NULL,
    constitution_hash VARCHAR NOT NULL,
    prompt_version    VARCHAR NOT NULL,
    shown_order       VARCHAR NOT NULL,      -- ab: completion a shown first | ba
    parse_status      VARCHAR NOT NULL,      -- ok | invalid | error; only ok is ever a preference
    winner            VARCHAR,               -- a | b | tie (pair terms, not slot terms); NULL unless ok
    score             DOUBLE,                -- weighted principle score in [-1, 1], > 0 favours a
    votes_json        VARCHAR NOT NULL,      -- per principle: vote a|b|tie|n/a, score, source, detail
    rationale         VARCHAR NOT NULL,      -- the preference basis
    raw_response      VARCHAR NOT NULL,
    latency_s         DOUBLE NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          DOUBLE NOT NULL,
    created_at        TIMESTAMP NOT NULL
);

-- A pair's verdict: both orders combined. Orders that disagree make a low-confidence tie.
CREATE TABLE verdicts (
    pair_id           VARCHAR NOT NULL,
    judge_id          VARCHAR NOT NULL,
    constitution_hash VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,      -- ok | invalid | error
    winner            VARCHAR,               -- a | b | tie; NULL unless ok
    consistent        BOOLEAN NOT NULL,      -- both orders picked the same winner
    confidence        DOUBLE NOT NULL,
    score             DOUBLE,
    votes_json        VARCHAR NOT NULL,
    rationale         VARCHAR NOT NULL,
    judgment_ab       VARCHAR NOT NULL,
    judgment_ba       VARCHAR NOT NULL,
    PRIMARY KEY (pair_id, judge_id, constitution_hash)
);

CREATE TABLE review_queue (
    pair_id           VARCHAR PRIMARY KEY,
    round_id          VARCHAR NOT NULL,
    reasons           VARCHAR[] NOT NULL,    -- random | low_confidence | high_stakes:<tag>
    queued_at         TIMESTAMP NOT NULL
);

CREATE TABLE reviews (
    review_id         VARCHAR PRIMARY KEY,
    pair_id           VARCHAR NOT NULL,
    reviewer          VARCHAR NOT NULL,
    winner            VARCHAR NOT NULL,      -- a | b | tie | skip
    rationale         VARCHAR,
    shown_order       VARCHAR NOT NULL,
    created_at        TIMESTAMP NOT NULL
);

CREATE TABLE train_runs (
    run_id            VARCHAR PRIMARY KEY,   -- hash(round, parent model, data hash, training config)
    round_id          VARCHAR NOT NULL,
    parent_model_id   VARCHAR NOT NULL,
    candidate_id      VARCHAR NOT NULL,
    data_hash         VARCHAR NOT NULL,
    n_pairs           INTEGER NOT NULL,
    audit_json        VARCHAR NOT NULL,
    config_json       VARCHAR NOT NULL,
    created_at        TIMESTAMP NOT NULL
);

CREATE TABLE train_metrics (
    run_id            VARCHAR NOT NULL,
    step              INTEGER NOT NULL,
    loss              DOUBLE NOT NULL,
    reward_chosen     DOUBLE NOT NULL,
    reward_rejected   DOUBLE NOT NULL,
    reward_margin     DOUBLE NOT NULL,
    reward_accuracy   DOUBLE NOT NULL,
    grad_norm         DOUBLE NOT NULL,
    lr                DOUBLE NOT NULL,
    tokens_per_s      DOUBLE NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE evals (
    round_id          VARCHAR NOT NULL,
    candidate_id      VARCHAR NOT NULL,
    baseline_id       VARCHAR NOT NULL,
    metric            VARCHAR NOT NULL,
    value             DOUBLE NOT NULL,
    n                 INTEGER NOT NULL,
    PRIMARY KEY (round_id, candidate_id, baseline_id, metric)
);
