"""The Data page with AppTest against a real serving process: an upload with its target is
stored through POST /admin/datasets and its schema shown; a bad one is the API's refusal in
one line and stores nothing; the stored data sets are listed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlplatform_common import keys
from mlplatform_common.storage import LocalStore
from tests.conftest import REPO, ServingProcess
from tests.services.webapp.conftest import ADMIN_TOKEN, page, serving_env, texts

PENGUINS = (REPO / "data" / "penguins.csv").read_bytes()


@pytest.fixture
def empty_serving(tmp_path) -> Iterator[tuple[ServingProcess, LocalStore]]:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    proc = ServingProcess(serving_env(store.root)).start(wait_ready=False)  # no model: data first
    yield proc, store
    proc.stop()


def test_the_data_page_uploads_previews_shows_the_schema_and_lists(
    empty_serving, webapp_env
) -> None:
    proc, store = empty_serving
    webapp_env.setenv("MLPLATFORM_ADMIN_TOKEN", ADMIN_TOKEN)
    at = page("data", proc.url, webapp_env).run()
    assert not at.exception and not at.error
    assert "None yet." in texts(at)

    at.file_uploader(key="data_file").upload("penguins.csv", PENGUINS, "text/csv")
    at.run()
    assert at.dataframe[0].value["species"].iloc[0] == "Adelie"  # the preview
    assert at.text_input(key="data_name").value == "penguins"
    at.selectbox(key="data_target").select("species")
    at.button(key="data_store").click().run()
    assert not at.exception and not at.error
    assert "Stored penguins: 344 rows, 8 columns, a classification task" in at.success[0].value
    schema = at.dataframe[1].value
    assert dict(zip(schema["feature"], schema["kind"], strict=True))["island"] == "category"
    listed = at.dataframe[2].value
    assert listed["name"].tolist() == ["penguins"] and listed["rows"].tolist() == [344]
    assert store.exists(keys.dataset("penguins", "meta.json"))


def test_a_bad_upload_is_the_api_s_refusal_and_stores_nothing(empty_serving, webapp_env) -> None:
    proc, store = empty_serving
    at = page("data", proc.url, webapp_env).run()
    assert "Enter the admin token" in texts(at)  # the app holds none here
    at.text_input(key="data_token").input("wrong").run()
    assert len(at.error) == 1 and "Refused" in at.error[0].value

    at.text_input(key="data_token").input(ADMIN_TOKEN).run()
    at.file_uploader(key="data_file").upload("dup.csv", b"a,a,t\n1,2,x\n", "text/csv")
    at.run()
    at.button(key="data_store").click().run()
    assert not at.exception
    assert "Refused" in at.error[0].value and "named twice: ['a']" in at.error[0].value
    assert store.list_keys(keys.DATASETS) == []
