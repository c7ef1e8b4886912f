"""What serving asks of the retrainer's Job besides a retrain: one text, built and parsed here.

Serving may create only the retrainer CronJob's Job (the chart's admission policy), so an action
is that Job's pod-template annotation ``mlplatform.io/action``, which the retrainer reads as
MLPLATFORM_ACTION (downward API); locally it is the same variable. The policy admits exactly
``PATTERN``, so an annotation cannot smuggle anything else into the Job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mlplatform_common.errors import InvalidInput

ANNOTATION = "mlplatform.io/action"
ENV = "MLPLATFORM_ACTION"
Verb = Literal["promote", "pin", "rollback", "register", "train"]
# A data set's name, as datasets.NAME (not imported: that module needs pandas).
DATASET = r"[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?"
# promote:v3, pin:v3, rollback, register:<upload id>, train:<data set>; the chart's policy
# repeats this pattern
PATTERN = r"^(rollback|(promote|pin):v[0-9]{1,9}|register:[a-z0-9]{1,32}|train:" + DATASET + r")$"


@dataclass(frozen=True)
class Action:
    verb: Verb
    argument: str | None = None

    def __str__(self) -> str:
        return self.verb if self.argument is None else f"{self.verb}:{self.argument}"


def promote(version: str, pin: bool = False) -> Action:
    return parse(f"{'pin' if pin else 'promote'}:{version}")


def rollback() -> Action:
    return Action("rollback")


def register(upload_id: str) -> Action:
    return parse(f"register:{upload_id}")


def train(dataset: str) -> Action:
    return parse(f"train:{dataset}")


def parse(text: str) -> Action:
    """The action ``text`` names; anything else is refused, naming the forms it may take."""
    if not re.fullmatch(PATTERN, text):
        raise InvalidInput(
            f"{ENV}={text[:80]!r}: use promote:vN, pin:vN, rollback, register:<upload id> "
            "or train:<data set>"
        )
    verb, _, argument = text.partition(":")
    return Action(verb, argument or None)  # type: ignore[arg-type]
