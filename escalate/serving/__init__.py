"""Serving: vLLM OpenAI servers for the cascade's models, and the gateway that applies its strategy.

`vllm_server` starts and stops vLLM in its own environment (.venv-serve), `deployment` lays a
registered bundle out in a serving directory, `engine` answers one request with a bundle's cascade
over HTTP backends (and says who answered), `gateway` is the OpenAI-compatible FastAPI app, and
`promote` moves a registry alias onto running servers, or leaves everything as it was.
"""
