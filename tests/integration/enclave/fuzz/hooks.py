"""schemathesis hooks for the enclave API's fuzz run (``SCHEMATHESIS_HOOKS``).

``application/x-tar`` bodies (``POST /v1/files/archive``) are sent as the
bytes generated for their ``format: binary`` schema, as octet-stream bodies
are. (``POST /v1/runs`` answers its events as ``application/x-ndjson`` only
for a package the image pins, which the fuzz run has none of: its answers
are Problems, checked like every other.)
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
