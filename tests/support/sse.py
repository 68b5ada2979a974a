"""Reading a text/event-stream in tests, parsed here rather than with the code under test."""

from __future__ import annotations

import json

import httpx


def read_events(url: str, timeout: float = 120) -> list[tuple[str, dict]]:
    """Every ``(event, data)`` of the stream at ``url`` up to and including ``done``; checks it is a 200
    event stream. Events end at a blank line; ``data:`` lines of one event join with newlines."""
    out: list[tuple[str, dict]] = []
    event: str | None = None
    data: list[str] = []
    with httpx.stream("GET", url, timeout=timeout) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line.split(":", 1)[1].strip())
            elif line == "" and event:
                out.append((event, json.loads("\n".join(data))))
                if event == "done":
                    break
                event, data = None, []
    return out
