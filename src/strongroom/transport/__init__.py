"""Transport: how Strongroom's processes reach each other, on both targets.

- :mod:`.base` — addresses (``unix:/path``, ``vsock:CID:PORT``, ``HOST:PORT``)
  and plain sockets for them;
- :mod:`.http` — one httpx transport for every address family (the enclave
  API client, the key-service client);
- :mod:`.framing` — length-prefixed messages (the local attestor socket);
- :mod:`.connect` — the HTTP ``CONNECT`` heads of the egress path;
- :mod:`.forward` — the asyncio byte pipes, and the in-enclave forwarder that
  exposes the key service at ``127.0.0.1:8000``;
- :mod:`.proxy` — the host's egress proxy and its allowlist (host only).

Everything but :mod:`.proxy` also runs inside the enclave, so this package
imports nothing at import time, and those modules import nothing host-only.
"""
