"""The load script's protocol client against a real `streamlit run app.py`.

The client speaks Streamlit's own protocol (websocket, XSRF token, upload
endpoint, uploader state); a Streamlit upgrade that changes any of it must
fail here, not silently in a benchmark. Skips without the trained weights.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import HAS_GALLERY, HAS_WEIGHTS

from tumor.lab import loadtest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_WEIGHTS, reason="weights/manifest.json missing: no weights"),
    pytest.mark.skipif(not HAS_GALLERY, reason="gallery/index.csv missing: no tumour slices to upload"),
]


def test_concurrent_protocol_sessions_each_get_a_verdict_from_the_app():
    slices = loadtest.tumour_slices()
    payloads = [loadtest.unique_png(slices, k) for k in range(3)]
    with loadtest.streamlit_server() as (url, _pid):
        waits = asyncio.run(loadtest._round(loadtest._protocol_session, url, payloads, "t", 180))
    assert len(waits) == 3
    assert all(w is not None and 0 < w < 180 for w in waits), waits


def test_a_session_that_never_sees_a_verdict_is_counted_as_failed(capsys):
    # A server that is not Streamlit: the session fails, is reported, and does not hold up the round.
    waits = asyncio.run(loadtest._round(loadtest._protocol_session, "http://127.0.0.1:9", [b"x"], "bad", 5))
    assert waits == [None]
    assert "session bad_0.png failed" in capsys.readouterr().out


def test_summary_reports_the_median_and_the_failures():
    assert loadtest._summary([1.0, None, 3.0, 2.0]).startswith("3 of 4 got a verdict: median    2.0 s")
    assert loadtest._summary([None, None]) == "0 of 2 sessions got a verdict"
