"""Training the SLM (DESIGN.md, "train/"): one module per method, each a config dataclass and a
function that builds a TRL trainer.

SATER (arXiv 2510.05164): `preferences` builds its tables from the samples table, `sater_dpo`
trains stage I (shortest-correct preference optimisation), `sater_refusal` stage II (answer or
refuse), and `sater` holds the profile's `sater:` section that configures both. Modules import
TRL inside their train functions, so loading a profile stays cheap.
"""
