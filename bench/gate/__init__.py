"""The gate: a run judged against another, and against what must always hold."""
