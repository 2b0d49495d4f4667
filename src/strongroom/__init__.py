"""Strongroom: hand a host a sealed application that only an attested enclave can run.

The public modules of each component package are the API; implementation
details live under ``strongroom._internal``.
"""

__version__ = "0.1.0"
