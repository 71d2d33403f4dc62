-- One row per finished stage of a round (qualify, sampling, judging, training, eval): its typed
-- outcome (the model in flows/stages.py) and who ran it. A stage dispatched to a Prefect worker
-- writes its row there; the round reads the outcome back, and a rerun skips finished stages.
CREATE TABLE stage_runs (
    round_id          VARCHAR NOT NULL,
    stage             VARCHAR NOT NULL,
    outcome_json      VARCHAR NOT NULL,
    flow_run_id       VARCHAR,               -- the Prefect flow run that ran it
    work_pool         VARCHAR,               -- the worker's pool; NULL when it ran inside the round's process
    host              VARCHAR NOT NULL,
    pid               INTEGER NOT NULL,
    finished_at       TIMESTAMP NOT NULL,
    PRIMARY KEY (round_id, stage)
);

-- What other code reads of a round, as typed columns (set when the round ends or waits for reviews):
-- the judge whose verdicts it trains on, its candidate and the candidate's train run.
ALTER TABLE rounds ADD COLUMN judge_id VARCHAR;
ALTER TABLE rounds ADD COLUMN candidate_id VARCHAR;
ALTER TABLE rounds ADD COLUMN train_run_id VARCHAR;
