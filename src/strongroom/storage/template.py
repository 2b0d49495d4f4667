"""The CloudFormation template of a share (``infra/share-bucket.yaml``), shipped as package data.

The template makes on S3 what ``strongroom share create`` makes: the same
bucket, key and log bucket, and the policies of :mod:`.policies` (a test
resolves the template and compares them statement by statement).
``share create VENDOR --vendor-account ID --print-template`` prints it
*filled in*: the two parameters get the vendor's values as their ``Default``,
so ``aws cloudformation deploy`` needs no ``--parameter-overrides``.

Filling in edits the text: a YAML round trip would drop the comments and turn
``!Sub`` short forms into long ones, and the printed template should be the
reviewed file plus two lines, nothing else.
"""

from __future__ import annotations

import re
from importlib import resources

from strongroom.errors import StrongroomError
from strongroom.storage.base import check_account, check_vendor

#: The template's file name in this package (``infra/share-bucket.yaml`` links to it).
TEMPLATE_RESOURCE = "share-bucket.yaml"
VENDOR_PARAMETER = "ThirdPartyIdentifier"
ACCOUNT_PARAMETER = "ThirdPartyAWSAccountNumber"


def text() -> str:
    """The template as shipped, parameters without defaults."""
    return resources.files(__package__).joinpath(TEMPLATE_RESOURCE).read_text(encoding="utf-8")


def filled_in(vendor: str, vendor_account: str) -> str:
    """The template with ``vendor`` and ``vendor_account`` as its parameters' defaults.

    The values are checked first (they must satisfy the template's own
    ``AllowedPattern``s) and are written single-quoted, so the account id stays
    a string and nothing in them can be read as YAML syntax.
    """
    values = {
        VENDOR_PARAMETER: check_vendor(vendor),
        ACCOUNT_PARAMETER: check_account(vendor_account, what="vendor account"),
    }
    result = text()
    for parameter, value in values.items():
        result = _with_default(result, parameter, value)
    return result


def _with_default(template: str, parameter: str, value: str) -> str:
    # The parameter's first two lines, as the template writes them: the Default
    # goes right after its Type, at the same indentation.
    head = re.compile(rf"^(  {parameter}:\n    Type: String\n)", re.MULTILINE)
    if len(head.findall(template)) != 1:
        raise StrongroomError(
            f"the shipped share template has no parameter {parameter!r} to fill in",
            hint="the Strongroom installation was modified; reinstall it",
        )
    return head.sub(lambda match: f"{match.group(1)}    Default: '{value}'\n", template)
