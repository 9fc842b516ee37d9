"""The Kubernetes manifest for serving an export (no cluster runs here: it is parsed and cross-checked)."""

from __future__ import annotations

from pathlib import Path

import yaml

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes.yaml"
REST_PORT = 8501   # TF Serving's REST port, kcnn serve's default


def documents() -> dict[str, dict]:
    parsed = [document for document in yaml.safe_load_all(MANIFEST.read_text()) if document]
    return {document["kind"]: document for document in parsed}


def test_deployment_and_service_select_the_same_pods_on_the_rest_port():
    found = documents()
    assert set(found) == {"Deployment", "Service"}
    deployment, service = found["Deployment"], found["Service"]
    assert deployment["apiVersion"] == "apps/v1" and service["apiVersion"] == "v1"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()

    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["rest"] == REST_PORT
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


def test_tf_serving_serves_the_mounted_export_under_the_name_the_probes_ask_for():
    deployment = documents()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    image, tag = container["image"].rsplit(":", 1)
    assert image == "tensorflow/serving" and tag[0].isdigit()     # a pinned release, not "latest"
    # The image's entry point serves $MODEL_BASE_PATH/$MODEL_NAME as $MODEL_NAME on the REST port 8501.
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    name = environment["MODEL_NAME"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": f"/v1/models/{name}", "port": "rest"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"] for volume in pod["volumes"]}
    assert f"{environment.get('MODEL_BASE_PATH', '/models')}/{name}" in mounts.values() and set(mounts) <= volumes
    assert not any(argument.startswith(("--model_name", "--model_base_path", "--rest_api_port"))
                   for argument in container.get("args", []))   # set by the entry point already
