"""Which epochs best.pt and last.pt hold, as a training loop reports them (pure; no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt.contract.keys import check_id
from ckpt.contract.manifest import MetricMode
from ckpt.contract.rules import EpochMetric, best_epoch


def check_epoch(epoch: int) -> None:
    """Refuse, when it is reported, an epoch the manifest could not carry; rather than lose the run's staging."""
    try:
        check_id("epoch", epoch)
    except ValueError as exc:
        raise ValueError(f"{exc}: epochs are 1-based, as in Ultralytics' results.csv (report epoch + 1)") from None


@dataclass
class EpochTracker:
    """Fed one report per epoch. Unless the trainer says which epoch is best (Ultralytics does), the best
    epoch is the promotion's own rule (``ckpt.contract.rules.best_epoch``) over the reports: NaN and missing
    metrics never win, and a tie goes to the later epoch."""

    mode: MetricMode = "max"
    reports: list[EpochMetric] = field(default_factory=list)
    declared_best: int | None = None

    def report(self, epoch: int, value: float | None = None, *, is_best: bool | None = None) -> bool:
        """Record an epoch; returns whether it is now the best (the moment to save best.pt)."""
        check_epoch(epoch)
        self.reports.append(EpochMetric(epoch=epoch, value=value))
        if is_best is not None:
            if is_best:
                self.declared_best = epoch
            return is_best
        return self.best_epoch == epoch

    def would_be_best(self, epoch: int, value: float | None) -> bool:
        """Whether reporting ``epoch`` with ``value`` would make it the best, without recording it."""
        check_epoch(epoch)
        return best_epoch([*self.reports, EpochMetric(epoch=epoch, value=value)], self.mode) == epoch

    @property
    def best_epoch(self) -> int | None:
        if self.declared_best is not None:
            return self.declared_best
        return best_epoch(self.reports, self.mode)

    @property
    def last_epoch(self) -> int | None:
        return self.reports[-1].epoch if self.reports else None
