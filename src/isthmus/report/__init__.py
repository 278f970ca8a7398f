"""Self-contained HTML reports: the page builder (`Report`, `Link`, `Mark`) and the report of any
result folder (`write_report`, `build_report`, `detect`), with the command record they show
(`record_command`, `read_command`). Layout: docs/report.md."""

from .folder import COMMAND_FILE as COMMAND_FILE
from .folder import read_command as read_command
from .folder import record_command as record_command
from .kinds import KINDS as KINDS
from .kinds import detect as detect
from .page import GENERATOR as GENERATOR
from .page import Link as Link
from .page import Mark as Mark
from .page import Report as Report
from .page import data_uri as data_uri
from .page import flatten as flatten
from .page import generator_of as generator_of
from .results import build_report as build_report
from .results import write_report as write_report
