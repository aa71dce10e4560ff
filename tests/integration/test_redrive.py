"""``ckpt redrive --stack-name``: the queue URLs from a deployed stack's outputs (moto's CloudFormation and SQS,
in-process), as template.yaml declares them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from ckpt.cli import main

STACK = "checkpoint-promotion"
# The parts of template.yaml this command reads: the two queues, the redrive policy and the outputs' names.
TEMPLATE = {
    "Resources": {
        "PromotionDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "promotion-dlq"}},
        "PromotionQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": "promotion",
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": ["PromotionDeadLetterQueue", "Arn"]},
                    "maxReceiveCount": 5,
                },
            },
        },
    },
    "Outputs": {
        "PromotionQueueUrl": {"Value": {"Ref": "PromotionQueue"}},
        "PromotionDeadLetterQueueUrl": {"Value": {"Ref": "PromotionDeadLetterQueue"}},
    },
}


@pytest.fixture
def stack(aws_credentials: None) -> Iterator[dict[str, Any]]:
    from moto import mock_aws

    with mock_aws():
        cloudformation = boto3.client("cloudformation")
        cloudformation.create_stack(StackName=STACK, TemplateBody=json.dumps(TEMPLATE))
        outputs = cloudformation.describe_stacks(StackName=STACK)["Stacks"][0]["Outputs"]
        yield {item["OutputKey"]: item["OutputValue"] for item in outputs}


def waiting(sqs: Any, url: str) -> int:
    answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(answer["Attributes"]["ApproximateNumberOfMessages"])


def test_redrive_reads_the_queues_from_the_stack_and_moves_every_message(stack, capsys):
    sqs = boto3.client("sqs")
    dead_letter, queue = stack["PromotionDeadLetterQueueUrl"], stack["PromotionQueueUrl"]
    bodies = {json.dumps({"Records": [{"n": n}]}) for n in range(23)}  # more than one batch of 10
    for body in bodies:
        sqs.send_message(QueueUrl=dead_letter, MessageBody=body)

    assert main(["redrive", "--stack-name", STACK, "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        f"{dead_letter} holds about 23 message(s); they would move to {queue} (dry run: none moved)\n"
    )
    assert waiting(sqs, dead_letter) == 23

    assert main(["redrive", "--stack-name", STACK]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("StartMessageMoveTask is not available here (NotImplementedError")
    assert out[1] == f"moved 23 message(s) from {dead_letter} to {queue} (receive-send)"
    assert waiting(sqs, dead_letter) == 0
    received: set[str] = set()
    while len(received) < len(bodies):
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        assert messages
        received |= {m["Body"] for m in messages}
    assert received == bodies


def test_a_stack_without_the_outputs_is_refused(stack, capsys):
    boto3.client("cloudformation").create_stack(
        StackName="other", TemplateBody=json.dumps({"Resources": TEMPLATE["Resources"]})
    )

    assert main(["redrive", "--stack-name", "other"]) == 2
    assert "stack other has no output PromotionDeadLetterQueueUrl" in capsys.readouterr().err
