"""Prefect tasks: thin wrappers that call the escalate library and set retries, caching and logging."""
