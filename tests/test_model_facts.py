"""The model facts the Model and Train pages show come from a measured table, without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tl_core.models import catalog
from tl_core.models.facts import _table, build_model_info, model_info

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("key", [spec.key for spec in catalog.CATALOG])
def test_the_table_matches_a_real_build_for_every_catalog_model(key: str) -> None:
    assert key in _table(), "run `python -m tl_core.models.facts` after changing the catalog"
    for num_classes in (3, 100):
        assert model_info(key, num_classes) == build_model_info(key, num_classes)


def test_a_model_outside_the_table_is_built() -> None:
    _table()  # loaded
    table = dict(_table())
    try:
        _table().pop("efficientnet_lite0")
        info = model_info("efficientnet_lite0", 5)
    finally:
        _table().update(table)
    assert info == build_model_info("efficientnet_lite0", 5)


PAGES_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from helpers import app_test
from tl_core.data.dataset import import_folder
from tl_core.runs.store import Store

ws = Path(sys.argv[1])
data = import_folder(Path("assets/demo/fashion_mnist"), ws.parent / "data-1")
store = Store(ws)
project = store.create_project()
store.set_data_dir(project.id, data.root)
for page in ("app_pages/data.py", "app_pages/model.py", "app_pages/train.py"):
    at = app_test(page, project.id)
    assert not at.exception, at.exception
    print(page, "torch" in sys.modules, "timm" in sys.modules)
"""


def test_the_data_model_and_train_pages_load_no_torch_in_the_web_server(tmp_path) -> None:
    env = {
        "TL_STUDIO_HOME": str(tmp_path / "ws"),
        "TL_STUDIO_SERVE": "0",  # no queue: nothing runs beside the pages
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", PAGES_SCRIPT, str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**__import__("os").environ, **env},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-3:]
    assert lines == [f"app_pages/{p}.py False False" for p in ("data", "model", "train")]
