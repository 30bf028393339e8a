"""High availability: two `stemae serve` replicas behind a real nginx on
loopback, a bounded concurrent load from tritonclient, one replica killed
mid-load. Every request must be answered, and answered correctly."""

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
th = pytest.importorskip("tritonclient.http")

from peers import Server, free_port, make_repository  # noqa: E402

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)

CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    upstream stemae {{
        server 127.0.0.1:{a} max_fails=1 fail_timeout=30s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=30s;
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://stemae;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


@pytest.mark.skipif(NGINX is None, reason="needs nginx (Debian package nginx; .ci/run installs it)")
def test_a_replica_killed_under_load_loses_no_request(tmp_path):
    data = make_repository(tmp_path / "models")
    replicas = [Server(tmp_path / "models", log=tmp_path / f"replica{i}.log") for i in range(2)]
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONF.format(tmp=tmp_path, a=replicas[0].port, b=replicas[1].port, port=port))
    user = "" if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0" else "user root;\n"
    conf.write_text(user + conf.read_text())
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    try:
        client = th.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(100):
            try:
                if client.is_server_ready():
                    break
            except Exception:
                time.sleep(0.1)
        from stemae.serve.models import strain_model

        x = data["patterns"]
        want = strain_model("strain", "2", tmp_path / "models" / "strain" / "2")(x)["G"]
        n_threads, per_thread, batch = 6, 20, 8
        answers, errors, done = {}, [], [0]
        lock = threading.Lock()

        def load(t):
            c = th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
            for r in range(per_thread):
                i = (t * per_thread + r) * batch % (len(x) - batch)
                inp = th.InferInput("patterns", [batch, 64, 64], "FP32")
                inp.set_data_from_numpy(x[i:i + batch])
                try:
                    got = c.infer("strain", [inp], outputs=[th.InferRequestedOutput("G")]).as_numpy("G")
                    answers[(t, r)] = (i, got)
                except Exception as e:  # counted, not raised: the test reports every loss
                    errors.append(repr(e))
                with lock:
                    done[0] += 1

        threads = [threading.Thread(target=load, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        total = n_threads * per_thread
        while done[0] < total // 3:
            time.sleep(0.01)
        served_by_killed = replicas[0].metric("stemae_inference_requests_total", outcome="ok")
        replicas[0].proc.send_signal(signal.SIGKILL)  # mid-load, requests in flight on it
        killed_at = done[0]
        for t in threads:
            t.join(300)
        assert not errors, errors[:3]
        assert len(answers) == total
        for i, got in answers.values():
            np.testing.assert_allclose(got, want[i:i + batch], rtol=1e-5, atol=1e-7)
        assert served_by_killed > 0 and killed_at < total
        assert replicas[1].metric("stemae_inference_requests_total", outcome="ok") >= total - killed_at
        # the balancer saw the replica fail and sent those requests to the other one
        assert f"127.0.0.1:{replicas[0].port}" in (tmp_path / "error.log").read_text()
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)
        for r in replicas:
            r.stop(signal.SIGKILL)
