"""A logged model works without this repository: from a temporary folder, `mlflow models serve` answers raw uint8
images with class probabilities, and `mlflow.pyfunc` predicts with nothing of optlab imported."""
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
from conftest import SHARED_SUBSET
from servers import free_port, stop_server, wait_healthy

from pipeline.workloads.cifar.data import CIFAR_CLASSES, load_cifar10

PYFUNC = """
import json, sys
import mlflow.pyfunc, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
images = np.array(json.loads(sys.argv[2]), dtype=np.uint8)
probs = np.asarray(model.predict(images))
assert not [name for name in sys.modules if name == "pipeline" or name.startswith("pipeline.")]
print(json.dumps({"probs": probs.tolist(), "classes": model.metadata.metadata["classes"]}))
"""


def _outside(tmp_path, store_uri) -> dict:
    """The environment of a user who has only mlflow and torch: another folder, no PYTHONPATH to this repo."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MLFLOW_RUN_ID")}
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"  # an activated venv: uvicorn on PATH
    return {**env, "MLFLOW_TRACKING_URI": store_uri, "HOME": str(tmp_path), "PATH": path}


def test_a_logged_model_is_served_and_loaded_from_a_folder_without_this_repository(cifar_sweep, store_uri,
                                                                                   tmp_path):
    _, model_name, first, _ = cifar_sweep
    assert first.returncode == 0, first.stderr[-2000:]
    uri = f"models:/{model_name}@champion"
    images = load_cifar10(SHARED_SUBSET, download=False, val_limit=3).test_x
    env = _outside(tmp_path, store_uri)
    loaded = subprocess.run([sys.executable, "-c", PYFUNC, uri, json.dumps(images.tolist())], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["classes"] == list(CIFAR_CLASSES)
    np.testing.assert_allclose(np.array(answer["probs"]).sum(1), 1.0, rtol=1e-5)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_healthy(server, port, seconds=120), "mlflow models serve did not start"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        served = np.array(json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"])
    finally:
        stop_server(server)
    assert served.shape == (3, 10)
    np.testing.assert_allclose(served, np.array(answer["probs"]), rtol=1e-5, atol=1e-6)
