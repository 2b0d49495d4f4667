"""Parsing, validation and serialisation of key-policy documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from strongroom.errors import InvalidInputError
from strongroom.policy import MAX_BUCKET_POLICY_BYTES, MAX_POLICY_BYTES, PolicyDocument, PolicyError

HOST = "arn:aws:iam::111122223333:role/strongroom-host"


def statement(**elements: Any) -> dict[str, Any]:
    base = {"Effect": "Allow", "Principal": {"AWS": HOST}, "Action": "kms:Decrypt", "Resource": "*"}
    return {k: v for k, v in (base | elements).items() if v is not None}


def text_of(*statements: dict[str, Any], version: str = "2012-10-17") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)})


ERROR_CASES: list[tuple[str, str, str]] = [
    ("not-json", "{not json", "key policy is not valid JSON"),
    ("not-an-object", "[]", "key policy must be a JSON object"),
    (
        "unknown-top-level",
        '{"Statement": [], "Statment": []}',
        "key policy has an unknown element 'Statment'",
    ),
    ("no-statement", '{"Version": "2012-10-17"}', "key policy has no Statement"),
    (
        "bad-version",
        '{"Version": "2020-01-01", "Statement": []}',
        "Version '2020-01-01' is not supported",
    ),
    (
        "version-not-string",
        '{"Version": 2012, "Statement": []}',
        "key policy Version must be a string",
    ),
    ("duplicate-key", '{"Statement": [], "Statement": []}', "repeats the element 'Statement'"),
    ("statement-not-object", '{"Statement": ["x"]}', "Statement[0] must be a JSON object"),
    (
        "unknown-statement-element",
        text_of(statement(Actions="kms:*")),
        "Statement[0] has an unknown element 'Actions'",
    ),
    (
        "effect-case",
        text_of(statement(Effect="allow")),
        "Statement[0] Effect must be 'Allow' or 'Deny'",
    ),
    ("sid-not-string", text_of(statement(Sid=5)), "Statement[0] Sid must be a string"),
    (
        "no-principal",
        text_of(statement(Principal=None)),
        "exactly one of Principal and NotPrincipal",
    ),
    (
        "both-actions",
        text_of(statement(NotAction="kms:Encrypt")),
        "exactly one of Action and NotAction",
    ),
    ("no-resource", text_of(statement(Resource=None)), "exactly one of Resource and NotResource"),
    (
        "principal-string",
        text_of(statement(Principal="someone")),
        'Principal must be "*" or an object',
    ),
    ("principal-empty", text_of(statement(Principal={})), 'Principal must be "*" or an object'),
    (
        "principal-type",
        text_of(statement(Principal={"Federated": "x"})),
        "Principal has an unknown element 'Federated'",
    ),
    (
        "principal-aws-empty",
        text_of(statement(Principal={"AWS": []})),
        "Principal.AWS must be a non-empty string",
    ),
    (
        "principal-aws-bad",
        text_of(statement(Principal={"AWS": "bob"})),
        "Principal.AWS 'bob' is not an account",
    ),
    (
        "principal-aws-short-account",
        text_of(statement(Principal={"AWS": "12345"})),
        "is not an account",
    ),
    (
        "not-principal-bad",
        text_of(statement(Principal=None, NotPrincipal={"AWS": "x"})),
        "NotPrincipal.AWS 'x'",
    ),
    ("action-number", text_of(statement(Action=5)), "Action must be a non-empty string"),
    ("action-empty-list", text_of(statement(Action=[])), "Action must be a non-empty string"),
    (
        "action-no-service",
        text_of(statement(Action="Decrypt")),
        "Action 'Decrypt' is not SERVICE:ACTION",
    ),
    (
        "resource-not-arn",
        text_of(statement(Resource="key/1")),
        "Resource 'key/1' is neither * nor an ARN",
    ),
    (
        "resource-variable",
        text_of(statement(Resource="arn:aws:kms:*:${aws:PrincipalAccount}:key/*")),
        "policy variable",
    ),
    (
        "condition-not-object",
        text_of(statement(Condition=["x"])),
        "Condition must be an object of operators",
    ),
    (
        "condition-operator-not-object",
        text_of(statement(Condition={"StringEquals": "x"})),
        "Condition 'StringEquals' must be a non-empty object",
    ),
    (
        "unknown-operator",
        text_of(statement(Condition={"StringEqualz": {"k:a": "x"}})),
        "unknown condition operator 'StringEqualz'",
    ),
    (
        "unsupported-operator",
        text_of(statement(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})),
        "unknown condition operator 'IpAddress'",
    ),
    (
        "unknown-set-operator",
        text_of(statement(Condition={"ForSomeValues:StringEquals": {"k:a": "x"}})),
        "unknown condition operator",
    ),
    (
        "null-if-exists",
        text_of(statement(Condition={"NullIfExists": {"k:a": "true"}})),
        "NullIfExists is not an operator",
    ),
    (
        "condition-key-prefix",
        text_of(statement(Condition={"StringEquals": {"app": "x"}})),
        "a condition key has a service prefix",
    ),
    (
        "condition-value-object",
        text_of(statement(Condition={"StringEquals": {"k:a": {"x": 1}}})),
        "values must be strings, not dict",
    ),
    (
        "condition-value-null",
        text_of(statement(Condition={"StringEquals": {"k:a": None}})),
        "values must be strings, not NoneType",
    ),
    (
        "condition-no-values",
        text_of(statement(Condition={"StringEquals": {"k:a": []}})),
        "Condition 'StringEquals' 'k:a' has no values",
    ),
    (
        "condition-variable",
        text_of(statement(Condition={"StringEquals": {"k:a": "${aws:username}"}})),
        "policy variable",
    ),
    (
        "bool-value",
        text_of(statement(Condition={"Bool": {"aws:SecureTransport": "yes"}})),
        "'yes' is not a boolean",
    ),
    (
        "null-value",
        text_of(statement(Condition={"Null": {"k:a": "maybe"}})),
        "'maybe' is not a boolean",
    ),
    (
        "date-value",
        text_of(statement(Condition={"DateLessThan": {"aws:CurrentTime": "tomorrow"}})),
        "'tomorrow' is not a date",
    ),
    (
        "number-value",
        text_of(statement(Condition={"NumericLessThan": {"k:n": "ten"}})),
        "'ten' is not a number",
    ),
    (
        "newline-in-key",
        text_of(statement(Condition={"StringEquals": {"k:\nx": 1}, "Bool": {"k:\ny": "no"}})),
        "'k:\\ny': 'no' is not a boolean",
    ),
    ("huge-integer", '{"Statement": [' + "1" * 5000 + "]}", "key policy is not valid JSON"),
    ("nesting", '{"Statement": ' + "[" * 15000 + "]" * 15000 + "}", "key policy is not valid JSON"),
    ("oversized", text_of(statement(Sid="x" * MAX_POLICY_BYTES)), "more than KMS's limit of 32768"),
]


@pytest.mark.parametrize(
    ("text", "message"), [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES]
)
def test_parse_error(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        PolicyDocument.parse(text)
    error = raised.value
    assert message in error.message
    assert "\n" not in error.message
    assert error.hint
    assert isinstance(error, InvalidInputError)
    assert error.exit_code == 3


def test_second_statement_is_named_by_index() -> None:
    with pytest.raises(PolicyError, match=r"Statement\[1\] Effect"):
        PolicyDocument.parse(text_of(statement(), statement(Effect="Maybe")))


def test_policy_of_exactly_the_size_limit_is_accepted() -> None:
    text = text_of(statement())
    PolicyDocument.parse(text + " " * (MAX_POLICY_BYTES - len(text)))


def test_size_limit_counts_utf8_bytes() -> None:
    text = json.dumps(
        {"Statement": [statement(Sid="é" * (MAX_POLICY_BYTES // 2))]}, ensure_ascii=False
    )
    assert len(text) < MAX_POLICY_BYTES
    with pytest.raises(PolicyError, match="more than KMS's limit"):
        PolicyDocument.parse(text)


ACCEPTED = [
    pytest.param('{"Statement": []}', id="empty-statements-no-version"),
    pytest.param(
        json.dumps({"Version": "2008-10-17", "Id": "p", "Statement": statement()}),
        id="lone-statement",
    ),
    pytest.param(text_of(statement(Principal="*", Action="*")), id="wildcards"),
    pytest.param(
        text_of(statement(Principal={"Service": "ec2.amazonaws.com"})), id="service-principal"
    ),
    pytest.param(
        text_of(
            statement(
                Principal={
                    "AWS": [
                        "111122223333",
                        "arn:aws:iam::111122223333:root",
                        "arn:aws:iam::111122223333:user/ops/alice",
                        "arn:aws:iam::111122223333:role/enclaves/host",
                        "arn:aws:sts::111122223333:assumed-role/host/i-0abc",
                        "arn:aws-cn:iam::111122223333:root",
                    ]
                }
            )
        ),
        id="aws-principal-forms",
    ),
    pytest.param(
        text_of(statement(Condition={"Bool": {"aws:SecureTransport": True}})),
        id="json-boolean-value",
    ),
    pytest.param(
        text_of(statement(Condition={"NumericLessThan": {"k:n": 10}})), id="json-number-value"
    ),
    pytest.param(text_of(statement(Condition={})), id="empty-condition"),
    pytest.param(
        text_of(statement(Condition={"StringEquals": {"k:a": "${literal}"}}), version="2008-10-17"),
        id="no-variables-in-2008",
    ),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_parse_accepts(text: str) -> None:
    PolicyDocument.parse(text)


def test_parsed_document_shape() -> None:
    document = PolicyDocument.parse(
        text_of(
            statement(
                Sid="Gate",
                Effect="Deny",
                Principal=None,
                NotPrincipal={"AWS": [HOST, "111122223333"]},
                Action=None,
                NotAction=["kms:Encrypt", "kms:Describe*"],
                Condition={
                    "StringEquals": {"k:a": ["x", "y"]},
                    "Bool": {"aws:SecureTransport": False},
                },
            )
        )
    )
    (gate,) = document.statements
    assert document.version == "2012-10-17"
    assert (gate.sid, gate.effect, gate.not_principal, gate.not_action) == (
        "Gate",
        "Deny",
        True,
        True,
    )
    assert gate.principals.aws == (HOST, "111122223333")
    assert gate.actions == ("kms:Encrypt", "kms:Describe*")
    assert [(c.operator, c.key, c.values) for c in gate.conditions] == [
        ("StringEquals", "k:a", ("x", "y")),
        ("Bool", "aws:SecureTransport", ("false",)),
    ]


def test_to_dict_is_canonical_and_to_json_round_trips() -> None:
    text = json.dumps(
        {
            "Statement": {
                "Resource": ["*"],
                "Action": "kms:Decrypt",
                "Condition": {"Bool": {"aws:SecureTransport": True}},
                "Principal": "*",
                "Effect": "Allow",
                "Sid": "S",
            },
            "Id": "key-policy",
            "Version": "2012-10-17",
        }
    )
    document = PolicyDocument.parse(text)
    assert document.to_dict() == {
        "Version": "2012-10-17",
        "Id": "key-policy",
        "Statement": [
            {
                "Sid": "S",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"Bool": {"aws:SecureTransport": "true"}},
            }
        ],
    }
    again = PolicyDocument.parse(document.to_json())
    assert again == document
    assert again.to_json() == document.to_json()
    assert list(json.loads(document.to_json())) == ["Version", "Id", "Statement"]


@pytest.mark.parametrize(
    "value",
    ["*", "arn:aws:s3::bucket", "", "arn:aws:s3"],
)
def test_arn_operator_refuses_a_value_that_is_not_six_components(value: str) -> None:
    with pytest.raises(PolicyError, match="is not an ARN pattern") as raised:
        PolicyDocument.parse(text_of(statement(Condition={"ArnLike": {"aws:SourceArn": value}})))
    assert "six" in raised.value.hint


@pytest.mark.parametrize(
    "operator",
    ["ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLikeIfExists", "ForAnyValue:ArnLike"],
)
def test_arn_operators_are_known(operator: str) -> None:
    (parsed,) = PolicyDocument.parse(
        text_of(statement(Condition={operator: {"aws:SourceArn": "arn:*:s3:::b/*"}}))
    ).statements
    assert [(c.operator, c.values) for c in parsed.conditions] == [(operator, ("arn:*:s3:::b/*",))]


# --- kinds: messages, limits and resources of session and bucket policies -----


def bucket_statement(**elements: Any) -> dict[str, Any]:
    return statement(**({"Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/*"} | elements))


@pytest.mark.parametrize(
    ("kind", "noun"),
    [("key", "key policy"), ("session", "session policy"), ("bucket", "bucket policy")],
)
def test_messages_name_the_kind(kind: Any, noun: str) -> None:
    for text in (
        "{not json",
        "[]",
        '{"Version": "2012-10-17"}',
        '{"Statement": [], "Statement": []}',
    ):
        with pytest.raises(PolicyError) as raised:
            PolicyDocument.parse(text, kind=kind)
        assert raised.value.message.startswith(f"{noun} "), raised.value.message
    with pytest.raises(PolicyError, match=rf"^{noun} Statement\[0\] Effect"):
        PolicyDocument.parse(text_of({"Effect": "Maybe"}), kind=kind)


def test_bucket_policy_size_limit_is_s3s() -> None:
    text = text_of(bucket_statement())
    at_limit = text + " " * (MAX_BUCKET_POLICY_BYTES - len(text))
    PolicyDocument.parse(at_limit, kind="bucket")
    with pytest.raises(PolicyError, match="bucket policy is 20481 bytes, more than S3's limit"):
        PolicyDocument.parse(at_limit + " ", kind="bucket")
    PolicyDocument.parse(at_limit + " ", kind="key")  # KMS allows more


@pytest.mark.parametrize(
    "resource",
    [
        "*",
        "arn:aws:kms:eu-west-1:111122223333:key/k",
        "arn:aws:s3:::",
        "s3://b/key",
        "arn:aws:s3::b",
    ],
)
def test_bucket_policy_resources_are_s3_arns(resource: str) -> None:
    with pytest.raises(PolicyError, match="is not an S3 ARN") as raised:
        PolicyDocument.parse(text_of(bucket_statement(Resource=resource)), kind="bucket")
    assert "arn:aws:s3:::BUCKET" in raised.value.hint


def test_bucket_policy_accepts_s3_arns_and_needs_principals() -> None:
    resources = ["arn:aws:s3:::b", "arn:aws:s3:::b/*", "arn:aws-cn:s3:::b/k?y", "arn:aws:s3:::*"]
    document = PolicyDocument.parse(
        text_of(
            bucket_statement(Resource=resources, Principal={"Service": "logging.s3.amazonaws.com"})
        ),
        kind="bucket",
    )
    (parsed,) = document.statements
    assert parsed.resources == tuple(resources)
    assert document.to_dict()["Statement"][0]["Principal"] == {
        "Service": "logging.s3.amazonaws.com"
    }
    with pytest.raises(PolicyError, match="exactly one of Principal and NotPrincipal"):
        PolicyDocument.parse(text_of(bucket_statement(Principal=None)), kind="bucket")
