"""SATER's routers (refusal cascade, pre-generation refusal probability, weighted vote), registered by name in
escalate.routers.registry (one line each there)."""
