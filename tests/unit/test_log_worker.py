"""A worker of a --workers server names itself in every log line, text or JSON."""

from __future__ import annotations

import io
import json
import logging

from asset_service import logs


def test_text_lines_carry_the_worker(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", out, worker="worker 2/4")
    logging.getLogger("asset_service.x").info("serving %s", "here")
    assert " INFO [worker 2/4] asset_service.x: serving here" in out.getvalue()


def test_json_lines_carry_the_worker_as_a_field(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", out, worker="worker 1/2")
    logging.getLogger("asset_service.x").info("serving")
    line = json.loads(out.getvalue())
    assert line["worker"] == "worker 1/2" and line["message"] == "serving"


def test_a_single_process_names_no_worker(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", out)
    logging.getLogger("asset_service.x").info("serving")
    assert " INFO asset_service.x: serving" in out.getvalue()
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    logging.getLogger("asset_service.x").info("serving")
    assert "worker" not in json.loads(out.getvalue())
