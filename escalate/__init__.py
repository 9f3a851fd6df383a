"""escalate: train small language models that know when to hand a query to a large one."""

__version__ = "0.1.0"
