"""Shared storage between a host and one vendor (runbook steps 1.1, 2.3.x, 4.1, 6.1).

The host admin creates a *share* for a vendor: a storage area the host owns
and the vendor may only write to. The vendor publishes sealed apps and enclave
images into it; the host operator fetches them, checking each file against the
share's index; the host admin can revoke the vendor's access and keep the files.

Two backends, one interface (:class:`~strongroom.storage.base.Storage`):

- ``local`` (:mod:`.local`): a directory per share under the workspace's
  ``storage/``; the share's bucket policy is stored with it and every request is
  decided by it (:mod:`.access`), so ``revoke`` refuses the vendor here too.
- ``s3`` (:mod:`.s3`): a bucket as the runbook's CloudFormation template makes
  it (versioning, public access blocked, ``BucketOwnerEnforced``, SSE-KMS with
  a host key the vendor may use, an access-log bucket, the bucket policy of
  :mod:`.policies`), through boto3 and the standard credential chain.

Invariants:

- The policies Strongroom writes come from :mod:`.policies` only: ``share
  create`` on either backend and ``infra/share-bucket.yaml`` hold the same
  statements, and tests check them with Strongroom's own evaluator.
- ``revoke`` removes exactly the ``EnableThirdPartyAccess`` statement and
  nothing else; ``restore`` puts it back; no object is touched by either.
- The vendor cannot read or list the share, so it cannot read an index either:
  each ``publish`` writes its own index document (:mod:`.index`) and the host
  reads them all.
- A fetched file reaches its destination only after its size, SHA-256 and (for
  an image) its measurements matched the index; otherwise nothing is left.
- No boto3 or OS exception leaves a backend: each is translated at the edge.

Commands open their backend with :func:`open_storage` (:mod:`.backends`: which
backend, and who the caller is); :mod:`.transfer` publishes and fetches.
"""

from typing import TYPE_CHECKING

from strongroom._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from strongroom.storage.backends import choose_backend, open_storage, resolve_share

__getattr__ = lazy_attributes(
    __name__, dict.fromkeys(("choose_backend", "open_storage", "resolve_share"), "backends")
)

__all__ = ["choose_backend", "open_storage", "resolve_share"]
