"""Comparing runs (scripts/compare_runs.py): run dirs read, grouped by setting, tested against a baseline,
written as a table, csv and json, and their val curves plotted."""
