-- Judge qualification (judges/qualification.py): can a judge see each principle before its votes
-- count? One row per (judge, constitution, qualification set); the measurements are in result_json.
CREATE TABLE judge_qualifications (
    judge_id          VARCHAR NOT NULL,
    constitution_hash VARCHAR NOT NULL,
    set_hash          VARCHAR NOT NULL,      -- hash(case builder version, constitution, split, prompts + answers)
    split             VARCHAR NOT NULL,      -- qualify (the held-out violations) | select
    mean_sensitivity  DOUBLE,
    position_consistency DOUBLE,
    slot_bias         DOUBLE,
    result_json       VARCHAR NOT NULL,      -- per principle: n, sensitivity + 95% CI, wrong, flip rate, undecided
    created_at        TIMESTAMP NOT NULL,
    PRIMARY KEY (judge_id, constitution_hash, set_hash)
);

-- The model-judged principles a verdict left out of its winner because the judge did not qualify on
-- them (their votes are still in votes_json and in the judgments).
ALTER TABLE verdicts ADD COLUMN uncounted VARCHAR[] DEFAULT [];
