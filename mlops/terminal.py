"""Where the CLI's tables go: stdout at the terminal's width, or unbounded when piped or redirected.

Rich assumes 80 columns when stdout is not a terminal, which cut registry and key tables to ``fume_ho…`` in a
pipe or a CI log; a table that is not wrapped keeps its ids and versions whole for grep and copy-paste.
"""

from __future__ import annotations

import sys

from rich.console import Console

#: columns of a table written to a pipe or a file (rich only pads expanded tables, and ours are not)
PIPED_WIDTH = 1000


def table_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
