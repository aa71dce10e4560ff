"""The one place the function's logger, tracer and metrics are created (settings come from the
POWERTOOLS_* environment variables set in template.yaml's Globals)."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

logger = Logger(service="checkpoint-promotion")
tracer = Tracer(service="checkpoint-promotion")
metrics = Metrics(namespace="CheckpointPipeline", service="checkpoint-promotion")

# The ckpt package logs through the standard library; give its loggers the same JSON format and level.
copy_config_to_registered_loggers(source_logger=logger, include={"ckpt", "ckpt.promotion"})
