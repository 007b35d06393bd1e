"""deploy/kserve, validated offline: rendered with kustomize, checked for what KServe needs from a
ServingRuntime and an InferenceService, for agreement with the server's own flags, and scanned by checkov.

KServe's kinds are custom resources, so kubernetes-validate has no schema for them (it only warns); the
runtime's container is a plain core/v1 Container, so it is validated strictly inside a Pod instead.
A test that needs a tool skips only when that tool is not installed (`make tools` installs them all).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from server.config import ServerConfig, flag_table
from tests.test_deploy import run, tool  # one copy of the deploy tests' tool runner

ROOT = Path(__file__).resolve().parents[1]
KSERVE = ROOT / "deploy" / "kserve"
CUSTOM_KINDS = {"ServingRuntime", "InferenceService"}
# What KServe accepts in spec.protocolVersions / spec.predictor.model.protocolVersion.
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# Where KServe mounts an InferenceService's storageUri in the predictor container.
KSERVE_MODEL_MOUNT = "/mnt/models"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = run(tool("kubectl"), "kustomize", str(KSERVE))
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("kserve") / "kserve.yaml"
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="module")
def docs(rendered: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered.read_text()) if d]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def runtime_container(docs: list[dict]) -> dict:
    (container,) = one(docs, "ServingRuntime")["spec"]["containers"]
    return container


def flags(container: dict) -> dict[str, str]:
    """--flag=value arguments by flag (the manifests always use the = form)."""
    pairs = [a.split("=", 1) for a in container["args"]]
    assert all(len(p) == 2 for p in pairs), f"expected --flag=value arguments, got {container['args']}"
    return dict(pairs)


# ---------------------------------------------------------------------------------------------- KServe's fields


def test_renders_exactly_a_serving_runtime_and_an_inference_service_in_the_aegen_namespace(docs):
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "NetworkPolicy", "ServingRuntime"]
    assert {d["metadata"]["namespace"] for d in docs} == {"aegen"}
    assert one(docs, "ServingRuntime")["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert one(docs, "InferenceService")["apiVersion"] == "serving.kserve.io/v1beta1"


def test_serving_runtime_declares_its_model_format_and_the_v2_protocols(docs):
    spec = one(docs, "ServingRuntime")["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"]) <= KSERVE_PROTOCOLS
    (model_format,) = spec["supportedModelFormats"]
    assert model_format["name"] == "aegen"
    assert isinstance(model_format["version"], str) and model_format["version"]  # KServe compares strings
    assert model_format["autoSelect"] is True
    assert spec["multiModel"] is False


def test_runtime_container_exposes_http_and_grpc_with_the_grpc_port_named_h2c(docs):
    container = runtime_container(docs)
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor's settings into
    ports = {p["name"]: p for p in container["ports"]}
    assert set(ports) == {"http", "h2c"}
    assert container["ports"][0]["name"] == "http"  # KServe sends REST to the first port
    assert (ports["http"]["containerPort"], ports["h2c"]["containerPort"]) == (8080, 8081)
    assert all(p["protocol"] == "TCP" for p in ports.values())


def test_probes_use_the_v2_health_endpoints_on_the_http_port(docs):
    container = runtime_container(docs)
    http_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    paths = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths["readinessProbe"]["path"] == paths["startupProbe"]["path"] == "/v2/health/ready"
    assert paths["livenessProbe"]["path"] == "/v2/health/live"
    assert all(p["port"] == http_port for p in paths.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too short for load and warm-up"


def test_runtime_container_is_locked_down(docs):
    container = runtime_container(docs)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] >= 10000
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() & resources["limits"].keys()
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    volumes = {v["name"]: v for v in one(docs, "ServingRuntime")["spec"]["volumes"]}
    assert "emptyDir" in volumes[tmp["name"]]


def test_inference_service_uses_the_runtime_with_a_format_and_protocol_it_supports(docs):
    runtime = one(docs, "ServingRuntime")
    service = one(docs, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert service["metadata"]["namespace"] == runtime["metadata"]["namespace"]  # a namespaced runtime
    supported = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in supported
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.fullmatch(r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.*", model["storageUri"]), model["storageUri"]
    # Two ports in one container need a plain Deployment: a Knative Service allows one port.
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


# ---------------------------------------------------------------------------------------------- the server


def test_every_flag_and_variable_the_runtime_passes_is_one_the_server_has(docs):
    container = runtime_container(docs)
    table = flag_table()
    known_flags = {f for f, _, _ in table}
    known_variables = {v for _, v, _ in table}
    assert set(flags(container)) <= known_flags, f"unknown flags {set(flags(container)) - known_flags}"
    variables = {e["name"] for e in container.get("env", [])}
    assert variables <= known_variables, f"unknown variables {variables - known_variables}"


def test_runtime_arguments_parse_with_the_server_and_match_the_ports_kserve_uses(docs):
    container = runtime_container(docs)
    runtime = one(docs, "ServingRuntime")
    config = ServerConfig.from_args(container["args"], environ={e["name"]: e["value"] for e in container["env"]})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.core.repository == KSERVE_MODEL_MOUNT
    assert config.grpc.port == ports["h2c"]
    assert config.http.http_port == ports["http"]
    assert config.metrics.metrics_port == int(runtime["metadata"]["annotations"]["prometheus.kserve.io/port"])
    assert config.metrics.metrics_port not in ports.values()


# ---------------------------------------------------------------------------------------------- validators


def newest_kubernetes() -> str:
    utils = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    return utils.latest_version()


# The InferenceService's predictor fields that KServe copies onto the predictor pod's spec.
POD_FIELDS = ("automountServiceAccountToken", "securityContext", "serviceAccountName", "nodeSelector",
              "tolerations")


@pytest.fixture(scope="module")
def runtime_pod(docs) -> dict:
    """The predictor pod much as KServe builds it: the runtime's containers and volumes (core/v1 types),
    the InferenceService's pod-level fields, KServe's label, and the runtime's annotations (checkov reads
    its skips there)."""
    runtime = one(docs, "ServingRuntime")
    service = one(docs, "InferenceService")
    predictor = service["spec"]["predictor"]
    spec = {"containers": runtime["spec"]["containers"], "volumes": runtime["spec"]["volumes"],
            **{k: predictor[k] for k in POD_FIELDS if k in predictor}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{service['metadata']['name']}-predictor",
                         "namespace": service["metadata"]["namespace"],
                         "labels": {"serving.kserve.io/inferenceservice": service["metadata"]["name"]},
                         "annotations": runtime["metadata"]["annotations"]},
            "spec": copy.deepcopy(spec)}


def test_network_policy_selects_the_predictor_pods_and_opens_exactly_the_runtime_ports(docs, runtime_pod):
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= runtime_pod["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    container = runtime_container(docs)
    opened = {p["port"] for p in rule["ports"]}
    assert opened == {p["containerPort"] for p in container["ports"]} | {int(flags(container)["--metrics-port"])}


def test_predictor_pod_runs_as_non_root_without_a_service_account_token(runtime_pod):
    spec = runtime_pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] >= 10000
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize("version", ["1.27.0", "newest"])
def test_kubernetes_validate_knows_no_kserve_kind_but_validates_the_runtime_container_in_a_pod(
        rendered, runtime_pod, tmp_path, version):
    version = newest_kubernetes() if version == "newest" else version
    validate = tool("kubernetes-validate")
    result = run(validate, "--strict", "--quiet", "-k", version, str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unchecked == CUSTOM_KINDS, f"expected only KServe's kinds to go unchecked, got {unchecked}"
    assert "NetworkPolicy" in rendered.read_text()  # the one core kind of the render was checked

    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(runtime_pod))
    result = run(validate, "--strict", "--quiet", "-k", version, str(tmp_path / "pod.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr

    broken = copy.deepcopy(runtime_pod)
    broken["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/v2/health/ready"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    result = run(validate, "--strict", "--quiet", "-k", version, str(tmp_path / "broken.yaml"))
    assert result.returncode != 0 and "pathh" in result.stdout + result.stderr  # the validator is a real check


@pytest.fixture(scope="module")
def checkov_reports(docs, rendered, runtime_pod, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """checkov over the render and over the runtime's Pod: it has no checks for KServe's kinds, so the
    container's security checks run on the Pod."""
    pod = tmp_path_factory.mktemp("kserve-pod") / "runtime-pod.yaml"
    pod.write_text(yaml.safe_dump_all([runtime_pod, one(docs, "NetworkPolicy")]))  # checkov pairs them up
    reports = {}
    for name, path in (("render", rendered), ("pod", pod)):
        result = run(tool("checkov"), "--framework", "kubernetes", "--output", "json", "--skip-download",
                     "--file", str(path))
        assert result.returncode in (0, 1), result.stderr  # 1: some check failed; anything else: checkov broke
        report = json.loads(result.stdout)
        reports[name] = report[0] if isinstance(report, list) else report
    return reports


def test_checkov_finds_no_failed_checks_in_the_runtime_pod(checkov_reports):
    for name, report in checkov_reports.items():
        summary = report.get("summary", report)  # with nothing it has checks for, checkov prints the summary only
        assert summary["parsing_errors"] == 0, name
        assert summary["failed"] == 0, (name, [
            f"{c['check_id']} {c['check_name']}" for c in report.get("results", {}).get("failed_checks", [])])
    pod = checkov_reports["pod"]
    assert pod["summary"]["passed"] > 50, pod["summary"]
    for check in pod["results"]["skipped_checks"]:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 30, f"{check['check_id']} is skipped without a reason"
