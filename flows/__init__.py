"""Prefect flows: wire tasks, nothing else. Run one with `python -m flows.<name> --help`."""
