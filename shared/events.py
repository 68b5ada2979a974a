"""The bank's event stream, the one fact both services must agree on (CONTRACT.md section 4).

Each acknowledged mutation is appended to the Redis stream ``GMEM_BANK_REDIS_STREAM`` (default
``gmem:bank:events``) as the fields ``{"version", "op", "id"}``: the bank version after the mutation,
the operation (``insert``, ``interpolate``, ``delete``) and the snippet id it concerns. The bank writes
them (``services/bank/events.py``), the generator's pinned-snippet cache reads them
(``services/generator/cache.py``); both read the stream name from the same variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_STREAM = "gmem:bank:events"
STREAM_ENV = "GMEM_BANK_REDIS_STREAM"
OPS: tuple[str, ...] = ("insert", "interpolate", "delete")


@dataclass(frozen=True)
class BankEvent:
    version: int
    op: str
    id: int

    def fields(self) -> dict[str, int | str]:
        """The stream entry's fields, as XADD takes them."""
        return {"version": self.version, "op": self.op, "id": self.id}

    @property
    def is_delete(self) -> bool:
        return "delete" in self.op.lower()


Fields = Mapping[bytes, bytes] | Mapping[str, str]


def _text(fields: Fields) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }


def decode_event(fields: Fields) -> BankEvent | None:
    """The event of one stream entry (XREAD/XRANGE fields); None for an entry that is not one."""
    text = _text(fields)
    try:
        return BankEvent(int(text["version"]), text.get("op", ""), int(text["id"]))
    except (KeyError, ValueError):
        return None


def event_version(fields: Fields) -> int | None:
    """The ``version`` field alone (an entry may carry a version without a valid id)."""
    try:
        return int(_text(fields)["version"])
    except (KeyError, ValueError):
        return None
