"""CITER (arXiv 2502.01976): token-level routing between the SLM and the LLM.

labels.py (teacher-forced token labels and rollouts), router.py (the MLP on the SLM's hidden state),
decode.py (the two-cache token-level decoder), cascade.py (the decoder as a registrable, servable
cascade, and how its tokens are priced), evaluate.py (τ sweeps and the query-level comparison),
stage.py (`escalate citer train`, and the registry candidate), config.py (the profile's `citer:` section).
"""

# The strategy name of a token-level bundle, summary row and registry candidate. Kept here, free of
# imports, so the registry and the gateway can name it without loading torch.
STRATEGY = "citer"
# The router rounds (the paper trains a round-2 router on labels from the round-1 cascade's own rollouts).
ROUNDS = (1, 2)
