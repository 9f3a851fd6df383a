"""The zoo stage: train the embedded models (sources 'zoo'), or copy shipped ones; record external models in
the manifest either way.

Run: `escalate zoo build --profile tiny` (or `dvc repro zoo@tiny`). Writes artifacts/<profile>/zoo/:
manifest.json (every model: name, source, backend, parameter count) and, for a profile with a `zoo:`
section, the tokenizer, slm/ and llm/ checkpoints, their losses and zoo.json (with each model's calib
curve and the gate's verdict). The gate (`zoo.slm_accuracy`, `zoo.llm_min_accuracy`) fails the stage when a
model's calib accuracy misses its band.

`escalate zoo ship --profile tiny` copies a built zoo to zoo/tiny/ (committed: a few MB), every file's
SHA-256 in its zoo.json; a profile's `zoo.shipped: zoo/tiny` then makes this stage copy those files,
each checked against its digest, instead of training, so a fresh clone starts from the same weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from escalate.config import ConfigError, Profile, ZooConfig
from escalate.prompts import format_prompt
from escalate.sampling import grader_kind
from escalate.stages.base import Stage, load_questions, paths

ROLES = ("slm", "llm")


class ZooGateError(ConfigError):
    """A built (or shipped) zoo outside the profile's accuracy bands: the cascade it would serve has no gap."""


class ShippedZooError(ConfigError):
    """A shipped zoo that cannot be used as it is: a file changed or missing, or built from another recipe."""


class ZooStage(Stage):
    name = "zoo"
    command = ("zoo", "build")
    help = "train the tokenizer, SLM and LLM from config (tiny, smoke), or copy a shipped zoo"
    group_help = "the embedded models"
    outputs = ("zoo",)

    def build(self, profile: Profile, root: Path | str = ".") -> Path:
        out = paths(profile, root)["zoo"]
        out.mkdir(parents=True, exist_ok=True)
        summary: dict = {}
        cfg = profile.zoo
        if cfg is not None and any(m.source == "zoo" for m in profile.models.values()):
            if cfg.shipped:
                summary = install(Path(root) / cfg.shipped, out, recipe(profile))
            else:
                summary = train(profile, root, out)
            failures = gate_failures(cfg, summary)
            summary["gate"] = {"passed": not failures, "failures": failures}
            (out / "zoo.json").write_text(json.dumps(summary, indent=2))
            if failures:
                raise ZooGateError(f"zoo gate ({profile.name}): " + "; ".join(failures))
        manifest = {role: {"name": m.name, "source": m.source, "backend": m.backend, "endpoint": m.endpoint,
                           "n_params": summary.get("models", {}).get(role, {}).get("n_params", m.n_params)}
                    for role, m in profile.models.items()}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return out

    def log(self, profile: Profile, root: Path | str = ".") -> dict:
        zoo = paths(profile, root)["zoo"]
        summary_path = zoo / "zoo.json"
        if not summary_path.is_file():
            return {"metrics": {}, "artifacts": [zoo / "manifest.json"]}
        summary = json.loads(summary_path.read_text())
        metrics = {f"zoo.{role}.{k}": v for role, m in summary["models"].items()
                   for k, v in m.items() if isinstance(v, (int, float))}
        metrics["zoo.param_ratio"] = summary["param_ratio"]
        series = {f"zoo.{role}.loss": json.loads((zoo / role / "losses.json").read_text())
                  for role in summary["models"]}
        return {"metrics": metrics, "series": series, "artifacts": [summary_path, zoo / "manifest.json"]}


def train(profile: Profile, root: Path | str, out: Path) -> dict:
    """Pretrain the zoo, each model keeping its best weights on the calib sample (never test)."""
    from escalate.models import zoo  # torch and transformers: only for the stages that need them

    assert profile.zoo is not None
    questions = load_questions(profile, root)
    exclude = set(questions.loc[questions["split"] != "train", "question"])
    calib = questions[questions["split"] == "calib"].head(profile.zoo.eval_questions or len(questions))
    summary = zoo.build_zoo(profile.zoo, profile.data.arith, out, profile.seed, exclude, graded_items(calib))
    summary["recipe"] = recipe(profile)
    return summary


def graded_items(questions: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(prompt, gold answer, grader kind) of each question, prompted and graded as the sample stage does."""
    return [(format_prompt(r["question"], r.get("choices") if grader_kind(r) == "choice" else None),
             str(r["answer"]), grader_kind(r)) for _, r in questions.iterrows()]


def recipe(profile: Profile) -> dict:
    """Everything the zoo's weights depend on: a shipped zoo is used only under the recipe it was built from."""
    assert profile.zoo is not None
    z = profile.zoo
    return {"seed": profile.seed, "data": {"arith": asdict(profile.data.arith)},
            "zoo": {"vocab_size": z.vocab_size, "slm": asdict(z.slm), "llm": asdict(z.llm),
                    "eval_questions": z.eval_questions, "eval_max_new_tokens": z.eval_max_new_tokens}}


def gate_failures(cfg: ZooConfig, summary: dict) -> list[str]:
    """Each band the zoo misses, as a sentence naming the figure, the band and the fix; [] when none is set or met."""
    models = summary.get("models", {})
    checks = []
    if cfg.slm_accuracy is not None:
        checks.append(("slm", "zoo.slm_accuracy", *cfg.slm_accuracy))
    if cfg.llm_min_accuracy is not None:
        checks.append(("llm", "zoo.llm_min_accuracy", cfg.llm_min_accuracy, 1.0))
    failures = []
    for role, key, low, high in checks:
        acc = models.get(role, {}).get("calib_accuracy")
        band = f"{key} [{low:g}, {high:g}]" if key == "zoo.slm_accuracy" else f"{key} {low:g}"
        if acc is None:
            failures.append(f"the {role.upper()} has no calib accuracy to check against {band}; rebuild it "
                            f"from a questions table with a calib split")
        elif acc < low:
            failures.append(f"the {role.upper()}'s calib accuracy {acc:.3f} is below {band}; train it longer "
                            f"(zoo.{role}.train.steps, patience) or enlarge zoo.{role}.arch")
        elif acc > high:
            failures.append(f"the {role.upper()}'s calib accuracy {acc:.3f} is above {band}; train it for fewer "
                            f"steps or shrink zoo.{role}.arch, so the LLM has questions left to win")
    return failures


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship(built: Path, dest: Path) -> dict:
    """Copy a built zoo's checkpoints, tokenizer, losses and zoo.json to `dest`, recording every file's SHA-256
    in zoo.json; returns the shipped summary. Refuses a zoo that failed its gate."""
    summary_path = built / "zoo.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: missing; build the zoo first (`escalate zoo build`, a profile "
                                f"whose models have source zoo and no zoo.shipped)")
    summary = json.loads(summary_path.read_text())
    if not summary.get("gate", {}).get("passed", True):
        raise ZooGateError(f"{summary_path}: the zoo failed its gate; fix it before shipping: "
                           + "; ".join(summary["gate"]["failures"]))
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "zoo.json").is_file():
        raise ConfigError(f"{dest}: not empty and not a shipped zoo; ship to an empty or new directory")
    files = {}
    for role in ROLES:
        shutil.rmtree(dest / role, ignore_errors=True)  # no file of an earlier shipment stays
        (dest / role).mkdir(parents=True)
        for path in sorted(p for p in (built / role).iterdir() if p.is_file()):
            shutil.copy2(path, dest / role / path.name)
            files[f"{role}/{path.name}"] = sha256(path)
    summary["files"] = files
    (dest / "zoo.json").write_text(json.dumps(summary, indent=2))
    return summary


def install(shipped: Path, out: Path, expected_recipe: dict) -> dict:
    """Copy a shipped zoo into `out` after checking every file against its SHA-256 and its recipe against the
    profile's; returns its summary."""
    summary_path = shipped / "zoo.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: missing; zoo.shipped must name a directory `escalate zoo ship` "
                                f"wrote")
    summary = json.loads(summary_path.read_text())
    files = summary.get("files") or {}
    odd = [name for name in files if len(Path(name).parts) != 2 or Path(name).parts[0] not in ROLES]
    if not files or odd:
        raise ShippedZooError(f"{summary_path}: lists no files or odd ones {odd}; ship it again with "
                              f"`escalate zoo ship`")
    changed = [name for name, digest in files.items()
               if not (shipped / name).is_file() or sha256(shipped / name) != digest]
    if changed:
        raise ShippedZooError(f"{shipped}: {', '.join(changed)} missing or changed since shipping (SHA-256 differs "
                              f"from zoo.json); restore them (`git checkout -- {shipped}`) or build and ship again")
    want, got = _flat(expected_recipe), _flat(summary.get("recipe", {}))
    differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if differ:
        raise ShippedZooError(f"{shipped} was built from another recipe ({', '.join(differ)} differ); build with "
                              f"zoo.shipped: null and ship again, or restore those settings")
    for role in ROLES:
        shutil.rmtree(out / role, ignore_errors=True)
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shipped / name, out / name)
    summary["shipped_from"] = str(shipped)
    return summary


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"zoo": {"slm": {...}}} -> {"zoo.slm....": value}, to name the settings two recipes differ in."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def ship_command(profile: Profile, dest: Path | None = None) -> str:
    """`escalate zoo ship`: the profile's built zoo to `dest` (default zoo/<profile>); says what to commit."""
    dest = dest or Path("zoo") / profile.name
    summary = ship(paths(profile)["zoo"], dest)
    size = sum((dest / name).stat().st_size for name in summary["files"])
    return (f"shipped {len(summary['files'])} files ({size / 1e6:.1f} MB) to {dest}; commit it and set "
            f"zoo.shipped: {dest} in the profile so the zoo stage copies these weights instead of training")
