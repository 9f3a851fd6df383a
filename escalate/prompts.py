"""How a question becomes a prompt, the same for training, sampling, evaluation and serving."""

from __future__ import annotations

import json

LETTERS = "ABCDEFGHIJ"


def format_prompt(question: str, choices: str | list[str] | None = None) -> str:
    """The plain completion prompt the zoo is trained on; choices (a list or its JSON) become lettered lines."""
    if isinstance(choices, str):
        choices = json.loads(choices)
    body = question.strip()
    if choices:
        body += "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"Question: {body}\nAnswer:"
