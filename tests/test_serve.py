"""`stemae serve` as a real process on loopback, driven by tritonclient's
HTTP client (JSON and binary tensors) and by raw HTTP for bad requests."""

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
th = pytest.importorskip("tritonclient.http")

from peers import Server, make_repository  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("models")
    return path, make_repository(path)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    token = tmp_path_factory.mktemp("secret") / "token"
    token.write_text(TOKEN + "\n")
    s = Server(repo[0], "--token-file", str(token), "--max-batch", "64", "--max-body-mb", "2",
               "--max-delay-ms", "50", log=tmp_path_factory.mktemp("log") / "serve.log")
    yield s
    assert s.stop() in (0, -signal.SIGTERM)  # uvicorn ends by raising the signal it handled


def _infer(client, model, x, binary, outputs=None, **kw):
    name = "windows" if model == "domains" else "patterns"
    i = th.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    asked = None if outputs is None else [th.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    return client.infer(model, [i], outputs=asked, headers=dict(AUTH), **kw)


def _in_process(repo, name, version="1"):
    from stemae.serve.models import domains_model, strain_model

    load = domains_model if name == "domains" else strain_model
    return load(name, version, repo[0] / name / version)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", ["strain", "xcorr"])
def test_strain_models_answer_as_in_process(server, repo, name, binary):
    client = th.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name, headers=dict(AUTH))
    meta = client.get_model_metadata(name, headers=dict(AUTH))
    assert meta["inputs"] == [{"name": "patterns", "datatype": "FP32", "shape": [-1, 64, 64]}]
    x = repo[1]["patterns"][:24]
    want = _in_process(repo, name)(x)
    got = _infer(client, name, x, binary)
    assert {o["name"] for o in meta["outputs"]} == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(got.as_numpy(k), v, rtol=1e-5, atol=1e-7, err_msg=k)
    assert got.as_numpy("valid").all()


def test_strain_equals_the_offline_map(server, repo):
    """The served CC-ST-AE gives the offline per-batch step's lattices (after
    relabelling to the reference) for the whole scan; the offline map then
    pools the disks' centroid offsets over scan neighbours (the server has
    no scan)."""
    from stemae.strain import ccstae
    from stemae.strain.lattice import align_to_reference

    client = th.InferenceServerClient(server.url)
    x = repo[1]["patterns"]
    model = ccstae.load(repo[0] / "strain" / "1")
    offline = ccstae.PredictStep(model)(x)
    got = np.concatenate([_infer(client, "strain", x[i:i + 48], True, ["G", "phase"]).as_numpy("G")
                          for i in range(0, len(x), 48)])
    phase = offline["phase"].reshape(-1)
    bases = model.G.detach().double().numpy()
    want = align_to_reference(offline["G"].reshape(-1, 2, 2), bases[phase])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_domain_windows_answer_as_the_map_step(server, repo):
    """The served windows give what the map step gives them, except that the
    step then pools faint windows over their grid neighbours (the server
    has no grid): its order is the served one after
    :func:`~stemae.domains.windows.pooled_order`, and both hold windows of
    fewer than two periods unordered."""
    from stemae.domains import model as ae
    from stemae.domains.run import ORDER_THRESHOLD, FrameStep
    from stemae.domains.segment import assign_types
    from stemae.domains.windows import (lines_are_not_stripes, pooled_order, window_ffts, window_starts,
                                        window_stripes)

    images = repo[1]["images"]
    dm, cfg = ae.load_model(repo[0] / "domains" / "1")
    w, stride = cfg["window"], cfg["stride"]
    maps = FrameStep(dm, images.shape[1:], w, stride, cfg["crop"], types=cfg["type_angles"])(images[:1])
    spectra, _ = window_ffts(images[:1], w, stride, cfg["crop"])
    stripes = window_stripes(spectra, w)
    single, period = stripes["order"], stripes["period"]
    np.testing.assert_array_equal(lines_are_not_stripes(pooled_order(spectra, single, w, stride), period, w),
                                  maps["order"])
    single = lines_are_not_stripes(single, period, w)
    maps["order"] = single
    maps["label"] = assign_types(single, maps["orientation"], ORDER_THRESHOLD, cfg["type_angles"])
    ys, xs = window_starts(256, w, stride), window_starts(256, w, stride)
    windows = np.stack([images[0, y:y + w, x:x + w] for y in ys for x in xs]).astype(np.float32)
    client = th.InferenceServerClient(server.url)
    parts = [_infer(client, "domains", windows[i:i + 32], True) for i in range(0, len(windows), 32)]  # body limit
    for k in ("content", "order", "orientation", "period", "label"):
        got = np.concatenate([p.as_numpy(k) for p in parts])
        np.testing.assert_allclose(got, maps[k][0].reshape(got.shape), rtol=1e-4, atol=1e-5, err_msg=k)
    assert len(np.unique(got)) >= 2  # the labels show more than one type


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, repo):
    x = repo[1]["patterns"][:64]
    want = _in_process(repo, "strain")(x)["G"]
    before = (server.metric("stemae_batch_items_count", model="strain", version="2"),
              server.metric("stemae_batch_items_sum", model="strain", version="2"))
    client = th.InferenceServerClient(server.url, concurrency=16)
    futures = []
    for i in range(16):
        inp = th.InferInput("patterns", [4, 64, 64], "FP32")
        inp.set_data_from_numpy(x[4 * i:4 * i + 4])
        futures.append(client.async_infer("strain", [inp], model_version="2", headers=dict(AUTH),
                                          outputs=[th.InferRequestedOutput("G")]))
    for i, f in enumerate(futures):
        np.testing.assert_allclose(f.get_result().as_numpy("G"), want[4 * i:4 * i + 4], rtol=1e-5, atol=1e-7)
    calls = server.metric("stemae_batch_items_count", model="strain", version="2") - before[0]
    items = server.metric("stemae_batch_items_sum", model="strain", version="2") - before[1]
    assert items == 64
    assert calls < 16  # some requests shared a step call
    assert server.metric("stemae_inference_requests_total", model="strain", version="2", outcome="ok") >= 16


def _post(server, path, body=b"", headers=None):
    return httpx.post(f"http://{server.url}{path}", content=body, headers={**AUTH, **(headers or {})}, timeout=30)


def _json_request(x, name="patterns", datatype="FP32"):
    return json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}]}).encode()


def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(server, repo):
    x = repo[1]["patterns"][:2]
    infer = "/v2/models/strain/infer"
    cases = {
        "not JSON": (infer, b"{not json", {}, 400, "not valid JSON"),
        "no inputs": (infer, b'{"outputs": []}', {}, 400, "'inputs'"),
        "wrong input": (infer, _json_request(x, name="images"), {}, 400, "one input, 'patterns'"),
        "wrong datatype": (infer, _json_request(x, datatype="FP64"), {}, 400, "is FP32"),
        "wrong shape": (infer, _json_request(x[:, :32]), {}, 400, "shape [-1, 64, 64]"),
        "too few values": (infer, json.dumps({"inputs": [{"name": "patterns", "shape": [2, 64, 64],
                                                           "datatype": "FP32", "data": [1.0]}]}).encode(),
                           {}, 400, "values for shape"),
        "binary size": (infer, json.dumps({"inputs": [{"name": "patterns", "shape": [2, 64, 64], "datatype": "FP32",
                                                       "parameters": {"binary_data_size": 100}}]}).encode()
                        + bytes(100), {"Inference-Header-Content-Length": None}, 400, "binary_data_size"),
        "batch over the limit": (infer, _json_request(np.zeros((65, 64, 64), np.float32)), {}, 413, "limit"),
        "unknown model": ("/v2/models/nothing/infer", _json_request(x), {}, 404, "no model 'nothing'"),
        "unknown version": ("/v2/models/strain/versions/9/infer", _json_request(x), {}, 404, "no version '9'"),
        "unknown output": (infer, json.dumps({**json.loads(_json_request(x)), "outputs": [{"name": "nope"}]}).encode(),
                           {}, 400, "no output 'nope'"),
    }
    for what, (path, body, headers, status, message) in cases.items():
        if "Inference-Header-Content-Length" in headers:
            headers = {"Inference-Header-Content-Length": str(len(body) - 100)}
        r = _post(server, path, body, headers)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert message in r.json()["error"], (what, r.text)
        assert r.headers["X-Request-ID"]
    big = bytes(3 * 2**20)  # 3 MiB against a 2 MiB limit
    assert _post(server, infer, big).status_code == 413
    r = httpx.post(f"http://{server.url}{infer}", content=_json_request(x), timeout=30)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]
    r = httpx.get(f"http://{server.url}/v2/models/strain", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(f"http://{server.url}/v2/health/ready").status_code == 200  # probes need no token
    r = _post(server, infer, _json_request(x), {"X-Request-ID": "abc123"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "abc123"
    out = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
    np.testing.assert_allclose(out["G"], _in_process(repo, "strain")(x)["G"], rtol=1e-5)
    assert server.metric("stemae_inference_requests_total", model="strain", outcome="rejected") >= 6
    assert server.metric("stemae_http_requests_total", code="401") >= 2


def test_sigterm_finishes_the_requests_in_flight(repo, tmp_path):
    s = Server(repo[0], "--max-batch", "2048", log=tmp_path / "serve.log")
    x = np.tile(repo[1]["patterns"], (8, 1, 1))  # 1152 patterns: seconds of work
    result = {}

    def call():
        client = th.InferenceServerClient(s.url, network_timeout=120)
        inp = th.InferInput("patterns", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result["G"] = client.infer("strain", [inp], outputs=[th.InferRequestedOutput("G")]).as_numpy("G")

    t = threading.Thread(target=call)
    t.start()
    while t.is_alive() and s.metric("stemae_inference_in_flight") < 1:
        t.join(0.02)
    assert t.is_alive()  # the request is being mapped
    assert s.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    t.join(60)
    assert result["G"].shape == (1152, 2, 2) and np.isfinite(result["G"]).all()
    assert b'"event": "stopped"' in (tmp_path / "serve.log").read_bytes()


def test_a_bad_repository_is_refused_before_serving(tmp_path):
    exe = Path(sys.executable).parent / "stemae"
    r = subprocess.run([str(exe), "serve", str(tmp_path / "none")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such model repository" in r.stderr
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    r = subprocess.run([str(exe), "serve", str(tmp_path / "repo")], capture_output=True, text=True)
    assert r.returncode == 2 and "not a stemae model bundle" in r.stderr
