"""The alert envelope Traffic Ops clients read, for every process that answers HTTP (API and consumers)."""

from __future__ import annotations


def alerts(text: str, level: str = "error") -> dict[str, list[dict[str, str]]]:
    """``{"alerts": [{"text": text, "level": level}]}``."""
    return {"alerts": [{"text": text, "level": level}]}


def route_not_found(path: str) -> str:
    """The alert for a path nothing serves."""
    return f"The requested path '{path}' does not exist."
