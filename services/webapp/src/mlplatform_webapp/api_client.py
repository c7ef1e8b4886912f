"""A small httpx client for the serving API, with one-line errors a page can show.

Every failure becomes an :class:`ApiError`: :class:`ApiUnavailable` when the API cannot answer
(down, timing out, 5xx, not ready) and :class:`ApiRejected` when it refused the request (4xx,
with the API's own message that names the field). No exception of httpx or json escapes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

FEEDBACK_RETRY_SECONDS = 15.0
"""How long ``feedback`` keeps asking again when the API says when to (``Retry-After``)."""


class ApiError(Exception):
    """A request to the serving API failed; ``message`` is one line fit for a page."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.status = status


class ApiUnavailable(ApiError):
    """The API is down, not ready, or failed on its side (connection error, timeout, 5xx)."""


class ApiRejected(ApiError):
    """The API refused the request (4xx); the message is the API's reason."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason_phrase or f"HTTP {response.status_code}"


class ApiClient:
    """The serving API's endpoints that the web app uses."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        transport: Any = None,
        writer_token: str | None = None,
    ) -> None:
        """``writer_token``: sent with ``/feedback``, which the API refuses without it."""
        self.base_url = base_url.rstrip("/")
        self._writer = {"Authorization": f"Bearer {writer_token}"} if writer_token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if kw.get("json") is not None:
            # Python's encoder writes NaN/Infinity, so the API (not httpx) names the bad value.
            kw["content"] = json.dumps(kw.pop("json")).encode()
            kw["headers"] = {**kw.get("headers", {}), "Content-Type": "application/json"}
        kw.pop("json", None)
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise ApiUnavailable(
                f"The serving API at {self.base_url} did not answer in time."
            ) from None
        except httpx.HTTPError as exc:
            raise ApiUnavailable(
                f"The serving API at {self.base_url} cannot be reached ({type(exc).__name__})."
            ) from None
        if response.status_code == 503:
            raise ApiUnavailable(
                f"The serving API is unavailable: {_reason(response)}", response.status_code
            )
        if response.status_code >= 500:
            raise ApiUnavailable(
                f"The serving API failed (HTTP {response.status_code}): {_reason(response)}",
                response.status_code,
            )
        if response.status_code >= 400:
            retry_after = response.headers.get("retry-after", "")
            raise ApiRejected(
                _reason(response),
                response.status_code,
                float(retry_after) if retry_after.isdigit() else None,
            )
        return response

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = self._request(method, path, **kw)
        try:
            return response.json()
        except (ValueError, json.JSONDecodeError):
            raise ApiUnavailable(
                f"The serving API answered {path} with something that is not JSON."
            ) from None

    def _admin(self, method: str, path: str, token: str, **kw: Any) -> dict[str, Any]:
        """A request with the admin (bearer) token, answered with a JSON object."""
        return dict(self._json(method, path, headers={"Authorization": f"Bearer {token}"}, **kw))

    # -- reads -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return dict(self._json("GET", "/health"))

    def ready(self) -> dict[str, Any]:
        """``GET /ready``; raises :class:`ApiUnavailable` with the reason while not ready."""
        return dict(self._json("GET", "/ready"))

    def model(self) -> dict[str, Any]:
        """``GET /model``: the served version's card."""
        return dict(self._json("GET", "/model"))

    def models(self) -> dict[str, Any]:
        """``GET /models``: every version and the production alias."""
        return dict(self._json("GET", "/models"))

    def model_names(self) -> dict[str, Any]:
        """``GET /models/names``: ``{"serving": name, "names": [...]}`` (the store's models)."""
        return dict(self._json("GET", "/models/names"))

    def model_metrics(self) -> dict[str, Any]:
        """``GET /metrics/model``."""
        return dict(self._json("GET", "/metrics/model"))

    def kpis(self) -> dict[str, Any]:
        """``GET /metrics/kpis``."""
        return dict(self._json("GET", "/metrics/kpis"))

    def system(self) -> dict[str, Any]:
        """``GET /metrics/system``: latency percentiles, error rate, throughput."""
        return dict(self._json("GET", "/metrics/system"))

    def retrain_runs(self, limit: int = 20, before: str | None = None) -> dict[str, Any]:
        """``GET /retrain-runs``: one page of runs, newest first, ``{"runs", "next"}``."""
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        data = self._json("GET", "/retrain-runs", params=params)
        runs = data.get("runs") if isinstance(data, dict) else None
        return {
            "runs": [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else [],
            "next": data.get("next") if isinstance(data, dict) else None,
        }

    def reports(self, limit: int = 50) -> list[dict[str, Any]]:
        """``GET /reports``: newest first, each ``{"id", "summary"}``."""
        data = self._json("GET", "/reports", params={"limit": limit})
        return (
            [r for r in data if isinstance(r, dict) and "id" in r] if isinstance(data, list) else []
        )

    def report_html(self, report_id: str) -> str:
        """``GET /reports/{id}``: the Evidently HTML."""
        return self._request("GET", f"/reports/{report_id}").text

    # -- writes ------------------------------------------------------------------------------

    def predict(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /predict`` with ``instances``; raises :class:`ApiRejected` for bad rows."""
        return dict(self._json("POST", "/predict", json={"instances": rows}))

    def predict_one(self, features: dict[str, Any]) -> dict[str, Any]:
        """``POST /predict`` with one row; returns that row's prediction."""
        body = self._json("POST", "/predict", json={"features": features})
        return dict(body["predictions"][0])

    def feedback(
        self,
        target: Any,
        prediction_id: str | None = None,
        features: dict[str, Any] | None = None,
        prediction: Any = None,
    ) -> dict[str, Any]:
        """``POST /feedback``: by prediction id, or with the row in full."""
        body: dict[str, Any] = {"target": target}
        if prediction_id is not None:
            body["prediction_id"] = prediction_id
        if features is not None:
            body["features"] = features
            body["prediction"] = prediction
        deadline = time.monotonic() + FEEDBACK_RETRY_SECONDS
        while True:
            try:
                return dict(self._json("POST", "/feedback", json=body, headers=self._writer))
            except ApiRejected as exc:
                # Retry-After on a 409 (a prediction another replica has not logged yet) or a
                # 429 (over the key's rate): nothing was stored, so asking again is safe.
                wait = exc.retry_after
                if wait is None or time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    def feedback_batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``POST /feedback`` with ``items``: ``{"stored", "failed", "results"}``, one result
        per item (201 with its ``feedback_id``, or a 4xx with the ``error``)."""
        deadline = time.monotonic() + FEEDBACK_RETRY_SECONDS
        while True:
            try:
                return dict(
                    self._json("POST", "/feedback", json={"items": items}, headers=self._writer)
                )
            except ApiRejected as exc:
                # a 429 stores nothing of the batch: asking again after Retry-After is safe
                wait = exc.retry_after
                if wait is None or time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    def reload(self, token: str, version: str | None = None) -> dict[str, Any]:
        """``POST /admin/reload`` (bearer token)."""
        return self._admin(
            "POST",
            "/admin/reload",
            token,
            json={"version": version} if version else None,
        )

    def retrain(self, token: str) -> dict[str, Any]:
        """``POST /admin/retrain`` (bearer token)."""
        return self._admin("POST", "/admin/retrain", token)

    def upload_dataset(
        self, token: str, name: str, target: str, data: bytes, timeout: float = 300.0
    ) -> dict[str, Any]:
        """``POST /admin/datasets`` (bearer token): store a CSV or Parquet file as a named data
        set; the answer is its summary (rows, columns, schema, task)."""
        return self._admin(
            "POST",
            "/admin/datasets",
            token,
            params={"name": name, "target": target},
            content=data,
            timeout=timeout,  # a large file takes longer than a prediction
        )

    def register_model(
        self,
        token: str,
        model: tuple[str, bytes],
        data: tuple[str, bytes],
        target: str,
        *,
        promote: bool = False,
        task: str | None = None,
        trust: tuple[str, ...] = (),
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """``POST /admin/models`` (bearer token): upload a model file and its reference data
        (``(file name, bytes)`` each) to register; the answer (202) is the upload's id and
        its ``status`` path, for ``upload_status``."""
        fields: dict[str, Any] = {"target": target, "promote": "true" if promote else "false"}
        if task:
            fields["task"] = task
        if trust:
            fields["trust"] = list(trust)
        return self._admin(
            "POST",
            "/admin/models",
            token,
            files={"model": model, "data": data},
            data=fields,
            timeout=timeout,  # a large model takes longer than a prediction
        )

    def upload_status(self, token: str, status_path: str) -> dict[str, Any]:
        """``GET /admin/models/uploads/{id}`` (bearer token): ``state`` pending, published
        (with ``version``) or refused (with ``reason``)."""
        return self._admin("GET", status_path, token)

    def datasets(self, token: str) -> list[dict[str, Any]]:
        """``GET /admin/datasets`` (bearer token): the model's stored data sets."""
        return list(self._admin("GET", "/admin/datasets", token).get("datasets", []))

    def promote(self, token: str, version: str, pin: bool = False) -> dict[str, Any]:
        """``POST /admin/promote`` (bearer token): start the run that puts ``version`` in
        production (``pin``: and holds it); the answer is ``{"action", "started", "model",
        "production"}``, the alias moves when that run is done."""
        return self._admin(
            "POST",
            "/admin/promote",
            token,
            json={"version": version, "pin": pin},
        )

    def rollback(self, token: str) -> dict[str, Any]:
        """``POST /admin/rollback`` (bearer token): start the run that moves production back
        to the previous version; the answer as ``promote``'s."""
        return self._admin("POST", "/admin/rollback", token)

    def train(self, token: str, dataset: str) -> dict[str, Any]:
        """``POST /admin/train`` (bearer token): start the run that trains on the stored data
        set, publishes and promotes; the answer as ``promote``'s, the version appears in
        ``models()`` when that run is done."""
        return self._admin(
            "POST",
            "/admin/train",
            token,
            json={"dataset": dataset},
        )

    def unpin(self, token: str) -> dict[str, Any]:
        """``POST /admin/unpin`` (bearer token): lift a rollback's or a pin's hold."""
        return self._admin("POST", "/admin/unpin", token)
