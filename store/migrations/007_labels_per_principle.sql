-- A review may label one principle: `principle` NULL is the reviewer's overall preference (every
-- review before this migration); a principle id says which reply is better on that principle (from
-- the review page's "which principle decided", an imported label or a gold set).
ALTER TABLE reviews ADD COLUMN principle VARCHAR;

-- Agreement with people, per principle, with its uncertainty and the judge's error rates:
-- kappa's 95% interval (bootstrap over pairs), the share of pairs people call different that the
-- judge decides the same way (true positive rate) and the share people call a tie that the judge
-- decides anyway (false positive rate).
ALTER TABLE agreement ADD COLUMN kappa_low DOUBLE;
ALTER TABLE agreement ADD COLUMN kappa_high DOUBLE;
ALTER TABLE agreement ADD COLUMN true_positive_rate DOUBLE;
ALTER TABLE agreement ADD COLUMN false_positive_rate DOUBLE;

-- completions.purpose and pairs.purpose may now also be 'gold': the replies and pairs of a gold set,
-- pairs people labelled that measure a judge (stored under the round id 'gold:<name>').
