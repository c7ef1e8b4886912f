"""Request and response models of the serving API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from mlplatform_common import actions
from mlplatform_common.registry import VERSION_PATTERN

_EXAMPLE_ROW = {"mean_radius": 14.1, "mean_texture": 19.3, "...": "every feature of GET /model"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Strict):
    """One row (``features``) or many (``instances``); ``text/csv`` is accepted too."""

    features: dict[str, Any] | None = Field(
        default=None,
        description="One row: feature name -> number (text for a category; null where a value "
        "may be missing)",
        examples=[_EXAMPLE_ROW],
    )
    instances: list[dict[str, Any]] | None = Field(
        default=None,
        description="Many rows, each feature name -> number (text for a category)",
        examples=[[_EXAMPLE_ROW]],
    )


class RowPrediction(BaseModel):
    """A classifier's row has the class and probabilities; a regression's the value."""

    prediction_id: str = Field(description="Id to send back with the true label to /feedback")
    label: Any = Field(default=None, description="Predicted class", examples=[1])
    label_name: str | None = Field(
        default=None, description="Readable class name", examples=["benign"]
    )
    probability: float | None = Field(
        default=None, description="Probability of the predicted class", examples=[0.97]
    )
    probabilities: dict[str, float] | None = Field(
        default=None, description="Probability of every class", examples=[{"0": 0.03, "1": 0.97}]
    )
    value: float | None = Field(
        default=None, description="A regression's predicted value", examples=[151.2]
    )
    model_version: str = Field(examples=["v3"])
    backup: bool = Field(description="True if the backup estimator answered this row")


class PredictResponse(BaseModel):
    model_version: str
    engine: str = Field(description="What computed the probabilities: onnxruntime or sklearn")
    backup: bool = Field(description="True if the backup estimator answered")
    predictions: list[RowPrediction]


class FeedbackRequest(Strict):
    """The true label of an earlier prediction (by id), or of a row given in full."""

    prediction_id: str | None = Field(default=None, max_length=64, examples=["3f2c…"])
    features: dict[str, Any] | None = Field(default=None, examples=[_EXAMPLE_ROW])
    prediction: Any | None = Field(default=None, description="The label that was predicted")
    target: Any = Field(
        description="The true label: a class, or a regression's number", examples=[0]
    )


class FeedbackResponse(BaseModel):
    feedback_id: str
    prediction_id: str | None
    stored: bool = Field(description="The row is durably in the store")
    model_version: str
    labelled_since_training: int | None = Field(
        description="Labelled rows received since the serving model was trained (null if the "
        "store could not be listed just now; the row itself is stored)"
    )
    retrain_every: int = Field(description="A retrain starts every this many labelled rows")
    retrain_started: bool


class FeedbackBatchRequest(Strict):
    """Many labelled rows at once; each item is a ``FeedbackRequest``, judged on its own."""

    items: list[dict[str, Any]] = Field(
        min_length=1,
        description="Rows as single `/feedback` bodies take them: `{prediction_id, target}` or "
        "`{features, prediction?, target}`; at most MLPLATFORM_FEEDBACK_BATCH_MAX",
    )


class FeedbackRowResult(BaseModel):
    """One item's outcome: 201 with its ids, or the error it would have had on its own."""

    index: int = Field(description="The item's position in `items`")
    status: int = Field(description="201 stored, else the HTTP status of its error")
    feedback_id: str | None = Field(default=None, description="Set when stored")
    prediction_id: str | None = Field(default=None, description="Set when stored")
    error: str | None = Field(default=None, description="Set when not stored; names the field")
    type: str | None = Field(default=None, description="Set when not stored: the error class")


class FeedbackBatchResponse(BaseModel):
    stored: int = Field(description="Rows durably in the store")
    failed: int = Field(description="Rows not stored (each says why in `results`)")
    results: list[FeedbackRowResult] = Field(description="One per item, in the items' order")
    labelled_since_training: int | None = Field(
        description="Labelled rows received since the serving model was trained (null if "
        "nothing was stored, or the store could not be listed just now)"
    )
    retrain_every: int = Field(description="A retrain starts every this many labelled rows")
    retrain_started: bool


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    model_version: str | None


class ReadyResponse(BaseModel):
    ready: bool
    model_name: str = Field(description="The named model served (MLPLATFORM_MODEL_NAME)")
    model_version: str
    production_alias: str | None = Field(
        default=None, description="The version the production alias names (checked periodically)"
    )
    alias_matches: bool | None = Field(
        default=None, description="Whether that is the version served (null: not checked yet)"
    )
    alias_detail: str | None = Field(default=None, description="Why they differ, if they do")


class ModelNames(BaseModel):
    serving: str = Field(description="The named model this server serves", examples=["fraud"])
    names: list[str] = Field(
        description="Every named model in the store, the default name first when its store "
        "root holds one",
        examples=[["mlplatform", "fraud"]],
    )


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, naming the field")
    type: str = Field(description="Error class, e.g. InvalidInput")


class Reply(NamedTuple):
    """A prediction route's answer: JSON, or (``json_length`` set) a JSON header and the
    outputs' bytes after it, the V2 binary tensor extension."""

    body: bytes
    json_length: int | None = None

    def headers(self) -> list[tuple[str, str]]:
        if self.json_length is None:
            return [("content-type", "application/json")]
        return [
            ("content-type", "application/octet-stream"),
            ("inference-header-content-length", str(self.json_length)),
        ]


class ReloadRequest(Strict):
    version: str | None = Field(
        default=None,
        pattern=VERSION_PATTERN,
        description="Version to load (v1, v2, ...); default: MODEL_VERSION or the production alias",
    )
    signature: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The HMAC of the version's manifest the caller means (the retrainer sends "
        "it). If this serving's store has another manifest under that version, another store's, "
        "the reload is refused with 409 and the current model keeps serving.",
    )


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str | None


class PromoteRequest(Strict):
    version: str = Field(
        pattern=VERSION_PATTERN, description="The published version to put in production"
    )
    pin: bool = Field(
        default=False,
        strict=True,
        description="Hold it there: retrains keep their candidates for review until "
        "/admin/unpin. Without it a promotion lifts any hold.",
    )


class TrainRequest(Strict):
    dataset: str = Field(
        pattern=f"^{actions.DATASET}$",
        description="A stored data set of this model (GET /admin/datasets) to train on",
        examples=["wine"],
    )


class ActionResponse(BaseModel):
    """A retrainer run was started to move the production alias (or to train a version on a
    data set and promote it); it moves it and rolls it out (GET /models shows the result)."""

    action: str = Field(
        description="What the run does", examples=["pin:v3", "rollback", "train:wine"]
    )
    started: bool
    model: str = Field(description="The named model", examples=["fraud"])
    production: str | None = Field(
        description="The production version when the run was started", examples=["v2"]
    )


class ReportEntry(BaseModel):
    id: str
    summary: dict[str, Any]


class RetrainRunsPage(BaseModel):
    runs: list[dict[str, Any]] = Field(
        description="Run records as the retrainer stored them (at, outcome, reasons, version, "
        "production, new_rows, metric, direction, gate...), each with its id, newest first"
    )
    next: str | None = Field(
        description="Pass as `before` for the next page; null when no older run is left"
    )


class Page(BaseModel):
    page: int
    page_size: int
    total: int
    items: list[dict[str, Any]]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or wrong bearer token",
        404: "Not found",
        409: "The request conflicts with the store's state (named in the message)",
        415: "A body in a format the route does not read (Content-Type), or compressed "
        "(Content-Encoding)",
        413: "Body over the size limit",
        422: "Invalid input; the message names the field",
        429: "The key is over its rate; retry after Retry-After seconds, nothing was stored",
        503: "No model loaded, or the store is unavailable",
    }.items()
}
