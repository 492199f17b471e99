"""What a user sees: the link a sweep prints, opened in a real browser (headless Chromium) on `mlflow ui`, lists
the sweep's child runs and charts val_acc. Skipped without Chromium, except in CI (OPTLAB_REQUIRE_CHROMIUM=1)."""
import os

import pytest
from browser import chromium, render, start_ui
from servers import free_port, stop_server


@pytest.fixture(scope="module")
def ui(store_uri):
    """`mlflow ui` on the session store: its base URL."""
    if chromium() is None:
        if os.environ.get("OPTLAB_REQUIRE_CHROMIUM") == "1":
            pytest.fail("OPTLAB_REQUIRE_CHROMIUM=1 but Chromium is not installed (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    port = free_port()
    process = start_ui(store_uri, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(process)


def test_the_printed_link_opens_the_sweep_with_its_children_and_a_val_acc_chart(ui, cifar_sweep, tmp_path):
    _, _, first, _ = cifar_sweep
    assert first.returncode == 0, first.stderr[-2000:]
    line = next(line for line in first.stdout.splitlines() if line.startswith("this sweep in the MLflow UI: "))
    link = line.split(": ", 1)[1].split(" ")[0].replace("http://127.0.0.1:5000", ui)
    dom = render(link, screenshot=tmp_path / "sweep.png")
    for child in ("momentum-tiny_cnn", "adam-tiny_cnn", "adadelta-tiny_cnn"):
        assert child in dom, f"{child} is not listed"
    assert "val_acc" in dom and "Model training" in dom and "share key" not in dom
    assert (tmp_path / "sweep.png").stat().st_size > 20_000
