"""Routers: the interface (base.py), the built-in routers, one module each, and the registry by name
(registry.py: ROUTERS, make_router). The methods' own routers live in their packages (escalate/sater/routers,
escalate/corea/routers) and are registered there by one line each.
"""
