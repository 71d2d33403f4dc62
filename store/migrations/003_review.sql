-- Reviewers log in with a token; only its SHA-256 is stored.
CREATE TABLE reviewers (
    reviewer_id       VARCHAR PRIMARY KEY,   -- the reviewer's name
    token_sha256      VARCHAR NOT NULL UNIQUE,
    created_at        TIMESTAMP NOT NULL
);

-- Judge-human agreement on a round's reviewed pairs: overall, per principle and per prompt tag.
CREATE TABLE agreement (
    agreement_id      VARCHAR PRIMARY KEY,   -- hash(round, judge, constitution, scope, subject, reviews seen)
    round_id          VARCHAR NOT NULL,
    judge_id          VARCHAR NOT NULL,
    constitution_hash VARCHAR NOT NULL,
    scope             VARCHAR NOT NULL,      -- overall | principle | tag
    subject           VARCHAR NOT NULL,      -- '' | principle id | tag
    n                 INTEGER NOT NULL,
    accuracy          DOUBLE,
    kappa             DOUBLE,
    computed_at       TIMESTAMP NOT NULL
);

-- The review gate: a round waits for its reviews until they are done or someone releases it.
ALTER TABLE rounds ADD COLUMN review_released BOOLEAN DEFAULT false;
ALTER TABLE rounds ADD COLUMN flow_run_id VARCHAR;
