"""Harness: trials, resource sampling, results, report and regression checks."""
