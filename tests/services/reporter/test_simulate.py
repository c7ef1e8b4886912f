"""simulate.py: the drift transforms, and the replay loop against a real HTTP server."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from mlplatform_common import datalog
from mlplatform_common.registry import LoadedModel
from mlplatform_common.storage import Store
from mlplatform_reporter.simulate import holdout, parse_shares, rebalance, replay, shift_scale
from tests.conftest import DATA
from tests.services.reporter.conftest import StubServing


def test_shift_scale_moves_only_the_chosen_features(heldout: pd.DataFrame) -> None:
    X = heldout.drop(columns="target")
    chosen = ["mean_radius", "worst_area"]
    out = shift_scale(X, chosen, shift=2.0, scale=1.5)
    for f in chosen:
        mean, std = X[f].mean(), X[f].std(ddof=0)
        assert out[f].mean() == pytest.approx(mean + 2.0 * std)
        assert out[f].std(ddof=0) == pytest.approx(1.5 * std)
    others = [c for c in X.columns if c not in chosen]
    pd.testing.assert_frame_equal(out[others], X[others])
    pd.testing.assert_frame_equal(shift_scale(X, chosen), X)  # no drift asked: unchanged
    with pytest.raises(ValueError, match="unknown features"):
        shift_scale(X, ["nope"], shift=1.0)


def test_shift_scale_units_come_from_the_given_stats(heldout: pd.DataFrame) -> None:
    X = heldout.drop(columns="target")
    stats = X * 2
    out = shift_scale(X.iloc[:5], ["mean_radius"], shift=1.0, stats=stats)
    expected = X["mean_radius"].iloc[:5] + stats["mean_radius"].std(ddof=0)
    np.testing.assert_allclose(out["mean_radius"], expected)


def test_rebalance_sets_class_shares(heldout: pd.DataFrame) -> None:
    out = rebalance(heldout, "target", {"1": 0.9}, n=1000, seed=3)
    assert len(out) == 1000
    share = (out["target"].astype(str) == "1").mean()
    assert 0.86 < share < 0.94
    assert set(out.columns) == set(heldout.columns)
    with pytest.raises(ValueError, match="unknown classes"):
        rebalance(heldout, "target", {"7": 0.5}, n=10)
    with pytest.raises(ValueError, match="sum to at most 1"):
        rebalance(heldout, "target", {"0": 0.7, "1": 0.7}, n=10)
    assert parse_shares("1=0.9, 0=0.1") == {"1": 0.9, "0": 0.1}
    with pytest.raises(ValueError, match="label=share"):
        parse_shares("1:0.9")


def test_holdout_is_the_retrainers_test_split(heldout: pd.DataFrame) -> None:
    frame = pd.read_csv(DATA)
    rows = holdout(frame, "target")
    assert len(rows) == len(heldout)
    pd.testing.assert_frame_equal(
        rows.reset_index(drop=True)[heldout.columns], heldout, check_dtype=False
    )


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_replay_sends_rows_and_delayed_feedback(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    rows = heldout.iloc[:40].reset_index(drop=True)
    with StubServing(store, model) as serving, httpx.Client(base_url=serving.url) as client:
        summary = replay(
            client,
            rows,
            model.features,
            "target",
            rate=200.0,
            batch_size=4,
            feedback_fraction=0.5,
            feedback_delay=0.3,
            seed=7,
            progress=False,
        )
    assert summary.rows == 40
    assert summary.predicted == 40
    assert summary.errors == 0
    expected_feedback = int((np.random.default_rng(7).random(40) < 0.5).sum())
    assert summary.feedback_sent == expected_feedback > 0
    assert summary.feedback_errors == 0
    assert min(serving.feedback_delays) >= 0.3
    truth = model.pipeline.predict(rows[model.features])
    assert summary.accuracy == pytest.approx((truth == rows["target"].to_numpy()).mean())
    assert summary.model_versions == {model.version: 40}
    assert len(datalog.read_predictions(store)) == 40
    feedback = datalog.read_feedback(store)
    assert len(feedback) == expected_feedback
    assert set(feedback["target"]) <= {"0", "1"}
    assert "40 predicted, 0 failed" in summary.render()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_replay_counts_rejected_rows_and_keeps_going(
    store: Store, model: LoadedModel, heldout: pd.DataFrame
) -> None:
    rows = heldout.iloc[:10].reset_index(drop=True)
    rows.loc[[2, 5], model.features[0]] = -1.0  # the stub answers 422 for these
    with StubServing(store, model) as serving, httpx.Client(base_url=serving.url) as client:
        summary = replay(client, rows, model.features, "target", rate=0, progress=False)
    assert summary.predicted == 8
    assert summary.errors == 2
    assert any("422" in e for e in summary.error_samples)


def test_replay_reports_an_unreachable_api(heldout: pd.DataFrame) -> None:
    from tests.conftest import free_port

    with httpx.Client(base_url=f"http://127.0.0.1:{free_port()}", timeout=1) as client:
        summary = replay(
            client, heldout.iloc[:3], list(heldout.columns[:-1]), None, rate=0, progress=False
        )
    assert summary.predicted == 0
    assert summary.errors == 3
    with pytest.raises(ValueError, match="feedback needs the true labels"):
        replay(client, heldout.iloc[:1], [], None, feedback_fraction=0.5, progress=False)


def test_cli_simulate_labels_with_the_writer_token_and_waits_out_the_rate(
    tmp_path, trained, shipped_dataset, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Against a real serving that asks for the writer key and allows 2 labels a second after
    a burst of 3: every label is stored, the refused ones sent again after Retry-After."""
    from mlplatform_reporter.__main__ import main
    from mlplatform_reporter.settings import get_settings
    from tests.conftest import SIGNING_KEY, ServingProcess, published_local_store

    store = published_local_store(tmp_path / "store", trained, shipped_dataset)
    env = {
        "MLPLATFORM_STORE_URL": f"file://{store.root}",
        "MLPLATFORM_SIGNING_KEY": SIGNING_KEY.decode(),
        "MLPLATFORM_WRITER_TOKEN": "sim-writer",
        "MLPLATFORM_FEEDBACK_RATE": "2",
        "MLPLATFORM_FEEDBACK_BURST": "3",
        "MLPLATFORM_RETRAIN_EVERY": "0",
        "MLPLATFORM_DEV_MODE": "false",
    }
    serving = ServingProcess(env).start()
    args = ["simulate", "--url", serving.url, "--data", str(DATA), "--rows", "8"]
    args += ["--rate", "0", "--feedback-fraction", "1"]
    monkeypatch.setenv("MLPLATFORM_DEV_MODE", "false")
    try:
        monkeypatch.setenv("MLPLATFORM_WRITER_TOKEN", "not-the-key")
        get_settings.cache_clear()
        assert main(args) == 0
        assert "feedback: 0 sent, 8 failed" in capsys.readouterr().out
        assert store.list_keys("production/feedback/") == []

        monkeypatch.setenv("MLPLATFORM_WRITER_TOKEN", "sim-writer")
        get_settings.cache_clear()
        assert main(args) == 0
        assert "feedback: 8 sent, 0 failed" in capsys.readouterr().out
        refused = [
            line
            for line in httpx.get(serving.url + "/metrics").text.splitlines()
            if line.startswith("mlplatform_http_requests_total{")
            and 'route="/feedback"' in line
            and 'status="429"' in line
        ]
        assert refused and float(refused[0].split()[-1]) > 0  # the rate was met, and waited out
    finally:
        serving.stop()
        get_settings.cache_clear()
    assert len(store.list_keys("production/feedback/")) == 8
    assert len(datalog.read_feedback(store)) == 8
