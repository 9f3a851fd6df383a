"""The pipeline's stages (DESIGN.md, "How the pieces fit"): each reads its inputs from disk and writes its outputs.

Each stage is one `escalate` subcommand and one DVC stage (dvc.yaml), so a stage's command is defined
once: `dvc repro` decides what to skip, the Prefect flow runs `dvc repro` stage by stage, and a person
can run any stage by hand. base.py holds the Stage shape and the scaffolding every stage shares;
registry.py the registry STAGES (in pipeline order) and what it drives; questions.py, zoo.py, samples.py
and evaluate.py the core stages; each method's stage lives in its package (escalate/sater/stage.py, ...).
"""

from escalate.stages.base import (
    Stage,
    cost_model,
    eval_settings,
    load_questions,
    numeric_tasks,
    paths,
    write_validated,
)

__all__ = ["Stage", "cost_model", "eval_settings", "load_questions", "numeric_tasks", "paths", "write_validated"]
