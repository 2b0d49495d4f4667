"""The session's built images, shared by the image tests.

Building a real image copies the runtime out of this environment (~1 s) and
runs pip against a local wheel (no network), so those builds are made once.
"""

from __future__ import annotations

import pytest

from strongroom.image import build_image
from strongroom.image.build import BuildResult
from strongroom.image.pins import VendorPins

from .samples import Builds, make_wheel

#: The vendor pins of the "app" builds (a key ARN and a signer, as `image build` records them).
PINS = VendorPins(("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",),
                  (bytes(range(32)),))  # fmt: skip


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    root = tmp_path_factory.mktemp("builds")
    requirements = root / "requirements.txt"
    requirements.write_text("tinyapp==1.0\n")

    def build(out: str, module_source: bytes | None) -> BuildResult:
        if module_source is None:
            return build_image(root / out)
        wheels = root / f"wheels-{out}"
        make_wheel(wheels, module_source)
        return build_image(
            root / out,
            pins=PINS,
            requirements=requirements,
            pip_args=["--no-index", "--find-links", str(wheels)],
        )

    # The two byte-for-byte comparisons are built back to back, so that another
    # change to the source tree cannot slip between them.
    app = build("app.eif", b"VALUE = 1\n")
    app_again = build("app-again.eif", b"VALUE = 1\n")
    app_changed = build("app-changed.eif", b"VALUE = 2\n")
    plain = build("plain.eif", None)
    return Builds(plain, app, app_again, app_changed, requirements)
