"""COREA's router (its verbalized confidence as the cascade score), registered by name in
escalate.routers.registry (one line there)."""
