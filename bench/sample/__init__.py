"""Sampling a server's process tree and the machine it runs on."""
