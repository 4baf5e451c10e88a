"""REPORT.md from a run: figures, tables, plots and the sentences drawn from them."""
