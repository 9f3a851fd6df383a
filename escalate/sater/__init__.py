"""SATER (arXiv 2510.05164): train the SLM to answer short and to refuse what it would get wrong.

Run: `escalate sater train --profile tiny` (or `dvc repro sater@tiny`). One shape for every method:
config.py (the profile's `sater:` section), preferences.py (its training tables from the samples
table), dpo.py (stage I: shortest-correct preference optimisation), refusal_sft.py (stage II: answer
or refuse), routers/ (refusal, pre-generation and vote routing, registered in escalate.routers),
report.py (the measurement and report.md) and stage.py (the pipeline stage and its registry candidates).
"""
