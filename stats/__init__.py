"""Statistics shared by the judge, review and evaluation code: intervals, the prompt-level
bootstrap, sequential decision boundaries, agreement. Plain numpy/scipy, no other rlaif package."""
