"""Errors raised by analyzers, so that callers can catch them apart from torch's own."""


class UnsupportedModelError(ValueError):
    """The model contains modules or operations an analyzer cannot explain.

    The message names each offending module's path and type and what to do about it.
    """

    def __init__(self, problems: list[str], advice: str = ""):
        self.problems = list(problems)
        lines = ["The model cannot be explained as it is:"] + [f"  - {p}" for p in self.problems]
        if advice:
            lines.append(advice)
        super().__init__("\n".join(lines))
