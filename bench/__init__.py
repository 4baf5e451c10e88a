"""The harness: run/ runs trials, sample/ reads what each costs, results.py stores them,
and report/ and gate/ read them back -- through results.py alone (metrics.py names
what they read)."""
