"""Kubernetes manifests and multi-node training agree with the processes they run.

No cluster here: the manifests are parsed and checked against the services' real
flags, settings and metrics; the torchrun launcher script really trains across two
"nodes" on loopback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import yaml

from gmem.stack import free_port
from tests.support.deploy_helpers import (
    K8S,
    ROOT,
    arg_after,
    cli_flags,
    flags_of,
    k8s_docs,
    k8s_objects,
    one,
    service_module,
    settings_env_names,
)


def containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


def test_k8s_files_parse_and_kustomization_lists_the_serving_stack():
    docs = k8s_docs()
    for name, objs in docs.items():
        for obj in objs:
            assert {"apiVersion", "kind"} <= set(obj), f"{name}: object without apiVersion/kind"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file()
    assert "train-job.yaml" not in kust["resources"], "training is applied on its own"


def test_k8s_bank_is_a_statefulset_with_its_data_dir_on_a_claim():
    sts = one("StatefulSet", "gmem-bank")
    (c,) = containers(sts)
    argv = c["command"]
    assert not set(flags_of(argv)) - cli_flags(service_module(argv))
    data_dir = arg_after(argv, "--data-dir")
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[data_dir] in claims
    assert one("Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def _port_number(container: dict, name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    return {p["name"]: p["containerPort"] for p in container["ports"]}[name_or_number]


@pytest.mark.parametrize("kind,name", [("StatefulSet", "gmem-bank"), ("Deployment", "gmem-generator")])
def test_k8s_service_probes_and_ports_match_the_process(kind, name):
    obj = one(kind, name)
    (c,) = containers(obj)
    port = int(arg_after(c["command"], "--port"))
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _port_number(c, c[probe]["httpGet"]["port"]) == port
    labels = obj["spec"]["template"]["metadata"]["labels"]
    assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one("Service", name)
    assert svc["spec"]["selector"].items() <= labels.items(), f"Service {name} selects no pod"
    assert svc["spec"]["ports"][0]["port"] == port


def test_k8s_generator_requests_a_gpu_and_reaches_the_bank_service():
    dep = one("Deployment", "gmem-generator")
    (c,) = containers(dep)
    assert not set(flags_of(c["command"])) - cli_flags(service_module(c["command"]))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    bank_url = urlparse(arg_after(c["command"], "--bank-url"))
    bank_svc = one("Service", bank_url.hostname)
    assert bank_svc["spec"]["ports"][0]["port"] == bank_url.port


def test_k8s_hpa_scales_the_generator_on_a_metric_it_exports():
    hpa = one("HorizontalPodAutoscaler", "gmem-generator")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and one("Deployment", target["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metric_source = (ROOT / "services" / "generator" / "metrics.py").read_text()
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods, "the HPA must scale on generator load, not only CPU"
    for name in pods:
        assert f'"{name}"' in metric_source, f"the generator exports no metric {name}"


def test_k8s_token_secret_and_redis_are_wired():
    (c,) = containers(one("StatefulSet", "gmem-bank"))
    env = {e["name"]: e for e in c["env"]}
    ref = env["GMEM_BANK_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in one("Secret", ref["name"])["stringData"]
    redis_url = urlparse(env["GMEM_REDIS_URL"]["value"])
    redis_svc = one("Service", redis_url.hostname)
    assert redis_svc["spec"]["ports"][0]["port"] == redis_url.port
    redis_pod_labels = one("Deployment", "gmem-redis")["spec"]["template"]["metadata"]["labels"]
    assert redis_svc["spec"]["selector"].items() <= redis_pod_labels.items()
    for kind in ("StatefulSet", "Deployment"):
        for obj in k8s_objects(kind):
            for cont in containers(obj):
                unknown = {
                    e["name"] for e in cont.get("env", []) if e["name"].startswith("GMEM_")
                } - settings_env_names()
                assert not unknown, (
                    f"{obj['metadata']['name']} sets {unknown}, which no settings class defines"
                )


def test_k8s_training_job_runs_torchrun_across_indexed_pods():
    job = one("Job", "gmem-train")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NNODES"] == str(spec["completions"])
    assert env["MASTER_ADDR"] == f"gmem-train-0.{pod['subdomain']}"
    assert one("Service", pod["subdomain"])["spec"]["clusterIP"] == "None"
    assert c["command"] == ["bash", "deploy/train-multinode.sh"]
    script = (ROOT / "deploy" / "train-multinode.sh").read_text()
    assert "torch.distributed.run" in script and "-m training train" in script
    # The script's torchrun flags exist, and so do the training flags the Job passes.
    torchrun_flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", script.split("exec", 1)[1]))
    assert not torchrun_flags - cli_flags("torch.distributed.run")
    assert not set(flags_of(c["args"])) - cli_flags("training", "train")


@pytest.mark.slow
def test_train_multinode_script_trains_across_two_nodes_on_loopback(tmp_path):
    """Two torchrun 'nodes' on this machine: rendezvous on 127.0.0.1, one process each."""
    port = free_port()
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GMEM_")},
        "PYTHON": sys.executable,
        "NNODES": "2",
        "NPROC_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "model.safetensors"
    args = [
        "--bank",
        "artifacts/mnist-5k/bank.safetensors",
        "--dataset",
        "mnist-5k:train",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--sample-every",
        "1000",
        "--ckpt-every",
        "1000",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    procs, logs = [], []
    for rank in (0, 1):
        logs.append(tmp_path / f"node{rank}.log")
        with open(logs[-1], "wb") as fh:
            procs.append(
                subprocess.Popen(
                    ["bash", "deploy/train-multinode.sh", *args],
                    cwd=ROOT,
                    env={**common, "NODE_RANK": str(rank)},
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-2000:] for t in texts)
    # Only global rank 0 shows progress: node 1's process really joined as rank 1 of 2.
    assert "train:" in texts[0] and "train:" not in texts[1]
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        assert f.metadata()["format"] == "gmem-model"
