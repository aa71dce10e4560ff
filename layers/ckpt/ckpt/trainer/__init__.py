"""The trainer's side: stage best.pt and last.pt, then the manifest, whichever way training ends; resume from
the promoted last.pt.

    from ckpt.trainer import Metric, TrainingRun            # any training loop
    from ckpt.trainer.ultralytics import staged_training    # Ultralytics YOLO

``ckpt stage`` and ``ckpt fetch`` are the same from the command line. Nothing here is needed by the functions;
what only trainers need (tqdm, awscrt) is in the ``trainer`` extra, never in the Lambda layer.
"""

from ckpt.contract.manifest import Metric
from ckpt.trainer.training import StageResult, Terminated, TrainingRun

__all__ = ["Metric", "StageResult", "Terminated", "TrainingRun"]
