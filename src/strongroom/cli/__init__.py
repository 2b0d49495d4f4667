"""The ``strongroom`` command line.

Each component has its own module here (``keys.py``, ``sealing.py``, ...)
exposing click commands; :mod:`strongroom.cli.main` assembles them, catches
:class:`strongroom.errors.StrongroomError` once, prints one line plus a hint,
and exits with the error's documented code.
"""
