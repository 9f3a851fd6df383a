"""CITER (arXiv 2502.01976): token-level routing between the SLM and the LLM.

labels.py (teacher-forced token labels and rollouts), router.py (the MLP on the SLM's hidden state),
decode.py (the two-cache token-level decoder), evaluate.py (τ sweeps and the query-level comparison),
stage.py (`escalate citer train`), config.py (the profile's `citer:` section).
"""
