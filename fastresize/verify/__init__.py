"""The verification of max-size-first, behind ``python -m fastresize memory``.

The experiment (:mod:`.schedules`) runs each schedule in a fresh child process (:mod:`.child`), a few
at a time (:mod:`.pool`); :mod:`.run` calibrates the caps, then runs every schedule under them;
:mod:`.report` gives the verdicts, and :mod:`.output` prints, draws and saves them; :mod:`.cli` holds
the command's options.
"""

from fastresize.verify.cli import DESCRIPTION, add_arguments
from fastresize.verify.output import print_report, report_figure, save_report
from fastresize.verify.report import build_report
from fastresize.verify.run import run_verification

__all__ = [
    "DESCRIPTION",
    "add_arguments",
    "build_report",
    "print_report",
    "report_figure",
    "run_verification",
    "save_report",
]
