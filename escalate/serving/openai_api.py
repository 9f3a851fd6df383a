"""The OpenAI wire format the gateway speaks: request models, response bodies, error bodies.

Only what a cascade can honour is accepted: one choice (n = 1), text content, no tools. Sampling
fields are accepted for client compatibility but the bundle's own settings decide generation,
because the router's threshold was fitted on exactly those; `max_tokens` only truncates, and `usage`
counts what was returned. A parameter asking for what the gateway cannot apply (`logprobs`,
`top_logprobs`, a `response_format` other than text, `stop`, `echo`, `n` > 1) is a 400 naming it,
never silently ignored (`unsupported`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from escalate.cascade import MIXED

MAX_QUESTION_CHARS = 8_000


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Common(BaseModel):
    """Fields both endpoints share; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=128, description="a cascade gives one answer: more is refused by name")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    user: str | None = None
    # Asked for by OpenAI clients, not applied by a cascade: a request that sets them is refused (`unsupported`).
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    echo: bool | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(parameter, why) for the first parameter the gateway cannot apply, or None."""
        asked = {
            "n": (self.n > 1, "a cascade gives one answer per request; send n = 1"),
            "logprobs": (bool(self.logprobs), "log-probabilities are the router's input, not returned"),
            "top_logprobs": (bool(self.top_logprobs), "log-probabilities are the router's input, not returned"),
            "response_format": (self.response_format is not None and self.response_format.get("type") != "text",
                                "only text answers: the cascade grades and routes plain answers"),
            "stop": (bool(self.stop), "stop sequences are not applied: the bundle's generation settings decide"),
            "echo": (bool(self.echo), "the prompt is not echoed"),
        }
        return next(((name, why) for name, (is_set, why) in asked.items() if is_set), None)


class ChatCompletionRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    tools: list[Any] | None = Field(default=None, max_length=0, description="not supported")

    def question(self) -> str:
        """The last user message: the cascade answers one question, not a conversation."""
        users = [m for m in self.messages if m.role == "user"]
        if not users:
            raise ValueError("messages has no user message to answer")
        return _question(users[-1].text())

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(description="one prompt (a one-element list is accepted)")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request")
        return value

    def question(self) -> str:
        return _question(self.prompt if isinstance(self.prompt, str) else self.prompt[0])

    def token_limit(self) -> int | None:
        return self.max_tokens


def _question(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("the question is empty")
    if len(text) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question has {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")
    return text


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which its clients turn into typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def truncate(text: str, limit: int | None) -> tuple[str, str]:
    """The answer cut to `limit` whitespace-separated words (a token proxy), and the finish reason."""
    if limit is None:
        return text, "stop"
    words = text.split(" ")
    return (" ".join(words[:limit]), "length") if len(words) > limit else (text, "stop")


def usage(result: dict[str, Any], limit: int | None = None) -> dict[str, int]:
    """Tokens of the model that answered (OpenAI's usage); the escalate object has both models' (and what they cost).

    A token-level answer both models wrote counts the SLM's: it read the prompt and stepped on every token.
    An answer cut to `limit` (max_tokens) counts at most `limit` completion tokens: what the client received.
    """
    role = "slm" if result["model"] == MIXED else result["model"]
    prompt, output = int(result[f"{role}_prompt_tokens"]), int(result[f"{role}_output_tokens"])
    output = min(output, limit) if limit is not None else output
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def route_headers(meta: dict[str, Any]) -> dict[str, str]:
    """Who answered, by which strategy, at what cost, as response headers (as LiteLLM and vLLM Semantic Router
    send them), so a proxy or a log pipeline reads the route without parsing the body."""
    cost = meta["cost"]["total"]
    return {"x-escalate-model": str(meta["model"]), "x-escalate-strategy": str(meta["strategy"]),
            "x-escalate-escalated": "true" if meta["escalated"] else "false",
            "x-escalate-cost": f"{float(cost):.6g}", "x-escalate-version": str(meta["deployment"]["version"])}


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_body(model: str, text: str, finish: str, result: dict[str, Any], meta: dict[str, Any],
              limit: int | None = None) -> dict[str, Any]:
    return {"id": completion_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage(result, limit), "escalate": meta}


def text_body(model: str, text: str, finish: str, result: dict[str, Any], meta: dict[str, Any],
              limit: int | None = None) -> dict[str, Any]:
    return {"id": completion_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": usage(result, limit), "escalate": meta}


def stream_chunks(chat: bool, model: str, text: str, finish: str, result: dict[str, Any],
                  meta: dict[str, Any], limit: int | None = None) -> list[dict[str, Any]]:
    """The answer as SSE chunks: a role chunk (chat), one chunk per word, then a final chunk with the
    finish reason, usage and the escalate object. The cascade decides before the first chunk: a
    cascade strategy has to read the SLM's whole answer to score it."""
    ident, created = completion_id("chatcmpl" if chat else "cmpl"), int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str | None, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                {"content": piece} if piece is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish_reason, "logprobs": None}
        return {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}

    words = text.split(" ")
    chunks = [chunk(None, None, role=True)] if chat else []
    chunks += [chunk(w if i == 0 else " " + w, None) for i, w in enumerate(words) if w or i == 0]
    chunks.append({**chunk(None, finish), "usage": usage(result, limit), "escalate": meta})
    return chunks
