"""The sets `escalate calibrate` samples: the constructed calibration set, the shifted targets, the calib split.

The constructed set holds as many questions from each part (the profile's own distribution and every
shift) as the others, drawn with seeds apart from the targets', so no constructed question is a target
question. Every set is a validated questions table before any model sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from escalate.calibration.shifts import BASE, BUILDERS, SHIFTS, ShiftConfig, questions_table
from escalate.calibration.verbalized import VERBALIZED, state_confidences, with_statements
from escalate.config import ConfigError, Profile
from escalate.models.backends import make_backend
from escalate.stages.base import load_questions, load_samples, paths, question_rules, sample_once

# Cascades on the SLM's own outputs: nothing is fitted beyond the SLM, so a threshold is all that transfers.
# The paper's UQ families: token probability, logit-based, entropy, answer agreement, verbalized confidence.
STRATEGIES = ("p_true_token", "mean_logprob", "min_logprob", "entropy", "self_consistency", VERBALIZED)
CONSTRUCTED, TARGET = "constructed", "target"


@dataclass(frozen=True)
class CalibrateSettings:
    n: int = 150  # questions per shifted set, and in the constructed set
    shifts: tuple[str, ...] = tuple(SHIFTS)
    strategies: tuple[str, ...] = STRATEGIES
    seed: int = 0
    how: ShiftConfig = ShiftConfig()
    parts: tuple[str, ...] = field(init=False)  # the constructed set's parts: the base distribution, then each shift

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError(f"--n must be >= 2 questions per set, got {self.n}")
        unknown = [s for s in self.shifts if s not in SHIFTS]
        if unknown or not self.shifts:
            raise ConfigError(f"--shifts: unknown or empty {unknown or self.shifts}; choose from {', '.join(SHIFTS)}")
        if len(set(self.shifts)) < 2:
            raise ConfigError("--shifts needs at least two distinct shifts: a target's single sources are the others")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise ConfigError(f"--strategies: {bad or 'none given'}; choose from {', '.join(STRATEGIES)} (cascades "
                              "on the SLM's own outputs, nothing fitted)")
        object.__setattr__(self, "parts", (BASE, *dict.fromkeys(self.shifts)))


def _seed(settings: CalibrateSettings, kind: str, part: str) -> int:
    """A seed per (set, part), far from the profile's question seeds (seed * 1000 + split offset)."""
    return 10_000 * (settings.seed + 1) + 100 * (kind == CONSTRUCTED) + list(BUILDERS).index(part)


def build_sets(profile: Profile, settings: CalibrateSettings) -> dict[str, pd.DataFrame]:
    """The constructed set's parts (`constructed/<part>`) and the shifted targets (`target/<shift>`), validated.

    Constructed parts are calib rows, targets test rows (schema.SPLITS); ids name the set and part.
    """
    per_part = math.ceil(settings.n / len(settings.parts))
    sets = {f"{CONSTRUCTED}/{part}": questions_table(part, per_part, _seed(settings, CONSTRUCTED, part),
                                                     profile.data.arith, "calib", CONSTRUCTED,
                                                     settings.how)
            for part in settings.parts}
    sets.update({f"{TARGET}/{shift}": questions_table(shift, settings.n, _seed(settings, TARGET, shift),
                                                      profile.data.arith, "test", TARGET,
                                                      settings.how)
                 for shift in settings.parts[1:]})
    from escalate.data.validation import ensure_valid  # great_expectations: seconds to import, see stages.base

    for name, df in sets.items():
        ensure_valid(df, "questions", source=f"calibration set {name}",
                     **{**question_rules(profile, df), "eval_split": None})
    return sets


def zoo_dir(profile: Profile, root: Path | str) -> Path:
    """The profile's built zoo, or an error naming the command that builds it."""
    zoo = paths(profile, root)["zoo"]
    if not (zoo / "manifest.json").is_file():
        raise FileNotFoundError(f"{zoo}: no built zoo; run `escalate zoo build --profile {profile.name}` first")
    return zoo


def sample_sets(profile: Profile, questions: pd.DataFrame, root: Path | str, seed: int) -> pd.DataFrame:
    """Both models' samples (K per question, sample 0 greedy, as the profile samples) on `questions`."""
    zoo = zoo_dir(profile, root)
    return pd.concat([sample_once(profile.models[role], role, zoo, questions, profile.sampling, seed)
                      for role in ("slm", "llm")], ignore_index=True)


def calib_split(profile: Profile, root: Path | str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The profile's calib questions and both models' samples on them: the samples stage's when it ran, else new."""
    questions = load_questions(profile, root)
    calib = questions[questions["split"] == "calib"].reset_index(drop=True)
    if calib.empty:
        raise ConfigError(f"profile {profile.name!r} has no calib questions; set data.arith.n_calib > 0")
    if paths(profile, root)["samples"].is_file():
        samples = load_samples(profile, root)
        samples = samples[samples["id"].isin(calib["id"])]
        if set(samples["id"]) == set(calib["id"]):
            return calib, samples.reset_index(drop=True)
    return calib, sample_sets(profile, calib, root, seed)


def add_statements(profile: Profile, questions: pd.DataFrame, samples: pd.DataFrame, root: Path | str) -> pd.DataFrame:
    """`samples` with the SLM's stated confidence after each of its greedy answers (verbalized.state_confidences)."""
    greedy = samples[(samples["model"] == "slm") & (samples["sample_idx"] == 0)].reset_index(drop=True)
    backend = make_backend(profile.models["slm"], "slm", zoo_dir(profile, root), profile.sampling.batch_size)
    try:
        statements = state_confidences(backend, questions, greedy)
    finally:
        backend.close()
    return with_statements(samples, statements)
