"""Real peers on loopback for the tests and benchmarks: a model repository
of every bundle kind made with the simulators, `stemae serve` processes,
and LiberTEM-live's Merlin detector simulator."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

#: Where this environment's commands are (stemae, libertem-live-mib-sim).
BIN = Path(sys.executable).parent


def make_repository(repo: Path) -> dict:
    """``repo/strain/{1,2}`` (a CC-ST-AE, two versions), ``repo/xcorr/1`` (a
    classical state) and ``repo/domains/1`` from simulated data; returns
    the data: ``patterns`` (144, 64, 64) and ``images`` (2, 256, 256)."""
    from stemae.domains import model as ae
    from stemae.domains.run import map_domains
    from stemae.simulate import heterostructure
    from stemae.simulate.domains import simulate_domain_images
    from stemae.strain import ccstae, classical

    sim = heterostructure((12, 12), (64, 64), dose=1e5, seed=2)
    model, _ = ccstae.fit(sim.data, n_classes=2, epochs=1, n_train=144, seed=0)
    ccstae.save(model, repo / "strain" / "1")
    shutil.copytree(repo / "strain" / "1", repo / "strain" / "2")
    classical.save_state(classical.fit_state(sim.data, method="xcorr"), repo / "xcorr" / "1", sim.data.shape[2:])
    images = simulate_domain_images(2, shape=(256, 256), n_regions=3, seed=1).images
    _, info, domains = map_domains(images, epochs=2, seed=0)
    ae.save_model(repo / "domains" / "1", domains, {"window": info["window"], "stride": info["stride"],
                                                    "type_angles": info["type_angles"]})
    return {"patterns": sim.data.reshape(-1, 64, 64).astype(np.float32), "images": images}


def free_port(n: int = 1):
    """A free loopback port, or ``n`` distinct ones (a list), drawn below the
    kernel's ephemeral range (where outgoing connections take their ports,
    so a server started a moment later cannot lose its port to one)."""
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports[0] if n == 1 else ports


class Server:
    """A `stemae serve` process on loopback, ready when constructed."""

    def __init__(self, repo: Path, *args: str, env: dict | None = None, log: Path | None = None,
                 timeout: float = 120.0):
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        exe = BIN / "stemae"
        self.log = open(log or os.devnull, "wb")
        self.proc = subprocess.Popen([str(exe), "serve", str(repo), "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stemae serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("stemae serve did not become ready")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def metric(self, name: str, **labels) -> float:
        """The sum of a Prometheus sample over the series matching ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _wait_for(proc: subprocess.Popen, port: int, what: str, timeout: float = 60.0):
    """Until ``proc`` listens on ``port``; an error if it exits first or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


class _DetectorSim:
    """A LiberTEM-live detector simulator process (``proc``, its own process
    group) that ``stemae live --detector`` :attr:`detector` reads from at
    ``data`` (frames) and ``control`` (commands)."""

    detector = ""

    def live(self, *args, **kw):
        return subprocess.Popen([str(BIN / "stemae"), "live", "--detector", self.detector, "--port", str(self.data),
                                 "--api-port", str(self.control), "--no-progress", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kw)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the simulator forks its servers
        except ProcessLookupError:  # it had ended
            pass
        self.proc.wait(10)


class MerlinSim(_DetectorSim):
    """LiberTEM-live's Merlin simulator on loopback, replaying ``hdr``."""

    detector = "merlin"

    def __init__(self, hdr: Path, dwell_us: int | None = None):
        self.data, self.control, self.trigger = free_port(3)
        args = [str(BIN / "libertem-live-mib-sim"), str(hdr), "--host", "127.0.0.1", "--data-port", str(self.data),
                "--control-port", str(self.control), "--trigger-port", str(self.trigger)]
        if dwell_us:
            args += ["--dwelltime", str(dwell_us)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # its own group: stop() ends its children too
        _wait_for(self.proc, self.control, "the Merlin simulator")


class DectrisSim(_DetectorSim):
    """LiberTEM-live's DECTRIS simulator on loopback (REST API and ZeroMQ
    stream), replaying a recorded stream (``tests/dectris_writer.py``)."""

    detector = "dectris"

    def __init__(self, recording: Path, timeout: float = 60.0):
        # Given a ZeroMQ port, the simulator (LiberTEM-live 0.3) binds it several times over and sometimes
        # fails ("should be possible to bind the zmq socket"); on a port of its own choosing it does not,
        # and it logs the port it streams on.
        import re
        import tempfile

        self.control = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="dectris-sim-", suffix=".log")
        self.proc = subprocess.Popen([str(BIN / "libertem-live-dectris-sim"), str(recording), "--port",
                                      str(self.control), "--zmqport", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own group: stop() ends its children too
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(rb"RustedReplay listening on tcp://127.0.0.1:(\d+)", Path(self.log.name).read_bytes())
            if found or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not found:
            self.stop()
            raise RuntimeError(f"the DECTRIS simulator did not start: {Path(self.log.name).read_text()[-2000:]}")
        self.data = int(found.group(1))
        _wait_for(self.proc, self.control, "the DECTRIS simulator")

    def stop(self):
        super().stop()
        self.log.close()
