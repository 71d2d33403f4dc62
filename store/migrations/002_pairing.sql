-- How a pair was formed: "pair" (n=2: sample 0 vs 1), "round_robin" (n>2: every two samples,
-- judged only to rank them) or "max_min" (n>2: best vs worst sample after judging, Online-RLHF).
ALTER TABLE pairs ADD COLUMN pairing VARCHAR DEFAULT 'pair';  -- (DuckDB 1.5 adds no NOT NULL column)
