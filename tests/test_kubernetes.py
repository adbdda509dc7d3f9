"""deploy/kubernetes/, validated offline: each overlay rendered by a real kubectl (kustomize),
every object checked against Kubernetes' own schemas (kubernetes-validate) or, for KEDA's and
the Prometheus Operator's kinds, against their vendored CRDs; the alert rules checked and
unit-tested by a real promtool. No cluster runs here: nothing is applied."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from rq import Queue
from rq.registry import StartedJobRegistry

from backend.core.settings import Settings
from backend.jobs.queues import TRAINING_QUEUE
from tests.conftest import require
from tests.services import mlassist_bin

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())  # oldest we support, newest
CRDS = sorted((KUBE / "crds").glob("*.yaml"))
WORKLOADS = ("Deployment", "StatefulSet")
# What the Secret `mlassist` holds (deploy/kubernetes/README.md creates it), and values of the
# right shape for parsing the settings that come from it.
SECRET_KEYS = {"label-studio-api-key": "a" * 24, "redis-url": "redis://:pw@mlassist-redis:6379/0",
               "basic-auth-pass": "basic-pass-123", "webhook-secret": "hook-secret-123",
               "azure-storage-connection-string": "DefaultEndpointsProtocol=https;AccountName=a;"
                                                  "AccountKey=a2V5;EndpointSuffix=core.windows.net",
               "redis-address": "mlassist-redis:6379", "redis-password": "pw"}


def kubectl() -> str:
    return str(require(shutil.which("kubectl"), "kubectl"))


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run([kubectl(), "kustomize", str(KUBE / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _find(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields (the API server would drop them silently,
    so a misspelt field would otherwise pass)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the vendored CRD's OpenAPI schema for that version."""
    schemas = {}
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = _strict(
                version["schema"]["openAPIV3Schema"])
    return schemas


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise unless `doc` is a valid object of its kind (strict: no unknown fields)."""
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        # Not jsonschema.validate: its check of the schema itself refuses the Go regular
        # expressions of some CRD patterns that these objects never reach.
        jsonschema.Draft7Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def pod_templates(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in WORKLOADS}


def mlassist_containers(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {name: container for name, template in pod_templates(docs).items()
            for container in template["spec"]["containers"]
            if "/mlassist" in container["image"]}


# -- rendering and schemas ---------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid(overlay: str, version: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ScaledObject", "TriggerAuthentication",
            "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        try:
            validate(doc, version)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"no schema for {doc['kind']} {doc['apiVersion']}: {exc.message}")
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == "mlassist"


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return broken


@pytest.mark.parametrize(("kind", "name", "path", "value"), [
    ("ScaledObject", "mlassist-gpu-worker", "spec.minReplicaCount", "zero"),
    ("ScaledObject", "mlassist-gpu-worker", "spec.maxReplicas", 4),          # misspelt field
    ("ScaledObject", "mlassist-gpu-worker", "spec.triggers.0.metadata", ["rq:queue:training"]),
    ("TriggerAuthentication", "mlassist-redis", "spec.secretTargetRef.0.key", None),
    ("ServiceMonitor", "mlassist-exporter", "spec.endpoints.0.interval", "30 seconds"),
    ("PrometheusRule", "mlassist", "spec.groups.0.rules.0.for", "ten minutes"),
    ("Deployment", "mlassist-gpu-worker", "spec.template.spec.terminationGracePeriodSeconds",
     "five minutes"),
    ("Deployment", "mlassist-backend", "spec.replicas", "two"),
    ("Deployment", "mlassist-backend", "spec.template.spec.containers.0.envFromm", []),
])
def test_a_broken_object_is_rejected(kind: str, name: str, path: str, value: Any) -> None:
    """The validation can fail: each of these edits of a valid object is refused."""
    doc = _find(rendered(OVERLAYS[0]), kind, name)
    validate(doc, KUBERNETES_VERSIONS[0])
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(_set(doc, path, value), KUBERNETES_VERSIONS[0])


def test_the_vendored_crds_say_where_they_come_from() -> None:
    notes = (KUBE / "crds" / "README.md").read_text()
    for path in CRDS:
        assert path.name in notes, f"{path.name} has no source in crds/README.md"
    assert {kind for _, kind in crd_schemas()} == {"ScaledObject", "TriggerAuthentication",
                                                   "ServiceMonitor", "PrometheusRule"}


# -- what the objects say ----------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_workers_scale_from_zero_to_four_on_the_training_queue(overlay: str) -> None:
    docs = rendered(overlay)
    scaled = _find(docs, "ScaledObject", "mlassist-gpu-worker")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 4)
    assert scaled["scaleTargetRef"]["name"] == "mlassist-gpu-worker"
    # Queued trainings (RQ's list) and running ones (its started registry), as RQ names them.
    lists = {t["metadata"]["listName"] for t in scaled["triggers"] if t["type"] == "redis"}
    assert lists == {Queue.redis_queue_namespace_prefix + TRAINING_QUEUE,
                     StartedJobRegistry.key_template.format(TRAINING_QUEUE)}
    auth = {t["authenticationRef"]["name"] for t in scaled["triggers"]}
    assert auth == {"mlassist-redis"}
    params = {ref["parameter"]: ref for ref in
              _find(docs, "TriggerAuthentication", "mlassist-redis")["spec"]["secretTargetRef"]}
    assert set(params) == {"address", "password"}
    assert {ref["key"] for ref in params.values()} <= set(SECRET_KEYS)

    deployment = _find(docs, "Deployment", "mlassist-gpu-worker")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"] == ["mlassist", "worker", "--queues", TRAINING_QUEUE]
    assert {"name": "DEVICE", "value": "cuda"} in container["env"]
    assert container["image"].rsplit("/", 1)[-1].startswith("mlassist-cuda:")
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_get_longer_to_stop_than_they_give_a_job(overlay: str) -> None:
    """terminationGracePeriodSeconds leaves WORKER_STOP_TIMEOUT plus a margin, so a job that
    does not hand back in time is killed and retried by the worker, not by the kubelet."""
    docs = rendered(overlay)
    timeout = int(_find(docs, "ConfigMap", "mlassist-config")["data"]["WORKER_STOP_TIMEOUT"])
    for name, container in mlassist_containers(docs).items():
        if container["command"][:2] == ["mlassist", "worker"]:
            grace = pod_templates(docs)[name]["spec"]["terminationGracePeriodSeconds"]
            assert grace >= timeout + 30, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_passed_to_mlassist_is_one_it_knows(overlay: str) -> None:
    docs = rendered(overlay)
    known = {f.metadata["env"]: f.metadata for f in dataclasses.fields(Settings)}
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    containers = mlassist_containers(docs)
    assert {"mlassist-backend", "mlassist-worker", "mlassist-gpu-worker", "mlassist-sync",
            "mlassist-exporter"} <= set(containers)
    for name, container in containers.items():
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(maps[source["configMapRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                assert not known[item["name"]]["secret"], f"{name}: {item['name']} inlined"
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "mlassist" and ref["key"] in SECRET_KEYS, (name, ref)
                env[item["name"]] = SECRET_KEYS[ref["key"]]
        unknown = set(env) - set(known)
        assert not unknown, f"{name} passes settings MLAssist does not read: {unknown}"
        Settings.from_env(env)  # and every value parses, cross-field checks included


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(overlay: str) -> None:
    docs = rendered(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    secret = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["secret"]}
    for name, map_ in ((d["metadata"]["name"], d["data"]) for d in docs
                       if d["kind"] == "ConfigMap" and "data" in d):
        assert not secret & set(map_), f"ConfigMap {name} holds a secret"
    notes = (KUBE / "README.md").read_text()
    for key in SECRET_KEYS:
        assert f"--from-literal={key}=" in notes, f"README does not create secret key {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_requests_probes_and_budgets(overlay: str) -> None:
    docs = rendered(overlay)
    budgets = [d["spec"]["selector"]["matchLabels"] for d in docs
               if d["kind"] == "PodDisruptionBudget"]
    for name, template in pod_templates(docs).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert "livenessProbe" in container, name
        labels = template["metadata"]["labels"]
        if labels["app.kubernetes.io/component"] in ("backend", "worker", "gpu-worker"):
            assert any(b.items() <= labels.items() for b in budgets), f"{name}: no budget"
    backend = mlassist_containers(docs)["mlassist-backend"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert backend[probe]["httpGet"]["path"] == "/health"


def test_the_images_are_docker_files_own() -> None:
    """The base names the images docker/compose.yaml builds from docker/Dockerfile; every
    overlay says where they were pushed."""
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    names = {compose["services"][s]["image"].split(":")[0] for s in ("backend", "gpu-worker")}
    assert names == {"mlassist", "mlassist-cuda"}
    base = set()
    for path in (KUBE / "base").glob("*.yaml"):
        base |= set(re.findall(r"^\s+image: (\S+)$", path.read_text(), re.MULTILINE))
    assert base == names
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((KUBE / "overlays" / overlay / "kustomization.yaml")
                                       .read_text())
        assert {image["name"] for image in kustomization["images"]} == names


def test_every_mlassist_command_exists() -> None:
    docs = rendered(OVERLAYS[0])
    commands = set()
    for container in mlassist_containers(docs).values():
        commands.add(tuple(container["command"]))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "exec" in container.get(probe, {}):
                commands.add(tuple(container[probe]["exec"]["command"]))
    assert ("mlassist", "metrics", "--port", "9100") in commands
    for command in sorted(commands):
        assert command[0] == "mlassist"
        done = subprocess.run([mlassist_bin(), *command[1:], "--help"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{command}: {done.stderr}"


# -- alert rules ---------------------------------------------------------------------------------

def promtool() -> str:
    return str(require(shutil.which("promtool"), "promtool (Debian's prometheus)"))


def _rule_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    """The PrometheusRule's spec as a Prometheus rule file, with the unit tests beside it."""
    (tmp_path / "alerts.rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(KUBE / "monitoring" / "alerts-test.yaml", tmp_path)
    return tmp_path / "alerts.rules.yaml"


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    rules = _find(rendered(OVERLAYS[0]), "PrometheusRule", "mlassist")["spec"]
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"MLAssistQueueStuck", "MLAssistJobsFailing", "MLAssistNoChampion"} <= names
    path = _rule_file(tmp_path, rules)
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(names)} rules found" in check.stdout
    tested = subprocess.run([promtool(), "test", "rules", "alerts-test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    unit_tests = yaml.safe_load((tmp_path / "alerts-test.yaml").read_text())["tests"]
    tested_names = {case["alertname"] for test in unit_tests for case in test["alert_rule_test"]}
    assert tested_names == names, "every alert has a unit test"


@pytest.mark.parametrize(("field", "value"), [("expr", "mlassist_queue_jobs >"),
                                              ("for", "ten minutes")])
def test_promtool_rejects_a_broken_rule(tmp_path: Path, field: str, value: str) -> None:
    rules = copy.deepcopy(_find(rendered(OVERLAYS[0]), "PrometheusRule", "mlassist")["spec"])
    rules["groups"][0]["rules"][0][field] = value
    check = subprocess.run([promtool(), "check", "rules", str(_rule_file(tmp_path, rules))],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0


def test_the_dashboard_is_in_a_configmap_grafana_picks_up() -> None:
    dashboards = _find(rendered(OVERLAYS[0]), "ConfigMap", "mlassist-grafana-dashboard")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboards["data"]["mlassist.json"])
    assert dashboard["uid"] == "mlassist" and len(dashboard["panels"]) >= 8
