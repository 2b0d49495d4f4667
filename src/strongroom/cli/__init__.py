"""The ``strongroom`` command line.

Each component has its own module here (``keys.py``, ``sealing.py``, ...)
exposing click commands; :mod:`strongroom.cli.main` assembles them, catches
:class:`strongroom.errors.StrongroomError` once, prints one line plus a hint,
and exits with the error's documented code.
"""

import sys

# httpx imports its own command-line tool (rich, pygments: ~25 ms of every command)
# whenever those are installed, as ours are; the CLI never uses it, and a None entry
# makes httpx fall back to its stub (its ``from ._main import main`` raises ImportError).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
