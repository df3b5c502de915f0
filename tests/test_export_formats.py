"""Choosing formats, leaving out the ones that cannot be made or fail their check, the formats
table (Export page, model card, ``export`` JSON), and the app's route for the web page."""

from __future__ import annotations

import io
import json
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from helpers import train_shapes
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tl_core import cli
from tl_core.analysis.results import load_predictions
from tl_core.data import standalone_predict
from tl_core.errors import RunError
from tl_core.export.bundle import choose_formats, export_run
from tl_core.export.formats import base, registry
from tl_core.export.report import FormatParity
from tl_core.export.table import format_rows, markdown_table
from tl_ui import share, web_route


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny model trained on shapes in a workspace: its run folder and data folder."""
    shapes = train_shapes(tmp_path_factory.mktemp("tiny"), per_class=10, size=40, epochs=2)
    return {"workspace": shapes.workspace, "run_dir": shapes.run_dir, "data": shapes.data_root}


def _names(zip_path: Path) -> set[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return set(zf.namelist())


def test_formats_are_chosen_by_name_and_unknown_ones_are_named():
    keys = registry.format_keys()
    assert keys[0] == "onnx" and "safetensors" not in keys
    assert choose_formats(None) == ["safetensors", *keys]
    assert choose_formats(["ONNX ", ""]) == ["safetensors", "onnx"]
    assert choose_formats([]) == ["safetensors"]
    with pytest.raises(RunError, match=r"Unknown format pdf, tf: choose among onnx"):
        choose_formats(["onnx", "pdf", "tf"])


def _option_part(key: str, write, *, missing=base.always_available, parity=None, needs=()):
    return base.BundlePart(
        name=key,
        write=write,
        writing=f"Writing {key}",
        usage=lambda has_check: [f"- **{key}**: use `{key}.bin`."],
        files=lambda has_check: [f"- `{key}.bin`"],
        parity=parity,
        option=base.FormatOption(
            key=key,
            title=f"The {key} format",
            paths=lambda bundle: [bundle / f"{key}.bin"],
            example=lambda has_check: f"load('{key}.bin')",
            needs=needs,
            missing=missing,
        ),
    )


def _judged(refuse: bool) -> base.ParityCheck:
    """A check that runs model.onnx and whose judge refuses (or accepts) it."""
    return base.ParityCheck(
        tolerance=1.0,
        checking="Checking: the judged format",
        load=lambda bundle: standalone_predict.OnnxPredictor(bundle),
        unavailable=lambda: "",
        judge=lambda parity: "it is worse than the app" if refuse else "",
    )


def test_a_format_that_cannot_be_made_or_fails_its_check_is_left_out(tiny, tmp_path, monkeypatch):
    def ok(bundle: Path, model: base.ModelToExport) -> None:
        (bundle / "good.bin").write_bytes(b"x")

    def broken(bundle: Path, model: base.ModelToExport) -> None:
        (bundle / "broken.bin").write_bytes(b"half")
        raise ValueError("the converter has no rule for this layer\nstack...")

    def judged(bundle: Path, model: base.ModelToExport) -> None:
        assert model.calibration, "training pictures reach the formats"
        held_out = {tiny["data"] / f for f in load_predictions(tiny["run_dir"]).files}
        assert held_out and not set(model.calibration) & held_out
        (bundle / "judged.bin").write_bytes(b"y")

    parts = (
        _option_part("good", ok),
        _option_part("broken", broken),
        _option_part("absent", ok, missing=lambda: "Install the absent converter."),
        _option_part("judged", judged, parity=_judged(refuse=True)),
        _option_part("after", ok, needs=("broken",)),
    )
    monkeypatch.setattr(registry, "PARTS", (*registry.PARTS[:2], *parts, *registry.PARTS[2:]))
    out = tmp_path / "m.zip"
    report = export_run(tiny["run_dir"], out, tiny["data"])
    f = report.formats
    assert f["good"].status == "checked offline" and f["good"].offered
    assert f["broken"].status == "not built" and not f["broken"].offered
    assert f["broken"].reason == (
        "the conversion failed (ValueError: the converter has no rule for this layer)"
    )
    assert (f["absent"].status, f["absent"].reason) == (
        "not built",
        "Install the absent converter.",
    )
    assert (f["judged"].status, f["judged"].reason) == ("failed", "it is worse than the app")
    assert f["judged"].correct is not None and f["judged"].images_per_second
    assert f["after"].reason == "it is made from The broken format, which is not offered"
    assert report.parity_ok  # a judged format's refusal is no parity failure
    names = _names(out)
    assert "good.bin" in names
    assert not names & {"broken.bin", "absent.bin", "judged.bin", "after.bin"}
    card = zipfile.ZipFile(out).read("README.md").decode()
    assert "- **good**: use `good.bin`." in card and "**broken**" not in card
    assert "| The judged format | no |" in card and "it is worse than the app" in card
    assert "load('good.bin')" in card and "load('judged.bin')" not in card


def test_cli_export_writes_the_chosen_formats_and_prints_the_table(tiny, tmp_path):
    out = tmp_path / "onnx-only.zip"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = cli.main(
            [
                "--workspace",
                str(tiny["workspace"]),
                "export",
                str(tiny["run_dir"]),
                "--out",
                str(out),
                "--format",
                "onnx",
            ]
        )
    assert code == 0, stderr.getvalue()
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    assert [r["key"] for r in summary["table"]] == ["safetensors", "onnx"]
    onnx = summary["table"][1]
    assert onnx["offered"] and onnx["megabytes"] > 0 and onnx["images_per_second"] > 0
    assert onnx["pictures"] == onnx["same_answer"] > 0
    lo, hi = onnx["same_answer_interval"]
    assert lo < 1.0 and hi == pytest.approx(1.0)
    assert onnx["agreement"].startswith(f"{onnx['pictures']} of {onnx['pictures']} (")
    assert "model.onnx" in _names(out) and not any(n.startswith("web/") for n in _names(out))
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        bad = cli.main(
            [
                "export",
                str(tiny["run_dir"]),
                "--out",
                str(tmp_path / "x.zip"),
                "--format",
                "onnx,jpeg",
            ]
        )
    assert bad == 2 and "Unknown format jpeg" in err.getvalue()


def test_the_table_says_what_was_measured_and_why_a_format_is_missing():
    ok = FormatParity("onnx", "ok", 1e-2, images=40, top1_agree=40, title="ONNX", bytes=4_000_000)
    ok.images_per_second, ok.correct, ok.app_correct, ok.example = 25.0, 37, 37, "run()"
    gone = FormatParity(
        "tflite", "not built", 0.0, reason="Install the converters.", title="LiteRT"
    )
    report = type("R", (), {"formats": {"onnx": ok, "tflite": gone}})()
    rows = format_rows(report)  # type: ignore[arg-type]
    assert rows[0].agreement.startswith("40 of 40 (91%-100%)") and rows[0].megabytes == 4.0
    assert rows[0].accuracy == "37 of 40 right (80%-97%; app: 37)"
    assert rows[1].agreement == "-" and rows[1].megabytes is None and rows[1].example == ""
    table = "\n".join(markdown_table(rows))
    assert "| ONNX | yes | 4.0 MB | 25 | 40 of 40 (91%-100%) |" in table
    assert "| LiteRT | no | - | - | - | - | Install the converters. |" in table


def _web_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("web/index.html", "<!doctype html><title>page</title>")
        zf.writestr("web/ort/ort.wasm", b"\0asm")
        zf.writestr("secret.txt", "not part of the page")
    return path


def test_the_app_serves_a_shared_web_page_and_nothing_else(tmp_path):
    web = _web_zip(tmp_path / "web.zip")
    token = web_route.share(web)
    assert web_route.share(web) == token and len(token) >= 24  # the same address each time
    assert (tmp_path / "web.zip.token").read_text() == token
    client = TestClient(Starlette(routes=web_route.routes()))
    page = client.get(web_route.page_path(token))
    assert page.status_code == 200 and "<title>page</title>" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    wasm = client.get(web_route.page_path(token) + "ort/ort.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    bare = client.get(f"/model/{token}", follow_redirects=False)
    assert bare.status_code == 307 and bare.headers["location"] == web_route.page_path(token)
    for bad in ("../secret.txt", "..%2Fsecret.txt", "nothing.js"):
        answer = client.get(web_route.page_path(token) + bad)
        assert answer.status_code == 404 and "secret" not in answer.text
    unknown = client.get(web_route.page_path("x" * 32))
    assert unknown.status_code == 404 and "open the Export page" in unknown.text


@pytest.mark.parametrize(
    ("browser", "bound", "expected"),
    [
        ("http://192.168.1.20:8501/export", "", "http://192.168.1.20:8501"),
        ("https://studio.school.example/export", "127.0.0.1", "https://studio.school.example"),
        ("http://localhost:8501/export", "127.0.0.1", None),
        ("http://127.0.0.1:8501/export", "10.0.0.7", "http://10.0.0.7:8501"),
    ],
)
def test_the_page_address_is_one_other_machines_can_open(browser, bound, expected, monkeypatch):
    options = {"server.address": bound, "server.port": 8501, "server.baseUrlPath": ""}
    monkeypatch.setattr(share.st, "get_option", lambda name: options[name])
    found = share.app_address(browser)
    assert (found.base if found else None) == expected
    if found is not None:
        assert found.camera == expected.startswith("https")
    png = share.qr_png("http://10.0.0.7:8501/model/abc/")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_format_made_from_one_that_failed_its_check_is_not_made(tiny, tmp_path, monkeypatch):
    """The web page copies model.onnx: when the ONNX model fails its check and is left out,
    the page is not made either, and says why."""
    from dataclasses import replace

    from tl_core.export.formats import onnx_model

    strict = replace(onnx_model.PART.parity, tolerance=-1.0)  # no answer can be this close
    parts = tuple(replace(p, parity=strict) if p.name == "onnx" else p for p in registry.PARTS)
    monkeypatch.setattr(registry, "PARTS", parts)
    out = tmp_path / "m.zip"
    report = export_run(tiny["run_dir"], out, tiny["data"], formats=["onnx", "web"])
    assert report.formats["onnx"].status == "failed" and not report.parity_ok
    web = report.formats["web"]
    assert (web.status, web.reason) == (
        "not built",
        "it is made from ONNX (full precision), which is not offered",
    )
    assert not any(n == "model.onnx" or n.startswith("web/") for n in _names(out))
