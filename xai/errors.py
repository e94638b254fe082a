"""Errors raised by analyzers, so that callers can catch them apart from torch's own."""
from typing import NamedTuple

FIRST_PATHS = 3  # paths named per module type in the message; ``problems`` keeps them all


class Problem(NamedTuple):
    """One module an analyzer cannot explain: its path, its type's name and why."""

    path: str
    module_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '<model>'} ({self.module_type}): {self.reason}"


class UnsupportedModelError(ValueError):
    """The model contains modules or operations an analyzer cannot explain.

    ``problems`` lists every offending module ("path (Type): reason"); the message groups them by module type and
    reason (one line each, with a count and the first paths) and ends with what to do about it.
    """

    def __init__(self, problems: list[Problem | str], advice: str = ""):
        self.problems = [str(p) for p in problems]
        groups: dict[tuple, list[Problem]] = {}
        for p in problems:
            key = (p.module_type, p.reason) if isinstance(p, Problem) else (str(p),)
            groups.setdefault(key, []).append(p)
        lines = ["The model cannot be explained as it is:"]
        for key, members in groups.items():
            if len(members) == 1:
                lines.append(f"  - {members[0]}")
                continue
            paths = ", ".join(p.path or "<model>" for p in members[:FIRST_PATHS])
            more = f" and {len(members) - FIRST_PATHS} more" if len(members) > FIRST_PATHS else ""
            lines.append(f"  - {key[0]} x{len(members)} ({paths}{more}): {key[1]}")
        if advice:
            lines.append(advice)
        super().__init__("\n".join(lines))
