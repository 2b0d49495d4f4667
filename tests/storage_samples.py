"""Small files of each kind a share holds, made in milliseconds with no key service.

- :func:`tiny_image`: a Nitro-style EIF (kernel, cmdline, metadata, ramdisk) that
  ``describe_image`` measures; different ``kernel`` bytes, different PCR0.
- :func:`tiny_sealed`: a real v1 sealed package (its header parses, its body
  is AES-GCM chunks) under a random data key and a made-up key id: a forger's
  tool, like ``tests/e2e/run_helpers.write_package``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from strongroom.image.eif import Arch, Section, SectionType, write_eif


def tiny_image(path: Path, kernel: bytes = b"kernel") -> Path:
    write_eif(
        path,
        [
            Section(SectionType.KERNEL, kernel),
            Section(SectionType.CMDLINE, b"console=ttyS0"),
            Section(SectionType.METADATA, b'{"ImageName": "tiny", "ImageVersion": "0"}'),
            Section(SectionType.RAMDISK, b"070701" + bytes(64)),
        ],
        default_mem_mib=512,
        default_cpus=2,
        arch=Arch.X86_64,
    )
    return path


def tiny_sealed(path: Path, payload: bytes = b"not a tar, but sealed all the same") -> Path:
    from strongroom.sealing import DEFAULT_CHUNK_SIZE
    from strongroom.sealing.format import NONCE_PREFIX_SIZE, SALT_SIZE, build_header
    from strongroom.sealing.stream import ChunkWriter, derive_payload_key

    header = build_header(
        key_id="arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000",
        encrypted_data_key=os.urandom(64),
        encryption_context={},
        chunk_size=DEFAULT_CHUNK_SIZE,
        salt=os.urandom(SALT_SIZE),
        nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
        created=int(time.time()),
    )
    with path.open("wb") as sink:
        sink.write(header.raw)
        key = derive_payload_key(os.urandom(32), header.salt)
        writer = ChunkWriter(sink, key, header.nonce_prefix, header.aad, DEFAULT_CHUNK_SIZE)
        writer.write(payload)
        writer.finish()
    return path
