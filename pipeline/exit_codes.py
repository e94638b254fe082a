"""Exit codes of the scheduled evaluation (``pipeline.scheduled``, ``pipeline.regression``), for cron, systemd and Kubernetes.

They follow ``sysexits.h`` where it has a code: 64 bad usage, 75 try again later (another run holds the lock).
"""
import argparse
import sys
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    JOB_FAILED = 1  # the sweep (or a job in it) failed; the regression check still ran on the runs that finished
    REGRESSION = 2  # SRG of a config dropped beyond the threshold since its previous scheduled run
    USAGE = 64  # EX_USAGE: bad command line
    LOCKED = 75  # EX_TEMPFAIL: another scheduled run is still going


class UsageParser(argparse.ArgumentParser):
    """argparse exits 2 on a bad command line, which would read as "regression": exit 64 instead."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")
