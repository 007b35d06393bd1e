"""Deployment artefacts, validated offline: no cluster, no container engine, no network.

The kustomize overlays are rendered with `kubectl kustomize`, validated against the Kubernetes schemas
(1.27 and the newest that kubernetes-validate ships) and scanned by checkov; the Dockerfiles are linted
by hadolint and checkov; the dashboard's PromQL is checked by promtool. Then the manifests are checked
against the server itself: its configuration (server.config), its health service names, and the metric
names a real server exposes. A test that needs a tool skips only when that tool is not installed
(`make tools` installs them all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.parse
import zipfile
from pathlib import Path

import grpc
import pytest
import yaml
from packaging.requirements import Requirement

from client import loadtest
from protos.aegen.v1 import generator_pb2, generator_pb2_grpc
from server.config import HEALTH_SERVICES, ServerConfig, env_var, flag_table
from tests.plugins.server import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = ROOT / ".venv" / "bin"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
DOCKERFILES = ("Dockerfile", "Dockerfile.cpu", "Dockerfile.models")
GENERATOR_SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
SERVER_OVERLAYS = ("gpu", "cpu")
# Each optional component rendered on top of an overlay, as a user would add it.
COMPONENT_EXAMPLES = {"gpu-servicemonitor": ("overlays/gpu", "components/servicemonitor"),
                      "cpu-model-pvc": ("overlays/cpu", "components/model-pvc")}
# What gets rendered: the two server overlays, the component examples and the load-test Job. Only the
# ServiceMonitor is a custom resource without a schema in kubernetes-validate.
RENDERS = (*SERVER_OVERLAYS, *COMPONENT_EXAMPLES, "loadtest")
CUSTOM_KINDS = {"ServiceMonitor"}
# Labels that Prometheus' Kubernetes service discovery adds; the server cannot expose them itself.
SCRAPE_LABELS = {"pod", "namespace", "le"}


def tool(name: str) -> str:
    """The path of a command-line tool: the project's venv first, then PATH. Skips the test if absent."""
    candidates = [CHECKOV] if name == "checkov" else [BIN / name]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (run `make tools`)")
    return found


def run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE", **(env or {})})


# ---------------------------------------------------------------------------------------------- rendering


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every render written to a YAML file, by name."""
    kubectl = tool("kubectl")
    out = tmp_path_factory.mktemp("rendered")
    sources = {"gpu": K8S / "overlays" / "gpu", "cpu": K8S / "overlays" / "cpu", "loadtest": K8S / "loadtest"}
    for name, (overlay, component) in COMPONENT_EXAMPLES.items():
        # kustomize takes only relative paths, so the example points back into the repository.
        sources[name] = out / f"{name}-kustomization"
        sources[name].mkdir()
        (sources[name] / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(K8S / overlay, sources[name])],
            "components": [os.path.relpath(K8S / component, sources[name])],
        }))
    files = {}
    for name in RENDERS:
        result = run(kubectl, "kustomize", str(sources[name]))
        assert result.returncode == 0, f"kubectl kustomize {sources[name]}:\n{result.stderr}"
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config_map_env(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "Job")]


def server_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server")


def test_every_overlay_renders_the_whole_service(rendered):
    expected = {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                "HorizontalPodAutoscaler", "NetworkPolicy"}
    for name in SERVER_OVERLAYS:
        kinds = [d["kind"] for d in documents(rendered[name])]
        assert expected <= set(kinds), f"{name}: missing {expected - set(kinds)}"
        assert kinds.count("Service") == 2, f"{name}: expected the ClusterIP and the headless Service"
    assert {d["kind"] for d in documents(rendered["loadtest"])} == {"Job", "NetworkPolicy"}
    for name in RENDERS:  # components included: their objects must land beside the Deployment
        namespaces = {d["metadata"].get("namespace") for d in documents(rendered[name]) if d["kind"] != "Namespace"}
        assert namespaces == {"aegen"}, name
    assert "ServiceMonitor" in {d["kind"] for d in documents(rendered["gpu-servicemonitor"])}


# ---------------------------------------------------------------------------------------------- schemas


def newest_kubernetes() -> str:
    utils = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    return utils.latest_version()


@pytest.mark.parametrize("version", ["1.27.0", "newest"])
def test_rendered_manifests_pass_strict_schema_validation(rendered, version):
    version = newest_kubernetes() if version == "newest" else version
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *map(str, rendered.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown kinds only warn: make sure nothing but the custom resources went unchecked.
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unchecked <= CUSTOM_KINDS, f"no schema for {unchecked - CUSTOM_KINDS} in Kubernetes {version}"


def test_strict_validation_rejects_a_misspelt_field(rendered, tmp_path):
    """The validator is a real check: a field Kubernetes does not know fails it."""
    broken = rendered["cpu"].read_text().replace("terminationGracePeriodSeconds:", "terminationGracePeriod:")
    (tmp_path / "broken.yaml").write_text(broken)
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.27.0", str(tmp_path / "broken.yaml"))
    assert result.returncode != 0
    assert "terminationGracePeriod" in result.stdout + result.stderr


def test_servicemonitor_scrapes_the_metrics_port_of_the_service(rendered):
    docs = documents(rendered["gpu-servicemonitor"])
    monitor = one(docs, "ServiceMonitor")
    selected = [s for s in docs if s["kind"] == "Service"
                and monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    port_names = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    # With the operator scraping, the pods' annotation is off, or every replica would be scraped twice.
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"


def test_model_pvc_component_replaces_the_model_image_copy_with_a_read_only_claim(rendered):
    docs = documents(rendered["cpu-model-pvc"])
    claim = one(docs, "PersistentVolumeClaim")
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert "emptyDir" not in volume
    mount = next(m for m in server_container(deployment)["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == ServerConfig.from_args([], environ=config_map_env(docs)).core.repository
    assert claim["metadata"]["namespace"] == deployment["metadata"]["namespace"]


# ---------------------------------------------------------------------------------------------- checkov


@pytest.fixture(scope="session")
def checkov_reports(rendered) -> list[dict]:
    """One checkov run over every render and every Dockerfile (it takes seconds to start)."""
    files = [*map(str, rendered.values()), *(str(DEPLOY / f) for f in DOCKERFILES)]
    command = [tool("checkov"), "--framework", "kubernetes", "dockerfile", "--output", "json", "--skip-download"]
    for f in files:
        command += ["--file", f]
    result = run(*command)
    assert result.returncode in (0, 1), result.stderr  # 1: some check failed; anything else: checkov broke
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_finds_no_failed_checks(checkov_reports):
    assert {r["check_type"] for r in checkov_reports} == {"kubernetes", "dockerfile"}
    failed = [f"{c['check_id']} {c['check_name']} in {c['file_path']} ({c['resource']})"
              for r in checkov_reports for c in r["results"]["failed_checks"]]
    assert failed == []
    for report in checkov_reports:
        assert report["summary"]["passed"] > 50, report["summary"]
        assert report["summary"]["parsing_errors"] == 0


def test_every_checkov_skip_gives_its_reason(checkov_reports):
    skipped = [c for r in checkov_reports for c in r["results"]["skipped_checks"]]
    assert skipped, "expected the documented image-digest skips"
    for check in skipped:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 30, f"{check['check_id']} in {check['file_path']} is skipped without a reason"


# ---------------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_has_nothing_to_say_about(dockerfile):
    result = run(tool("hadolint"), "--no-color", str(DEPLOY / dockerfile))
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_flags_an_unpinned_base_image(tmp_path):
    """hadolint is a real check here: an unpinned, root-running image fails it."""
    (tmp_path / "Dockerfile").write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y python3\n")
    result = run(tool("hadolint"), "--no-color", str(tmp_path / "Dockerfile"))
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def dockerfile_text(name: str) -> str:
    """The Dockerfile with its line continuations joined."""
    return (DEPLOY / name).read_text().replace("\\\n", " ")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_server_image_runs_aegen_serve_as_non_root_with_server_defaults(dockerfile):
    text = dockerfile_text(dockerfile)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["aegen-serve"] == "server.app:main"
    assert re.search(r'^ENTRYPOINT \["aegen-serve"\]$', text, re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    # The default target is the last stage, and it bakes no models.
    assert re.findall(r"^FROM (\S+) AS (\S+)$", text, re.MULTILINE)[-1] == ("runtime", "server")
    env = dict(re.findall(r"\b(AEGEN_[A-Z_]+)=(\S+)", text))
    config = ServerConfig.from_args([], environ=env)  # raises ConfigError on a name or value it rejects
    assert set(env) <= {variable for _, variable, _ in flag_table()}
    defaults = ServerConfig()
    assert (config.grpc.port, config.http.http_port, config.metrics.metrics_port, config.core.repository) == (
        defaults.grpc.port, defaults.http.http_port, defaults.metrics.metrics_port, defaults.core.repository)
    assert f"EXPOSE {config.grpc.port} {config.http.http_port} {config.metrics.metrics_port}" in text


def locked(requirements: str) -> dict[str, str]:
    """name → version of a hash-locked requirements file; every entry must carry a hash."""
    entries = {}
    for line in (DEPLOY / "requirements" / requirements).read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.startswith("#"):
            assert "--hash=sha256:" in line, f"{requirements}: {line.split()[0]} has no hash"
            requirement = Requirement(line.split()[0])
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{requirements}: {requirement} is not pinned"
            entries[requirement.name] = spec.version
    return entries


@pytest.mark.parametrize("requirements, extra", [("serve-cpu.txt", "serve"), ("serve-gpu.txt", "serve-gpu")])
def test_image_locks_pin_exactly_the_serving_extra_and_no_torch(requirements, extra):
    pins = locked(requirements)
    wanted = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())
              ["project"]["optional-dependencies"][extra]]
    for requirement in wanted:
        assert requirement.name in pins, f"{requirements} misses {requirement.name} of the [{extra}] extra"
        assert requirement.specifier.contains(pins[requirement.name]), (requirement, pins[requirement.name])
    assert not {"torch", "onnx", "matplotlib", "safetensors"} & set(pins)
    if extra == "serve-gpu":
        assert pins["onnxruntime-gpu"] == "1.31.1"


def test_serving_wheel_builds_from_exactly_what_the_images_copy(tmp_path):
    """The builder stage's `pip wheel --no-build-isolation .`, on the files its COPY lines bring in."""
    text = dockerfile_text("Dockerfile.cpu")
    builder = text[text.index(" AS builder"):text.index(" AS runtime")]
    context = tmp_path / "context"
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", builder, re.MULTILINE):
        for source in sources.split():
            copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            copy(ROOT / source, context / source)
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
                 "--wheel-dir", str(tmp_path / "wheels"), str(context))
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("aegen-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"server/app.py", "client/loadtest/cli.py", "export/repository.py", "protos/aegen/v1/generator_pb2.py"} <= names
    assert not any(n.startswith("training/") for n in names), "the serving image carries no training code"
    assert "aegen-serve = server.app:main" in entry_points
    assert "aegen-loadtest = client.loadtest.cli:main" in entry_points


def test_dockerignore_keeps_every_path_the_images_copy():
    kept = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")]
    for dockerfile in DOCKERFILES:
        for sources in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile_text(dockerfile), re.MULTILINE):
            for source in sources.split():
                source = source.replace("${MODEL_REPOSITORY}", "model-repository").rstrip("/")
                assert any(source == k or source.startswith(k + "/") for k in kept), (dockerfile, source)


# ---------------------------------------------------------------------------------------------- pods


def test_every_pod_is_locked_down(rendered):
    for name in (*SERVER_OVERLAYS, "loadtest"):
        for where, spec in pod_specs(documents(rendered[name])):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, where
            assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
            assert spec["automountServiceAccountToken"] is False, where
            tmp_volumes = {m["name"] for c in spec["containers"] for m in c["volumeMounts"]
                           if m["mountPath"] == "/tmp"}
            assert tmp_volumes and all("emptyDir" in v for v in spec["volumes"] if v["name"] in tmp_volumes), where
            for container in spec.get("initContainers", []) + spec["containers"]:
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, (where, container["name"])
                assert security["allowPrivilegeEscalation"] is False, (where, container["name"])
                assert security["capabilities"]["drop"] == ["ALL"], (where, container["name"])
                resources = container["resources"]
                assert {"cpu", "memory"} <= resources["requests"].keys() & resources["limits"].keys(), where


def test_gpu_overlay_puts_one_gpu_replica_on_gpu_nodes_and_cpu_overlay_none(rendered):
    gpu_docs = documents(rendered["gpu"])
    gpu_pod = one(gpu_docs, "Deployment")["spec"]["template"]["spec"]
    resources = server_container(one(gpu_docs, "Deployment"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    assert config_map_env(gpu_docs)["AEGEN_DEVICE"] == "cuda"
    assert "cuda" in server_container(one(gpu_docs, "Deployment"))["image"]

    cpu_docs = documents(rendered["cpu"])
    cpu_pod = one(cpu_docs, "Deployment")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in rendered["cpu"].read_text()
    assert "nodeSelector" not in cpu_pod and "tolerations" not in cpu_pod
    assert config_map_env(cpu_docs)["AEGEN_DEVICE"] == "cpu"


def test_models_are_copied_from_the_model_image_into_the_directory_the_server_reads(rendered):
    docs = documents(rendered["cpu"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    volume = next(v for v in pod["volumes"] if v["name"] == init["volumeMounts"][0]["name"])
    assert "emptyDir" in volume
    assert init["command"][-1].rstrip("/") == init["volumeMounts"][0]["mountPath"]
    server_mount = next(m for m in server_container(one(docs, "Deployment"))["volumeMounts"]
                        if m["name"] == volume["name"])
    assert server_mount["mountPath"] == ServerConfig.from_args([], environ=config_map_env(docs)).core.repository
    assert "aegen-models" in init["image"]


# ---------------------------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_manifests_agree_with_the_server_configuration(rendered, overlay):
    docs = documents(rendered[overlay])
    env = config_map_env(docs)
    assert set(env) <= {variable for _, variable, _ in flag_table()}, "a ConfigMap key the server does not read"
    config = ServerConfig.from_args([], environ=env)  # the values are ones the server accepts
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(deployment)
    assert container["envFrom"] == [{"configMapRef": {"name": one(docs, "ConfigMap")["metadata"]["name"]}}]
    assert "args" not in container and "command" not in container  # the image's aegen-serve, flags from env

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.grpc.port, "http": config.http.http_port, "metrics": config.metrics.metrics_port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"

    probes = {kind: container[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(p["port"] == config.grpc.port for p in probes.values())
    assert {p["service"] for p in probes.values()} <= set(HEALTH_SERVICES)
    assert probes["readinessProbe"]["service"] == probes["startupProbe"]["service"] == GENERATOR_SERVICE
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too short for load and warm-up"

    assert pod["terminationGracePeriodSeconds"] > config.process.grace_seconds
    assert 0 < config.grpc.max_connection_age_seconds < 3600

    for service in (d for d in docs if d["kind"] == "Service"):
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        for port in service["spec"]["ports"]:
            assert port["port"] == ports[port["targetPort"]]
    headless = one(docs, "Service", "aegen-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]

    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == sorted(ports.values())
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"] == deployment["spec"]["selector"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods", "Resource"}


def test_loadtest_job_arguments_are_ones_aegen_loadtest_accepts(rendered):
    docs = documents(rendered["loadtest"])
    (container,) = one(docs, "Job")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["aegen-loadtest"]
    config = loadtest.config_from_args(container["args"])
    defaults = ServerConfig()
    host, port = config.target.rsplit(":", 1)
    assert host == "aegen.aegen.svc.cluster.local" and int(port) == defaults.grpc.port
    metrics = urllib.parse.urlsplit(config.metrics_url)
    assert (metrics.hostname, metrics.port, metrics.path) == (host, defaults.metrics.metrics_port, "/metrics")
    server_docs = documents(rendered["cpu"])
    assert one(server_docs, "Service", "aegen")["metadata"]["namespace"] == "aegen"
    assert one(docs, "Job")["metadata"]["namespace"] == "aegen"


# ---------------------------------------------------------------------------------------------- metrics


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "aegen-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(queries) >= 15
    return queries


def as_promql(query: str) -> str:
    """A dashboard query with Grafana's variables replaced by what they stand for."""
    return query.replace("$__rate_interval", "1m").replace("$model", ".*")


def adapter_queries() -> list[str]:
    """prometheus-adapter's queries as the adapter sends them for the pods of namespace aegen."""
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    queries = []
    for rule in adapter["rules"]["custom"]:
        series = re.match(r"\w+", rule["seriesQuery"]).group()
        queries.append(rule["seriesQuery"])
        queries.append(rule["metricsQuery"].replace("<<.Series>>", series)
                       .replace("<<.LabelMatchers>>", 'namespace="aegen",pod=~"aegen-server-.*"')
                       .replace("<<.GroupBy>>", "pod"))
    return queries


def test_dashboard_and_adapter_queries_are_valid_promql(tmp_path):
    queries = [*map(as_promql, dashboard_queries()), *adapter_queries()]
    rules = {"groups": [{"name": "aegen-queries", "rules": [
        {"record": f"aegen:query:{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(tmp_path / "rules.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_the_serving_signals():
    text = "\n".join(dashboard_queries())
    p99 = "histogram_quantile(0.99, sum by (le) (rate(aegen_request_duration_seconds_bucket"
    for needed in ("aegen_requests_total", 'code!="OK"', p99, "aegen_queue_wait_seconds_bucket",
                   "aegen_inference_duration_seconds_bucket", "aegen_batch_size_samples_bucket",
                   "aegen_samples_generated_total", "execution_provider"):
        assert needed in text, needed


def serving_signal_queries(rendered) -> list[str]:
    """Every query that names a server metric: the dashboard's, the HPA's and prometheus-adapter's."""
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    hpa = one(documents(rendered["cpu"]), "HorizontalPodAutoscaler")
    hpa_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    adapter_names = [rule["name"]["as"] for rule in adapter["rules"]["custom"]]
    assert set(hpa_metrics) <= set(adapter_names), "the HPA asks for a metric the adapter does not publish"
    return [*map(as_promql, dashboard_queries()), *adapter_queries()]


def exposition_after_one_call(aegen_server) -> str:
    """The server's /metrics text after one GenerateSamples call, so labelled series exist."""
    with grpc.insecure_channel(aegen_server.target) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        model = stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10).models[0].name
        stub.GenerateSamples(generator_pb2.GenerateSamplesRequest(model_name=model, num_samples=2), timeout=30)
    return aegen_server.metrics_text()


def test_every_metric_the_dashboard_and_autoscaler_use_is_exposed_by_the_server(rendered, aegen_server):
    from prometheus_client.parser import text_string_to_metric_families

    assert urllib.parse.urlsplit(aegen_server.metrics_url).path == "/metrics"
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition_after_one_call(aegen_server)):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    for query in serving_signal_queries(rendered):
        names = set(re.findall(r"\baegen_[a-z_]+\b", query))
        assert names, query
        missing = names - labels.keys()
        assert not missing, f"{missing} in {query!r} is not in the server's exposition"
        used = set(re.findall(r"by \(([^)]*)\)", query))
        used = {label.strip() for group in used for label in group.split(",")}
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!=|=)", query))
        unknown = used - SCRAPE_LABELS - set().union(*(labels[n] for n in names))
        assert not unknown, f"labels {unknown} in {query!r} are not on {names}"


def test_image_healthcheck_passes_for_a_serving_server_and_fails_for_a_closed_port(aegen_server):
    healthcheck = (sys.executable, str(DEPLOY / "healthcheck.py"))
    ok = run(*healthcheck, aegen_server.target)
    assert ok.returncode == 0, ok.stderr
    by_env = run(*healthcheck, env={env_var("port"): aegen_server.target.rsplit(":", 1)[1]})
    assert by_env.returncode == 0, by_env.stderr
    closed = run(*healthcheck, f"127.0.0.1:{free_port()}")
    assert closed.returncode == 1
    assert closed.stderr.startswith("aegen-healthcheck: ") and "UNAVAILABLE" in closed.stderr
    assert "Traceback" not in closed.stderr
