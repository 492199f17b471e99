"""What a user sees: the link a sweep prints, opened in a real browser (headless Chromium) on `mlflow ui`, lists
the sweep's child runs and charts val_acc; a tune's two links show every optimizer and the verdict's metric, and
the trials. Skipped without Chromium, except in CI (OPTLAB_REQUIRE_CHROMIUM=1)."""
import os

import pytest
from browser import chromium, render, start_ui
from conftest import cli, new_experiment
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


def test_a_tunes_two_links_show_every_optimizer_with_its_seed_mean_and_the_trials(ui, store_uri, tmp_path):
    done = cli("tune", "--optimizers", "adam,sgd,nesterov", "--functions", "rosenbrock", "--trials", "2", "--seeds",
               "2", "--steps", "50", "--starts", "8", "--experiment", new_experiment(),
               env={"MLFLOW_TRACKING_URI": store_uri})
    assert done.returncode == 0, done.stderr[-2000:]
    links = {line.split(":", 1)[0]: line.rsplit(": ", 1)[1].split(" ")[0].replace("http://127.0.0.1:5000", ui)
             for line in done.stdout.splitlines() if line.startswith(("this tune in the MLflow UI", "its trials"))}
    verdict_view = next(link for name, link in links.items() if name.startswith("this tune"))
    dom = render(verdict_view, screenshot=tmp_path / "verdict.png")
    for optimizer in ("adam", "sgd", "nesterov"):
        assert f"{optimizer}-rosenbrock" in dom, f"{optimizer} is not on the verdict view"
    assert "seed_mean" in dom and "share key" not in dom
    dom = render(links["its trials (lr against score, per optimizer)"], screenshot=tmp_path / "trials.png")
    assert all(optimizer in dom for optimizer in ("adam", "sgd", "nesterov")) and "score" in dom
    assert "Against the searched setting" in dom and 'title="lr vs. score"' in dom  # the scatter chart, drawn
