"""Judging a candidate on validation data, below the algorithms that search: the run's metric and the output kind
that chose it (metrics.py, kind.py), the one budget rule (budget.py, saturation.py), a stage's share of the budget
and the decision on a model (decide.py), the search helpers every stage's try-judge-keep loop uses (search.py), and
the report's warnings on what validation can resolve (power.py)."""
