"""COREA (arXiv 2603.03752): train the SLM to state a calibrated confidence, and escalate on a low one.

Run: `escalate corea train --profile tiny` (or `dvc repro corea@tiny`). One shape for every method:
config.py (the profile's `corea:` section), confidence.py (the response format and its parser),
warmup.py (the supervised format warm-up), rewards.py and grpo.py (RL with and without the
calibration reward), routers/ (the confidence router, registered in escalate.routers), report.py (the
measurement and report.md) and stage.py (the pipeline stage and its registry candidate).
"""
