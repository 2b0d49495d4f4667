"""infra/share-bucket.yaml: lint-clean, and the same share as `share create` makes on S3.

The template is resolved here for sample parameters, account and region (a
small resolver for the intrinsic functions it uses: Ref, Fn::GetAtt, Fn::Sub)
and compared with :mod:`strongroom.storage.policies`, the one place the
policies are written, and with the bucket settings the issue lists.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint import api as cfnlint_api
from cfnlint.decode import decode_str

from strongroom.errors import UsageError
from strongroom.storage import policies, template
from strongroom.storage.base import ACCOUNT_PATTERN, VENDOR_PATTERN, ShareNames

ROOT = Path(__file__).resolve().parents[3]
INFRA_TEMPLATE = ROOT / "infra" / "share-bucket.yaml"
PACKAGED_TEMPLATE = ROOT / "src" / "strongroom" / "storage" / "share-bucket.yaml"
PARTITION = "aws"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"

#: (vendor, vendor account, host account, region): one ordinary, one at the limits.
SAMPLES = [
    ("acme", "111122223333", "444455556666", "eu-west-1"),
    ("a1234567890123456-9z", "000000000001", "999999999999", "ap-southeast-4"),
]


#: A resolved template (its Resources and Outputs), the share's names, the vendor's account.
Stack = tuple[dict[str, Any], ShareNames, str]


class Resolver:
    """Evaluates the template's intrinsic functions for one stack, as CloudFormation would."""

    def __init__(
        self, document: dict[str, Any], parameters: dict[str, str], *, account: str, region: str
    ) -> None:
        self.resources: dict[str, Any] = document["Resources"]
        self.values = {
            **parameters,
            "AWS::AccountId": account,
            "AWS::Region": region,
            "AWS::Partition": PARTITION,
        }
        self.account, self.region = account, region

    def __call__(self, node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                ((name, argument),) = node.items()
                if name == "Ref":
                    return self.ref(argument)
                if name == "Fn::GetAtt":
                    if isinstance(argument, str):
                        argument = argument.split(".", 1)
                    resource, attribute = argument
                    return self.get_att(resource, attribute)
                if name == "Fn::Sub":
                    assert isinstance(argument, str), "only the one-argument Fn::Sub is used"
                    return re.sub(r"\$\{([^}]+)\}", lambda m: self.variable(m.group(1)), argument)
                assert not name.startswith("Fn::"), f"{name} is not resolved by this test"
            return {str(k): self(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self(item) for item in node]
        return str(node) if isinstance(node, str) else node

    def variable(self, name: str) -> str:
        assert not name.startswith("!"), "no literal ${!...} is used"
        if "." in name:
            resource, attribute = name.split(".", 1)
            return str(self.get_att(resource, attribute))
        return str(self.ref(name))

    def ref(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        resource = self.resources[name]
        kind, properties = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::S3::Bucket":
            return str(self(properties["BucketName"]))
        if kind == "AWS::KMS::Key":
            return KEY_ID
        if kind == "AWS::KMS::Alias":
            return str(self(properties["AliasName"]))
        raise AssertionError(f"Ref to a {kind} is not resolved by this test")

    def get_att(self, name: str, attribute: str) -> str:
        kind = self.resources[name]["Type"]
        assert attribute == "Arn", f"{name}.{attribute} is not resolved by this test"
        if kind == "AWS::S3::Bucket":
            return f"arn:{PARTITION}:s3:::{self.ref(name)}"
        if kind == "AWS::KMS::Key":
            return f"arn:{PARTITION}:kms:{self.region}:{self.account}:key/{KEY_ID}"
        raise AssertionError(f"{kind}.Arn is not resolved by this test")


def decode(text: str) -> dict[str, Any]:
    document, errors = decode_str(text)
    assert not errors, errors
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return decode(template.text())


@pytest.fixture(scope="module", params=SAMPLES, ids=[s[0] for s in SAMPLES])
def stack(request: pytest.FixtureRequest, raw: dict[str, Any]) -> Stack:
    """The template resolved for one sample."""
    vendor, vendor_account, host_account, region = request.param
    resolve = Resolver(
        raw,
        {"ThirdPartyIdentifier": vendor, "ThirdPartyAWSAccountNumber": vendor_account},
        account=host_account,
        region=region,
    )
    resolved = {"Resources": resolve(raw["Resources"]), "Outputs": resolve(raw["Outputs"])}
    return resolved, ShareNames(vendor, host_account, region), vendor_account


def properties(stack: Stack, name: str) -> dict[str, Any]:
    result: dict[str, Any] = stack[0]["Resources"][name]["Properties"]
    return result


# --- the file: where it lives, and cfn-lint --------------------------------


def test_infra_template_is_the_packaged_one() -> None:
    assert INFRA_TEMPLATE.is_symlink()
    assert INFRA_TEMPLATE.resolve() == PACKAGED_TEMPLATE.resolve()
    assert INFRA_TEMPLATE.read_text(encoding="utf-8") == template.text()


def _lint_findings(matches: list[Any]) -> list[str]:
    return [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches]


def test_cfn_lint_passes_on_the_infra_template() -> None:
    """The command a user runs, on the path the issue names (cfn-lint follows the link)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--", str(INFRA_TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_cfn_lint_passes_on_a_filled_in_template() -> None:
    vendor, vendor_account, _, _ = SAMPLES[1]
    assert _lint_findings(cfnlint_api.lint(template.filled_in(vendor, vendor_account))) == []


def test_cfn_lint_reports_a_default_the_pattern_refuses() -> None:
    """The lint test can fail: a Default outside AllowedPattern is an error (E2015)."""
    bad = template.filled_in("acme", "111122223333").replace("'acme'", "'Acme_'")
    assert "E2015" in {m.rule.id for m in cfnlint_api.lint(bad)}


# --- parameters and filled_in ----------------------------------------------


def test_parameters_allow_what_strongroom_allows(raw: dict[str, Any]) -> None:
    vendor = raw["Parameters"]["ThirdPartyIdentifier"]
    account = raw["Parameters"]["ThirdPartyAWSAccountNumber"]
    assert (vendor["AllowedPattern"], vendor["MinLength"], vendor["MaxLength"]) == (
        VENDOR_PATTERN.pattern,
        1,
        20,
    )
    assert account["AllowedPattern"] == ACCOUNT_PATTERN.pattern
    assert "Default" not in vendor and "Default" not in account


def test_filled_in_sets_the_defaults_and_adds_nothing_else() -> None:
    filled = template.filled_in("acme", "111122223333")
    parameters = decode(filled)["Parameters"]
    assert parameters["ThirdPartyIdentifier"]["Default"] == "acme"
    # Quoted: an account id is a string, not the number 111122223333.
    assert parameters["ThirdPartyAWSAccountNumber"]["Default"] == "111122223333"
    added = ["    Default: 'acme'\n", "    Default: '111122223333'\n"]
    lines = filled.splitlines(keepends=True)
    assert [line for line in lines if line.startswith("    Default:")] == added
    assert [line for line in lines if line not in added] == template.text().splitlines(True)


def test_filled_in_keeps_the_short_form_tags_and_comments() -> None:
    filled = template.filled_in("acme", "111122223333")
    assert "!Sub ${ShareBucket.Arn}/*" in filled and "!GetAtt BucketKey.Arn" in filled
    assert "# `strongroom share revoke` removes EnableThirdPartyAccess" in filled


@pytest.mark.parametrize(
    ("vendor", "account"),
    [
        ("Acme", "111122223333"),
        ("acme'\n    Type: Number", "111122223333"),
        ("-acme", "111122223333"),
        ("a" * 21, "111122223333"),
        ("acme", "11112222333"),
        ("acme", "1111222233334"),
        ("acme", "11112222333x"),
    ],
)
def test_filled_in_refuses_values_the_template_would_refuse(vendor: str, account: str) -> None:
    with pytest.raises(UsageError):
        template.filled_in(vendor, account)


# --- the share it makes equals policies.py and the settings ---------


def test_resources_are_the_share(stack: Stack) -> None:
    types = {name: r["Type"] for name, r in stack[0]["Resources"].items()}
    assert types == {
        "BucketKey": "AWS::KMS::Key",
        "BucketKeyAlias": "AWS::KMS::Alias",
        "AccessLogBucket": "AWS::S3::Bucket",
        "AccessLogBucketPolicy": "AWS::S3::BucketPolicy",
        "ShareBucket": "AWS::S3::Bucket",
        "ShareBucketPolicy": "AWS::S3::BucketPolicy",
    }


def test_bucket_policy_is_policies_py(stack: Stack) -> None:
    _, names, vendor_account = stack
    policy = properties(stack, "ShareBucketPolicy")
    assert policy["Bucket"] == names.bucket
    assert policy["PolicyDocument"] == policies.bucket_policy(names, vendor_account)
    assert [s["Sid"] for s in policy["PolicyDocument"]["Statement"]] == [
        policies.DENY_INCORRECT_ENCRYPTION_SID,
        policies.DENY_UNENCRYPTED_SID,
        policies.DENY_PLAIN_HTTP_SID,
        policies.VENDOR_ACCESS_SID,
    ]


def test_key_policy_is_policies_py(stack: Stack) -> None:
    _, names, vendor_account = stack
    key = properties(stack, "BucketKey")
    assert key["KeyPolicy"] == policies.key_policy(names, vendor_account)
    assert key["EnableKeyRotation"] is True


def test_log_bucket_policy_is_policies_py(stack: Stack) -> None:
    _, names, _ = stack
    policy = properties(stack, "AccessLogBucketPolicy")
    assert policy["Bucket"] == names.log_bucket
    assert policy["PolicyDocument"] == policies.log_bucket_policy(names)


def test_key_alias(stack: Stack) -> None:
    assert properties(stack, "BucketKeyAlias") == {
        "AliasName": stack[1].key_alias,
        "TargetKeyId": KEY_ID,
    }


BLOCK_ALL_PUBLIC = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def test_share_bucket_settings(stack: Stack) -> None:
    resolved, names, vendor_account = stack
    key_arn = f"arn:aws:kms:{names.region}:{names.host_account}:key/{KEY_ID}"
    assert properties(stack, "ShareBucket") == {
        "BucketName": names.bucket,
        "LoggingConfiguration": {
            "DestinationBucketName": names.log_bucket,
            "LogFilePrefix": names.log_prefix,
        },
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {
                    "ServerSideEncryptionByDefault": {
                        "SSEAlgorithm": policies.SSE_ALGORITHM,
                        "KMSMasterKeyID": key_arn,
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
        "PublicAccessBlockConfiguration": BLOCK_ALL_PUBLIC,
        "VersioningConfiguration": {"Status": "Enabled"},
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        "LifecycleConfiguration": {
            "Rules": [
                {
                    "Id": "AbortIncompleteMultipartUploads",
                    "Status": "Enabled",
                    "AbortIncompleteMultipartUpload": {
                        "DaysAfterInitiation": policies.ABORT_INCOMPLETE_UPLOAD_DAYS
                    },
                }
            ]
        },
        "Tags": [
            {"Key": "strongroom:vendor", "Value": names.vendor},
            {"Key": "strongroom:vendor-account", "Value": vendor_account},
        ],
    }
    # Logging starts only once the log bucket lets S3 deliver the logs.
    assert resolved["Resources"]["ShareBucket"]["DependsOn"] == "AccessLogBucketPolicy"


def test_log_bucket_settings(stack: Stack) -> None:
    assert properties(stack, "AccessLogBucket") == {
        "BucketName": stack[1].log_bucket,
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {
                    "ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                    "BucketKeyEnabled": True,
                }
            ]
        },
        "PublicAccessBlockConfiguration": BLOCK_ALL_PUBLIC,
    }


def test_kept_when_the_stack_is_deleted(stack: Stack) -> None:
    """The key, the share and its logs outlive the stack (objects would be unreadable without
    the key); deleting them is `share delete`'s decision, not a stack update's."""
    resources = stack[0]["Resources"]
    for name in ("BucketKey", "AccessLogBucket", "ShareBucket"):
        assert (resources[name]["DeletionPolicy"], resources[name]["UpdateReplacePolicy"]) == (
            "Retain",
            "Retain",
        )


def test_outputs(stack: Stack) -> None:
    resolved, names, _ = stack
    outputs = {name: output["Value"] for name, output in resolved["Outputs"].items()}
    assert outputs == {
        "BucketArn": names.bucket_arn,
        "BucketName": names.bucket,
        "KeyArn": f"arn:aws:kms:{names.region}:{names.host_account}:key/{KEY_ID}",
        "KeyAlias": names.key_alias,
    }
