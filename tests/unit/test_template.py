"""template.yaml: the hardening the deployment relies on (least privilege, TLS only, versions, connections, KMS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
TEMPLATE = ROOT / "template.yaml"


class _CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that reads the short forms (!Ref, !Sub, !GetAtt, ...) as their long JSON forms."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def _template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CloudFormationLoader)


def _resources() -> dict[str, Any]:
    return _template()["Resources"]


def _unwrapped(entry: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(condition name or None, item) of a list entry, plain or wrapped in !If [condition, item, NoValue]."""
    if "Fn::If" not in entry:
        return None, entry
    condition, item, otherwise = entry["Fn::If"]
    assert otherwise == {"Ref": "AWS::NoValue"}
    return condition, item


def _role_statements(role: str = "PromoteCheckpointsRole") -> list[dict[str, Any]]:
    """The statements of ``role``'s inline policy, as the template writes them (some wrapped in !If)."""
    [policy] = _resources()[role]["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def _statement(sid: str, role: str = "PromoteCheckpointsRole") -> tuple[str | None, dict[str, Any]]:
    """(condition name or None, statement) of ``role``'s statement ``sid``."""
    for entry in _role_statements(role):
        condition, statement = _unwrapped(entry)
        if statement.get("Sid") == sid:
            return condition, statement
    raise AssertionError(f"no statement {sid} in {role}")


def _conditional_statement(sid: str) -> tuple[str, dict[str, Any]]:
    """(condition name, statement) of a promotion role statement wrapped in !If [condition, statement, NoValue]."""
    condition, statement = _statement(sid)
    assert condition is not None, f"{sid} is not conditional"
    return condition, statement


def _lifecycle_rules() -> list[Any]:
    return _resources()["CheckpointBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]


def _rule(rule_id: str) -> tuple[str | None, dict[str, Any]]:
    """(condition name or None, rule) of a lifecycle rule, plain or wrapped in !If."""
    for entry in _lifecycle_rules():
        condition, rule = _unwrapped(entry)
        if rule["Id"] == rule_id:
            return condition, rule
    raise AssertionError(f"no lifecycle rule {rule_id}")


def test_the_loader_reads_short_form_intrinsics_as_long_forms():
    loaded = yaml.load(
        "a: !Ref X\nb: !GetAtt Res.Arn\nc: !Sub '${X}/*'\n"
        "d: !If [C, 1, !Ref AWS::NoValue]\ne: !Not [!Equals [!Ref X, '']]",
        Loader=_CloudFormationLoader,
    )
    assert loaded == {
        "a": {"Ref": "X"},
        "b": {"Fn::GetAtt": ["Res", "Arn"]},
        "c": {"Fn::Sub": "${X}/*"},
        "d": {"Fn::If": ["C", 1, {"Ref": "AWS::NoValue"}]},
        "e": {"Fn::Not": [{"Fn::Equals": [{"Ref": "X"}, ""]}]},
    }


def test_no_permission_for_get_object_attributes_which_the_code_never_calls():
    assert "getobjectattributes" not in json.dumps(_template()).lower()
    read_staging = next(s for s in _role_statements() if s.get("Sid") == "ReadStaging")
    assert read_staging["Action"] == "s3:GetObject"
    sources = [*ROOT.glob("functions/**/*.py"), *ROOT.glob("layers/ckpt/ckpt/**/*.py")]
    assert sources
    assert not [p for p in sources if "get_object_attributes" in p.read_text()]


def test_the_bucket_refuses_requests_without_tls_on_itself_and_its_objects():
    policy = _resources()["CheckpointBucketPolicy"]
    assert policy["Type"] == "AWS::S3::BucketPolicy"
    assert policy["Properties"]["Bucket"] == {"Ref": "CheckpointBucket"}
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [
        {"Fn::GetAtt": ["CheckpointBucket", "Arn"]},
        {"Fn::Sub": "${CheckpointBucket.Arn}/*"},
    ]


def test_the_tls_policy_exists_only_when_the_stack_creates_the_bucket_and_outlives_it_like_the_bucket():
    resources = _resources()
    template = _template()
    policy, bucket = resources["CheckpointBucketPolicy"], resources["CheckpointBucket"]
    assert policy["Condition"] == bucket["Condition"] == "ShouldCreateBucket"
    assert template["Conditions"]["ShouldCreateBucket"] == {"Fn::Equals": [{"Ref": "CreateBucket"}, "true"]}
    assert policy["DeletionPolicy"] == bucket["DeletionPolicy"] == "Retain"


def test_bucket_versioning_follows_its_parameter_enabled_by_default():
    parameter = _template()["Parameters"]["BucketVersioning"]
    assert parameter["Default"] == "Enabled"
    assert parameter["AllowedValues"] == ["Enabled", "Suspended"]
    versioning = _resources()["CheckpointBucket"]["Properties"]["VersioningConfiguration"]
    assert versioning == {"Status": {"Ref": "BucketVersioning"}}


def test_noncurrent_checkpoint_versions_expire_after_the_parameters_days_and_current_ones_never():
    template = _template()
    parameter = template["Parameters"]["NoncurrentCheckpointDays"]
    assert parameter["Default"] == 30
    assert parameter["MinValue"] == 0
    condition, rule = _rule("expire-noncurrent-checkpoint-versions")
    assert condition == "ExpiresNoncurrentCheckpoints"
    # 0 = keep for ever: no rule at all
    assert template["Conditions"][condition] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "NoncurrentCheckpointDays"}, "0"]}]
    }
    assert rule["Prefix"] == {"Ref": "CanonicalPrefix"}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": {"Ref": "NoncurrentCheckpointDays"}}
    for entry in _lifecycle_rules():
        _, some_rule = _unwrapped(entry)
        if some_rule.get("Prefix") == {"Ref": "StagingPrefix"}:
            continue  # staging may expire (StagingExpirationDays): no row names a staged file
        # an Expiration of current versions would delete the checkpoint a row names
        assert not {"ExpirationInDays", "ExpirationDate", "Transitions"} & some_rule.keys(), some_rule["Id"]


def test_noncurrent_staging_versions_and_their_delete_markers_go_after_a_day():
    condition, rule = _rule("expire-noncurrent-staging-versions")
    assert condition is None  # also when versioning is suspended: the versions already kept must still go
    assert rule["Prefix"] == {"Ref": "StagingPrefix"}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert rule["ExpiredObjectDeleteMarker"] is True


def test_the_sqs_trigger_caps_concurrency_with_the_parameter_default_five():
    parameter = _template()["Parameters"]["MaximumConcurrency"]
    assert (parameter["Default"], parameter["MinValue"], parameter["MaxValue"]) == (5, 2, 1000)
    # at most 3 connections per instance (pool_size=1 + max_overflow=2): the default stays far below ~80
    assert parameter["Default"] * 3 <= 20
    function = _resources()["PromoteCheckpointsFunction"]["Properties"]
    event = function["Events"]["StagingManifest"]
    assert event["Type"] == "SQS"
    assert event["Properties"]["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}
    # the cap is the trigger's, not a reservation that would throttle received messages into the DLQ
    assert "ReservedConcurrentExecutions" not in function


def test_the_transformed_event_source_mapping_carries_the_cap(monkeypatch):
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    template = _template()
    # the transform wants uploaded artifacts; sam build/deploy put S3 URIs here
    template["Resources"]["PromoteCheckpointsFunction"]["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    template["Resources"]["R2QueuePollerFunction"]["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    template["Resources"]["CheckpointApiFunction"]["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    template["Resources"]["SweeperFunction"]["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    template["Resources"]["CkptLayer"]["Properties"]["ContentUri"] = "s3://artifacts/layer.zip"
    secret = {"DatabaseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"}
    resources = transform(template, secret, NoManagedPolicies())["Resources"]
    [mapping] = [r for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert mapping["Properties"]["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}


def test_the_concurrency_arithmetic_matches_the_engine_pool():
    engine = (ROOT / "layers/ckpt/ckpt/adapters/db/engine.py").read_text()
    assert "pool_size=1," in engine
    assert "max_overflow=2," in engine


def test_kms_keys_are_granted_only_when_named_and_exactly_those():
    template = _template()
    parameter = template["Parameters"]["KmsKeyArns"]
    assert parameter["Type"] == "CommaDelimitedList"
    assert parameter["Default"] == ""
    condition, statement = _conditional_statement("UseCustomerManagedKeys")
    assert condition == "HasKmsKeys"
    assert template["Conditions"]["HasKmsKeys"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "KmsKeyArns"}]}, ""]}]
    }
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Resource"] == {"Ref": "KmsKeyArns"}
    assert statement["Condition"] == {
        "StringEquals": {
            "kms:ViaService": [
                {"Fn::Sub": "s3.${AWS::Region}.${AWS::URLSuffix}"},
                {"Fn::Sub": "secretsmanager.${AWS::Region}.${AWS::URLSuffix}"},
            ]
        }
    }


def test_no_other_statement_grants_kms():
    unconditional = [s for s in _role_statements() if "Fn::If" not in s]
    conditional = [s["Fn::If"][1] for s in _role_statements() if "Fn::If" in s]
    kms = [s["Sid"] for s in unconditional + conditional if "kms:" in json.dumps(s["Action"])]
    assert kms == ["UseCustomerManagedKeys"]


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("", True),
        ("arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("arn:aws:kms:eu-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab", True),
        ("arn:aws:kms:eu-west-1:123456789012:alias/checkpoints", False),
        ("*", False),
    ],
)
def test_kms_key_arns_accept_key_arns_only(value, allowed):
    pattern = _template()["Parameters"]["KmsKeyArns"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is allowed


def test_sam_validate_lint_passes():
    sam = shutil.which("sam", path=str(Path(sys.executable).parent)) or shutil.which("sam")
    if sam is None:
        pytest.fail("the SAM CLI is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [sam, "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


# --- R2: the Cloudflare Queue poller ------------------------------------------------------------------------


def test_the_r2_poller_exists_only_when_a_cloudflare_queue_is_named():
    template = _template()
    assert template["Parameters"]["CloudflareQueueId"]["Default"] == ""
    assert template["Conditions"]["PollsCloudflareQueue"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "CloudflareQueueId"}, ""]}]
    }
    for name in ("R2QueuePollerFunction", "R2QueuePollerRole", "R2QueuePollerLogGroup"):
        assert template["Resources"][name]["Condition"] == "PollsCloudflareQueue", name
    assert template["Outputs"]["R2QueuePollerFunctionArn"]["Condition"] == "PollsCloudflareQueue"


def test_a_cloudflare_queue_requires_its_account_token_and_an_r2_store():
    rule = _template()["Rules"]["R2PollerNeedsItsSettings"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CloudflareQueueId"}, ""]}]}
    required = [a["Assert"]["Fn::Not"][0]["Fn::Equals"][0]["Ref"] for a in rule["Assertions"]]
    assert required == [
        "CloudflareAccountId",
        "CloudflareApiTokenSecretArn",
        "S3EndpointUrl",
        "StorageCredentialsSecretArn",
    ]


def _assert_scheduled_once(template: dict, function: dict, parameter: str, default: str, another: str) -> None:
    """One Schedule event on the ``parameter`` (``default`` by default, ``another`` schedule expression allowed,
    plain words refused), and no Lambda retries of a failed run (the next run is the retry)."""
    assert function["EventInvokeConfig"] == {"MaximumRetryAttempts": 0}
    [event] = function["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == {"Ref": parameter}
    schedule = template["Parameters"][parameter]
    assert schedule["Default"] == default
    assert re.fullmatch(schedule["AllowedPattern"], another)
    assert not re.fullmatch(schedule["AllowedPattern"], "every minute")
    assert not re.fullmatch(schedule["AllowedPattern"], "hourly")


def test_the_r2_poller_runs_the_shared_code_on_a_configurable_schedule_without_lambda_retries():
    template = _template()
    function = template["Resources"]["R2QueuePollerFunction"]["Properties"]
    promotion = template["Resources"]["PromoteCheckpointsFunction"]["Properties"]
    assert function["Handler"] == "r2_queue_poller.handler.lambda_handler"
    assert function["CodeUri"] == promotion["CodeUri"] == "functions/"
    assert function["Layers"] == promotion["Layers"] == [{"Ref": "CkptLayer"}]
    assert function["Role"] == {"Fn::GetAtt": ["R2QueuePollerRole", "Arn"]}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "R2QueuePollerLogGroup"}}
    assert function["VpcConfig"] == promotion["VpcConfig"]
    # the timeout is the Globals' FunctionTimeout, the budget the poller splits between its messages
    assert "Timeout" not in function
    assert template["Globals"]["Function"]["Timeout"] == {"Ref": "FunctionTimeout"}
    # leases make overlapping runs safe: no reservation taken from the account's pool
    assert "ReservedConcurrentExecutions" not in function
    _assert_scheduled_once(template, function, "CloudflarePollSchedule", "rate(1 minute)", "cron(0/5 * * * ? *)")


def test_the_r2_poller_is_given_its_settings_by_name_and_the_token_only_as_a_secret_arn():
    function = _resources()["R2QueuePollerFunction"]["Properties"]
    variables = function["Environment"]["Variables"]
    promotion = _resources()["PromoteCheckpointsFunction"]["Properties"]["Environment"]["Variables"]
    assert {
        name: value for name, value in promotion.items() if name != "MAX_RECEIVE_COUNT"
    }.items() <= variables.items()
    assert {name: value for name, value in variables.items() if name.startswith("CLOUDFLARE_")} == {
        "CLOUDFLARE_ACCOUNT_ID": {"Ref": "CloudflareAccountId"},
        "CLOUDFLARE_QUEUE_ID": {"Ref": "CloudflareQueueId"},
        "CLOUDFLARE_API_TOKEN_SECRET_ARN": {"Ref": "CloudflareApiTokenSecretArn"},
        "CLOUDFLARE_BATCH_SIZE": {"Ref": "CloudflareBatchSize"},
        "CLOUDFLARE_VISIBILITY_TIMEOUT_SECONDS": {"Ref": "CloudflareVisibilityTimeout"},
        "CLOUDFLARE_API_BASE_URL": "",  # empty: Cloudflare's API; declared for sam local --env-vars
    }
    settings_source = (ROOT / "layers/ckpt/ckpt/promotion/r2_polling.py").read_text()
    for name in variables:
        if name.startswith("CLOUDFLARE_"):
            assert f'"{name}"' in settings_source, f"PollerSettings does not read {name}"


@pytest.mark.parametrize(
    ("parameter", "value", "allowed"),
    [
        ("CloudflareQueueId", "", True),
        ("CloudflareQueueId", "023e105f4ecef8ad9ca31a8372d0c353", True),
        ("CloudflareQueueId", "my-queue", False),  # the id, not the name
        ("CloudflareAccountId", "3f4b7e3dcab231cbfdaa90a6a28bd548", True),
        ("CloudflareAccountId", "3F4B", False),
        ("CloudflareApiTokenSecretArn", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cf-AbCdEf", True),
        ("CloudflareApiTokenSecretArn", "cf-token", False),
    ],
)
def test_cloudflare_ids_and_the_token_secret_are_checked_at_deploy(parameter, value, allowed):
    pattern = _template()["Parameters"][parameter]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is allowed


def test_the_poller_batch_and_lease_stay_within_cloudflares_limits():
    parameters = _template()["Parameters"]
    batch, lease = parameters["CloudflareBatchSize"], parameters["CloudflareVisibilityTimeout"]
    assert (batch["Default"], batch["MinValue"], batch["MaxValue"]) == (10, 1, 100)
    assert (lease["MinValue"], lease["MaxValue"]) == (1, 12 * 60 * 60)


def test_the_poller_role_is_scoped_like_the_promotion_role_with_no_queue_and_its_token_secret():
    sids = [_unwrapped(entry)[1]["Sid"] for entry in _role_statements("R2QueuePollerRole")]
    assert sids == [
        "WriteOwnLogs",
        "XRayTracing",
        "ReadStaging",
        "ListBucketForNotFound",
        "WriteCanonical",
        "DeleteStagedAfterPromotion",
        "ReadDatabaseSecret",
        "ReadStorageCredentialsSecret",
        "ReadCloudflareApiTokenSecret",
        "UseCustomerManagedKeys",
        "VpcNetworkInterfaces",
    ]
    assert "sqs:" not in json.dumps(_role_statements("R2QueuePollerRole"))
    promotion = {s["Sid"]: s for s in _role_statements() if "Sid" in s}
    for sid in ("XRayTracing", "ReadStaging", "ListBucketForNotFound", "WriteCanonical", "ReadDatabaseSecret"):
        assert _statement(sid, "R2QueuePollerRole") == (None, promotion[sid]), sid
    assert _statement("WriteOwnLogs", "R2QueuePollerRole")[1]["Resource"] == {
        "Fn::GetAtt": ["R2QueuePollerLogGroup", "Arn"]
    }
    condition, token = _statement("ReadCloudflareApiTokenSecret", "R2QueuePollerRole")
    assert condition == "HasCloudflareApiToken"
    assert (token["Action"], token["Resource"]) == (
        "secretsmanager:GetSecretValue",
        {"Ref": "CloudflareApiTokenSecretArn"},
    )
    assert _statement("UseCustomerManagedKeys", "R2QueuePollerRole") == _conditional_statement("UseCustomerManagedKeys")
    assert _statement("DeleteStagedAfterPromotion", "R2QueuePollerRole") == _conditional_statement(
        "DeleteStagedAfterPromotion"
    )


def test_the_transformed_poller_is_an_eventbridge_schedule_with_no_retries(monkeypatch):
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    template = _template()
    for function in ("PromoteCheckpointsFunction", "R2QueuePollerFunction", "CheckpointApiFunction", "SweeperFunction"):
        template["Resources"][function]["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    template["Resources"]["CkptLayer"]["Properties"]["ContentUri"] = "s3://artifacts/layer.zip"
    secret = {"DatabaseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"}
    resources = transform(template, secret, NoManagedPolicies())["Resources"]
    rule = resources["R2QueuePollerFunctionPollQueue"]  # (SweeperFunction has a schedule of its own)
    assert rule["Type"] == "AWS::Events::Rule"
    assert rule["Condition"] == "PollsCloudflareQueue"
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "CloudflarePollSchedule"}
    invoke_config = resources["R2QueuePollerFunctionEventInvokeConfig"]
    assert invoke_config["Type"] == "AWS::Lambda::EventInvokeConfig"
    assert invoke_config["Properties"]["MaximumRetryAttempts"] == 0


# --- the checkpoint API -------------------------------------------------------------------------------------------

API_SECURITY = {"Fn::If": ["ApiUsesJwt", [{"jwt": []}], [{"sigv4": []}]]}


def _transformed(monkeypatch: pytest.MonkeyPatch, **parameters: str) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    template = _template()
    for function in ("PromoteCheckpointsFunction", "R2QueuePollerFunction", "CheckpointApiFunction", "SweeperFunction"):
        template["Resources"][function]["Properties"]["CodeUri"] = "s3://artifacts/function.zip"
    template["Resources"]["CkptLayer"]["Properties"]["ContentUri"] = "s3://artifacts/layer.zip"
    values = {"DatabaseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf", **parameters}
    resources: dict[str, Any] = transform(template, values, NoManagedPolicies())["Resources"]
    return resources


def test_every_api_route_is_authorised_by_iam_unless_jwt_is_chosen_and_never_open():
    template = _template()
    parameter = template["Parameters"]["ApiAuthorization"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("IAM", ["IAM", "JWT"])
    assert template["Conditions"]["ApiUsesJwt"] == {"Fn::Equals": [{"Ref": "ApiAuthorization"}, "JWT"]}
    body = _resources()["CheckpointHttpApi"]["Properties"]["DefinitionBody"]
    assert body["paths"]
    for path, operations in body["paths"].items():
        assert list(operations) == ["get"], path
        assert operations["get"]["security"] == API_SECURITY, path
    iam_or_jwt = body["components"]["securitySchemes"]["Fn::If"]
    assert iam_or_jwt[0] == "ApiUsesJwt"
    assert iam_or_jwt[1]["jwt"]["x-amazon-apigateway-authorizer"] == {
        "type": "jwt",
        "identitySource": "$request.header.Authorization",
        "jwtConfiguration": {"issuer": {"Ref": "ApiJwtIssuer"}, "audience": {"Ref": "ApiJwtAudience"}},
    }
    assert iam_or_jwt[2]["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    # SAM's Auth would override the definition's security: the API must not have one
    assert "Auth" not in _resources()["CheckpointHttpApi"]["Properties"]


def test_a_jwt_api_requires_its_issuer_and_audience():
    template = _template()
    rule = template["Rules"]["ApiJwtNeedsIssuerAndAudience"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "ApiAuthorization"}, "JWT"]}
    issuer, audience = (assertion["Assert"] for assertion in rule["Assertions"])
    assert issuer == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ApiJwtIssuer"}, ""]}]}
    assert audience == {"Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "ApiJwtAudience"}, ""]}]}
    pattern = template["Parameters"]["ApiJwtIssuer"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf")
    assert re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "http://issuer.example")


def test_the_api_routes_are_the_functions_events_and_the_openapi_description():
    function = _resources()["CheckpointApiFunction"]["Properties"]
    events = {(e["Properties"]["Method"].lower(), e["Properties"]["Path"]) for e in function["Events"].values()}
    assert all(e["Type"] == "HttpApi" for e in function["Events"].values())
    assert all(e["Properties"]["ApiId"] == {"Ref": "CheckpointHttpApi"} for e in function["Events"].values())
    body = _resources()["CheckpointHttpApi"]["Properties"]["DefinitionBody"]
    defined = {(method, path) for path, operations in body["paths"].items() for method in operations}
    document = json.loads((ROOT / "functions/checkpoint_api/openapi.json").read_text())
    described = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert events == defined == described
    assert len(events) == 4


def test_the_api_function_runs_the_shared_layer_within_api_gateways_time():
    function = _resources()["CheckpointApiFunction"]["Properties"]
    promotion = _resources()["PromoteCheckpointsFunction"]["Properties"]
    assert function["Handler"] == "checkpoint_api.app.lambda_handler"
    assert function["CodeUri"] == promotion["CodeUri"] == "functions/"
    assert function["Layers"] == [{"Ref": "CkptLayer"}]
    assert function["Role"] == {"Fn::GetAtt": ["CheckpointApiRole", "Arn"]}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "CheckpointApiLogGroup"}}
    assert function["VpcConfig"] == promotion["VpcConfig"]
    assert function["Timeout"] < 30  # HTTP API integrations time out at 30 s
    variables = function["Environment"]["Variables"]
    for name in ("CHECKPOINT_BUCKET", "AWS_S3_ENDPOINT_URL", "DATABASE_SECRET_ARN", "STORAGE_CREDENTIALS_SECRET_ARN"):
        assert variables[name] == promotion["Environment"]["Variables"][name], name
    for name in ("STAGING_PREFIX", "CANONICAL_PREFIX", "CHECKPOINT_URI_SCHEME"):
        assert variables[name] == promotion["Environment"]["Variables"][name], name
    assert variables["DATABASE_URL"] == ""


def test_the_api_is_throttled_and_logs_every_request():
    api = _resources()["CheckpointHttpApi"]["Properties"]
    assert api["FailOnWarnings"] is True
    assert api["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
    }
    assert api["AccessLogSettings"]["DestinationArn"] == {"Fn::GetAtt": ["CheckpointApiAccessLogGroup", "Arn"]}
    json.loads(api["AccessLogSettings"]["Format"])  # one JSON object per request


def test_the_api_role_only_reads_the_canonical_checkpoints_and_its_secrets():
    sids = [_unwrapped(entry)[1]["Sid"] for entry in _role_statements("CheckpointApiRole")]
    assert sids == [
        "WriteOwnLogs",
        "XRayTracing",
        "ReadCanonical",
        "ReadDatabaseSecret",
        "ReadStorageCredentialsSecret",
        "DecryptWithCustomerManagedKeys",
        "VpcNetworkInterfaces",
    ]
    _, canonical = _statement("ReadCanonical", "CheckpointApiRole")
    assert canonical["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert canonical["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/${CanonicalPrefix}*"}
    _, logs = _statement("WriteOwnLogs", "CheckpointApiRole")
    assert logs["Resource"] == {"Fn::GetAtt": ["CheckpointApiLogGroup", "Arn"]}
    assert _statement("ReadDatabaseSecret", "CheckpointApiRole")[1]["Resource"] == {"Ref": "DatabaseSecretArn"}
    assert _statement("ReadStorageCredentialsSecret", "CheckpointApiRole")[0] == "HasStorageCredentials"
    condition, kms = _statement("DecryptWithCustomerManagedKeys", "CheckpointApiRole")
    assert (condition, kms["Action"], kms["Resource"]) == ("HasKmsKeys", "kms:Decrypt", {"Ref": "KmsKeyArns"})
    granted = json.dumps(_role_statements("CheckpointApiRole"))
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "sqs:", "kms:GenerateDataKey", "s3:*"):
        assert action not in granted, action
    assert "StagingPrefix" not in granted


@pytest.mark.parametrize(
    "parameters",
    [{}, {"ApiAuthorization": "JWT", "ApiJwtIssuer": "https://id.example", "ApiJwtAudience": "x"}],
    ids=["iam", "jwt"],
)
def test_the_transformed_api_integrates_each_route_with_the_function_under_its_authorizer(monkeypatch, parameters):
    # CloudFormation resolves the security's Fn::If at deployment, by ApiAuthorization
    resources = _transformed(monkeypatch, **parameters)
    [api] = [r for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Api"]
    paths = api["Properties"]["Body"]["paths"]
    assert len(paths) == 4
    for path, operations in paths.items():
        operation = operations["get"]
        assert operation["security"] == API_SECURITY, path
        integration = operation["x-amazon-apigateway-integration"]
        assert (integration["type"], integration["payloadFormatVersion"]) == ("aws_proxy", "2.0")
        assert "${CheckpointApiFunction.Arn}" in integration["uri"]["Fn::Sub"]
    permissions = [
        r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission" and "CheckpointHttpApi" in json.dumps(r)
    ]
    assert len(permissions) == 4
    assert all(p["Properties"]["FunctionName"] == {"Ref": "CheckpointApiFunction"} for p in permissions)


# --- Cleanup and lifecycle (issue 9, item 4) -------------------------------------------------------------------


def test_incomplete_multipart_uploads_are_aborted_after_the_parameters_days_a_week_by_default():
    parameter = _template()["Parameters"]["AbortIncompleteMultipartUploadDays"]
    assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 7, 1)
    condition, rule = _rule("abort-incomplete-multipart-uploads")
    assert condition is None
    assert rule["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": {"Ref": "AbortIncompleteMultipartUploadDays"}
    }


def test_staging_expires_after_the_parameters_days_only_under_staging_and_never_by_default():
    template = _template()
    parameter = template["Parameters"]["StagingExpirationDays"]
    assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 0, 0)
    condition, rule = _rule("expire-staging")
    assert template["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "StagingExpirationDays"}, "0"]}]}
    assert rule["Prefix"] == {"Ref": "StagingPrefix"}
    assert rule["ExpirationInDays"] == {"Ref": "StagingExpirationDays"}
    # Nothing expires a current version anywhere else: no rule with an expiration of current versions lacks the
    # staging prefix (the canonical checkpoints are never deleted).
    for entry in _lifecycle_rules():
        _, some_rule = _unwrapped(entry)
        if {"ExpirationInDays", "ExpirationDate"} & some_rule.keys():
            assert some_rule["Prefix"] == {"Ref": "StagingPrefix"}, some_rule["Id"]


def _iam_statements() -> list[tuple[str, str | None, dict[str, Any]]]:
    """(role, condition or None, statement) of every inline policy statement of every role in the template."""
    found = []
    for name, resource in _resources().items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for entry in policy["PolicyDocument"]["Statement"]:
                found.append((name, *_unwrapped(entry)))
    return found


def test_staged_files_are_deleted_only_with_the_parameter_and_only_under_staging():
    template = _template()
    parameter = template["Parameters"]["DeleteStagedAfterPromotion"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["true", "false"])
    assert template["Conditions"]["DeletesStagedAfterPromotion"] == {
        "Fn::Equals": [{"Ref": "DeleteStagedAfterPromotion"}, "true"]
    }
    staging = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/${StagingPrefix}*"}
    deleting = {
        role: (condition, statement)
        for role, condition, statement in _iam_statements()
        if any(
            action in ("*", "s3:*") or action.startswith("s3:Delete")
            for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
        )
    }
    # The two functions that promote, and nothing else, ever: no role may delete a canonical checkpoint.
    assert set(deleting) == {"PromoteCheckpointsRole", "R2QueuePollerRole"}
    for condition, statement in deleting.values():
        assert condition == "DeletesStagedAfterPromotion"
        assert statement == {
            "Sid": "DeleteStagedAfterPromotion",
            "Effect": "Allow",
            "Action": "s3:DeleteObject",
            "Resource": staging,
        }
    # The deletes are conditional on the ETag, which S3 checks with s3:GetObject on the same keys.
    _, read = _statement("ReadStaging")
    assert read["Action"] == "s3:GetObject" and read["Resource"] == staging


def test_both_functions_that_promote_are_told_whether_to_delete_staged_files():
    for function in ("PromoteCheckpointsFunction", "R2QueuePollerFunction"):
        variables = _resources()[function]["Properties"]["Environment"]["Variables"]
        assert variables["DELETE_STAGED_AFTER_PROMOTION"] == {"Ref": "DeleteStagedAfterPromotion"}, function


# --- Observability (issue 9, item 6) ---------------------------------------------------------------------------

FAILURE_RATE = (
    "100 * (FILL(rejected, 0) + FILL(failures, 0)) / (FILL(promoted, 0) + FILL(duplicate, 0)"
    " + FILL(superseded, 0) + FILL(rejected, 0) + FILL(failures, 0))"
)


def _emitted_metric_names() -> set[str]:
    """The metric names the functions' code publishes: the outcome counts (Manifests<Status>, from the enum) and
    every other name written out in the functions' sources (add_metric(name="…") and handler.measures)."""
    from ckpt.contract.outcome import Status

    sources = "\n".join(path.read_text() for path in (ROOT / "functions").rglob("*.py"))
    names = set(re.findall(r'add_metric\(\s*name="(\w+)"', sources))
    names |= set(re.findall(r'\(\s*"(\w+)",\s*MetricUnit\.', sources))
    return names | {f"Manifests{status.title()}" for status in Status}


def _metric_namespace_and_dimensions() -> tuple[str, list[str]]:
    from promote_checkpoints.observability import metrics

    return metrics.namespace, ["service", metrics.service]


def test_the_failure_rate_alarm_is_metric_math_over_the_outcome_metrics_above_five_percent():
    alarm = _resources()["PromotionFailureRateAlarm"]["Properties"]
    namespace, (dimension, service) = _metric_namespace_and_dimensions()
    queries = {query["Id"]: query for query in alarm["Metrics"]}
    assert queries["failure_rate"]["Expression"] == FAILURE_RATE
    assert [query["Id"] for query in alarm["Metrics"] if query["ReturnData"]] == ["failure_rate"]
    names = {
        "promoted": "ManifestsPromoted",
        "duplicate": "ManifestsDuplicate",
        "superseded": "ManifestsSuperseded",
        "rejected": "ManifestsRejected",
        "failures": "PromotionFailures",
    }
    assert set(queries) == {*names, "failure_rate"}
    for query_id, name in names.items():
        stat = queries[query_id]["MetricStat"]
        assert stat["Metric"] == {
            "Namespace": namespace,
            "MetricName": name,
            "Dimensions": [{"Name": dimension, "Value": service}],
        }
        assert (stat["Period"], stat["Stat"]) == (900, "Sum")  # 15 minutes
    assert set(names.values()) <= _emitted_metric_names()
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (5, "GreaterThanThreshold")
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (1, 1)
    assert alarm["TreatMissingData"] == "notBreaching"  # no promotion in 15 minutes is no failure


def _dashboard() -> dict[str, Any]:
    """The dashboard body as CloudWatch reads it, each ${…} of its !Sub left as the text it names."""
    body = _resources()["PipelineDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    document: dict[str, Any] = json.loads(re.sub(r"\$\{([^}]+)\}", r"<\1>", body))
    return document


def _widget(title_start: str) -> dict[str, Any]:
    [widget] = [w for w in _dashboard()["widgets"] if w["properties"]["title"].startswith(title_start)]
    return widget["properties"]


def _series(widget: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(namespace, metric name, options) of each metric of a widget (expressions left out)."""
    found = []
    for row in widget["metrics"]:
        options = row[-1] if isinstance(row[-1], dict) else {}
        if "expression" not in options:
            found.append((row[0], row[1], options))
    return found


def test_the_dashboard_charts_only_metrics_the_code_emits_under_its_namespace_and_dimension():
    namespace, dimensions = _metric_namespace_and_dimensions()
    emitted = _emitted_metric_names()
    charted = set()
    for widget in _dashboard()["widgets"]:
        if widget["type"] != "metric":
            continue
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):
                continue  # an expression over the rows that follow
            if row[0] == namespace:
                assert row[2:4] == dimensions, row
                charted.add(row[1])
    assert charted <= emitted, charted - emitted
    assert {"PromotionLatency", "BytesVerified", "BytesHashed", "BytesCopied", "SweepFindings"} <= charted


def test_the_dashboard_has_the_pipeline_on_one_page():
    layout = [(w["x"], w["y"], w["width"], w["height"]) for w in _dashboard()["widgets"]]
    assert all(x + width <= 24 for x, _, width, _ in layout)
    assert {name for _, name, _ in _series(_widget("Promotions by outcome"))} >= {
        "ManifestsPromoted",
        "ManifestsDuplicate",
        "ManifestsSuperseded",
        "ManifestsRejected",
        "PromotionFailures",
    }
    rate = _widget("Promotion failure rate")
    [expression] = [row[0] for row in rate["metrics"] if isinstance(row[0], dict)]
    assert expression["expression"] == FAILURE_RATE  # the alarm's own arithmetic
    assert {options["id"] for _, _, options in _series(rate)} == {
        "promoted",
        "duplicate",
        "superseded",
        "rejected",
        "failures",
    }
    assert rate["annotations"]["horizontal"][0]["value"] == 5
    latency = _series(_widget("Latency"))
    assert [(name, options["stat"]) for _, name, options in latency] == [
        ("PromotionLatency", "p50"),
        ("PromotionLatency", "p99"),
    ]
    assert [name for _, name, _ in _series(_widget("Bytes"))] == ["BytesVerified", "BytesHashed", "BytesCopied"]
    queues = _widget("Dead-letter queue")["metrics"]
    assert ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "<PromotionDeadLetterQueue.QueueName>"] in [
        row[:4] for row in queues
    ]
    assert [name for _, name, _ in _series(_widget("Sweeper findings"))] == ["SweepFindings"]
    alarms = [w["properties"]["alarms"] for w in _dashboard()["widgets"] if w["type"] == "alarm"]
    assert alarms == [["<PromotionFailureRateAlarm.Arn>", "<PromotionDeadLetterAlarm.Arn>", "<SweepFindingsAlarm.Arn>"]]
    for name in ("PromotionFailureRateAlarm", "PromotionDeadLetterAlarm", "SweepFindingsAlarm"):
        assert _resources()[name]["Type"] == "AWS::CloudWatch::Alarm"


# --- The sweeper (issue 9, item 1) --------------------------------------------------------------------------------


def _sweeper_statements() -> list[tuple[str | None, dict[str, Any]]]:
    return [_unwrapped(entry) for entry in _role_statements("SweeperRole")]


def test_the_sweeper_runs_the_shared_code_on_a_schedule_without_lambda_retries():
    template = _template()
    function = template["Resources"]["SweeperFunction"]["Properties"]
    promotion = template["Resources"]["PromoteCheckpointsFunction"]["Properties"]
    assert function["Handler"] == "sweeper.handler.lambda_handler"
    assert (ROOT / "functions" / "sweeper" / "handler.py").is_file()
    assert function["CodeUri"] == promotion["CodeUri"] == "functions/"
    assert function["Layers"] == promotion["Layers"] == [{"Ref": "CkptLayer"}]
    assert function["Role"] == {"Fn::GetAtt": ["SweeperRole", "Arn"]}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "SweeperLogGroup"}}
    assert function["VpcConfig"] == promotion["VpcConfig"]  # the database is where the promotion reaches it
    assert function["Timeout"] == 900  # a multipart checkpoint is hashed by reading it whole
    assert "ReservedConcurrentExecutions" not in function  # overlapping runs are safe (If-None-Match: *)
    _assert_scheduled_once(template, function, "SweepSchedule", "rate(1 hour)", "rate(15 minutes)")


def test_the_sweepers_age_is_a_parameter_in_the_clis_duration_syntax_six_hours_by_default():
    from ckpt.operations.sweep import DEFAULT_OLDER_THAN, parse_duration

    parameter = _template()["Parameters"]["SweepOlderThan"]
    assert parse_duration(parameter["Default"]) == DEFAULT_OLDER_THAN == parse_duration("6h")
    for value in ("90s", "30m", "6h", "1h30m", "2d", "0s", "", "6", "6 h", "6hours", "1.5h", "-6h"):
        try:
            parse_duration(value)
            readable = True
        except ValueError:
            readable = False
        assert bool(re.fullmatch(parameter["AllowedPattern"], value)) is readable, value
    variables = _resources()["SweeperFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["SWEEP_OLDER_THAN"] == {"Ref": "SweepOlderThan"}
    assert '"SWEEP_OLDER_THAN"' in (ROOT / "functions" / "sweeper" / "handler.py").read_text()


def test_the_sweeper_reads_the_store_and_the_database_as_the_promotion_does():
    variables = _resources()["SweeperFunction"]["Properties"]["Environment"]["Variables"]
    promotion = _resources()["PromoteCheckpointsFunction"]["Properties"]["Environment"]["Variables"]
    shared = (
        "CHECKPOINT_BUCKET",
        "AWS_S3_ENDPOINT_URL",
        "DATABASE_SECRET_ARN",
        "STORAGE_CREDENTIALS_SECRET_ARN",
        "DATABASE_URL",
        "STAGING_PREFIX",
        "CANONICAL_PREFIX",
        "CHECKPOINT_URI_SCHEME",
        "STORAGE_PROFILE",
    )
    assert {name: variables[name] for name in shared} == {name: promotion[name] for name in shared}
    assert set(variables) == {*shared, "SWEEP_OLDER_THAN"}


def test_the_sweeper_role_lists_and_reads_staging_and_writes_only_manifests_there():
    statements = _sweeper_statements()
    assert [statement["Sid"] for _, statement in statements] == [
        "WriteOwnLogs",
        "XRayTracing",
        "ReadStaging",
        "ListBucketForNotFound",
        "WriteStagedManifests",
        "ReadDatabaseSecret",
        "ReadStorageCredentialsSecret",
        "UseCustomerManagedKeys",
        "VpcNetworkInterfaces",
    ]
    by_sid = {statement["Sid"]: (condition, statement) for condition, statement in statements}
    promotion = {s["Sid"]: s for s in _role_statements() if "Sid" in s}
    for sid in ("XRayTracing", "ReadStaging", "ListBucketForNotFound", "ReadDatabaseSecret"):
        assert by_sid[sid] == (None, promotion[sid]), sid
    assert by_sid["WriteOwnLogs"][1]["Resource"] == {"Fn::GetAtt": ["SweeperLogGroup", "Arn"]}
    assert by_sid["WriteStagedManifests"][1]["Action"] == "s3:PutObject"
    assert by_sid["WriteStagedManifests"][1]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/${StagingPrefix}*manifest.json"
    }
    assert by_sid["UseCustomerManagedKeys"] == _conditional_statement("UseCustomerManagedKeys")
    assert by_sid["ReadStorageCredentialsSecret"][0] == "HasStorageCredentials"
    policy = json.dumps(_resources()["SweeperRole"]["Properties"]["Policies"])
    # never a queue, a delete, or anything under the canonical prefix: the sweeper only writes manifests
    assert "sqs:" not in policy and "s3:Delete" not in policy and "CanonicalPrefix" not in policy


def test_an_alarm_fires_on_any_attempt_the_sweeper_completes():
    from promote_checkpoints.observability import metrics

    alarm = _resources()["SweepFindingsAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (metrics.namespace, "SweepFindings")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": metrics.service}]
    assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == ("Sum", 0, "GreaterThanThreshold")
    assert alarm["TreatMissingData"] == "notBreaching"
    handler = (ROOT / "functions" / "sweeper" / "handler.py").read_text()
    for name in ("SweepFindings", "SweptAttempts"):
        assert f'name="{name}"' in handler, name


def test_the_transformed_sweeper_is_an_eventbridge_schedule_with_no_retries(monkeypatch):
    resources = _transformed(monkeypatch)
    rule = resources["SweeperFunctionSweep"]
    assert rule["Type"] == "AWS::Events::Rule"
    assert "Condition" not in rule  # every stack sweeps
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "SweepSchedule"}
    assert resources["SweeperFunctionEventInvokeConfig"]["Properties"]["MaximumRetryAttempts"] == 0
