"""Runnable example applications: ``python -m samples.hello``, ``python -m samples.bank``."""
