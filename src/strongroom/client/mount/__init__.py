"""The synced folder: an enclave's shared folder as a local directory, over FUSE.

- :mod:`.fs` — the filesystem: every operation is a Files API request
  (:class:`~strongroom.client.enclave.EnclaveClient`), with attribute caching,
  large coalesced writes and read-ahead.
- :mod:`.mounts` — mounting and unmounting (``fusermount3``), the records in
  ``run/mount/``, and finding the mounts of an enclave.

The mount runs as the host user, in a process of its own (``strongroom mount``
starts it in the background); it reaches nothing but the enclave's Files API,
so it can do nothing ``push``/``pull`` cannot.
"""
