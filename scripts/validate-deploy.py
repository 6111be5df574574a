#!/usr/bin/env python3
"""Validates deploy/ (what can be validated without a cluster):

- every Kubernetes manifest parses and validates against the Kubernetes
  1.31 JSON schemas (kubernetes-validate, strict: unknown fields fail);
- the Nomad job parses as HCL2 (python-hcl2) and has the job/group/task
  shape, the kill signal and timeouts docs/guide/08-deploying.md states;
- the compose file parses, every node service has the image, the stop
  signal and the environment;
- every MESH_* variable the files set is one `mesh-node` reads (its
  `--help` lists them), so a renamed flag cannot leave a manifest behind;
- the timings hold: grace >= preStop + shutdown timeout + 5 s, Nomad's
  kill_timeout >= shutdown timeout + 5 s, the excluded ports are the peer
  port.

Usage: validate-deploy.py <path of the mesh-node binary>
"""

import re
import subprocess
import sys
from pathlib import Path

import hcl2
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31.0"
PEER_PORT = 7000

errors = []


def fail(msg):
    errors.append(msg)


def mesh_node_env(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"env: (MESH_[A-Z_]+)", out))
    if not names:
        raise SystemExit(f"{binary} --help lists no MESH_ variables:\n{out}")
    return names


def check_env_names(where, names, known):
    for n in sorted(names):
        if n.startswith("MESH_") and n not in known and n != "MESH_COOKIE":
            fail(f"{where}: sets {n}, which mesh-node does not read (known: {sorted(known)})")


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_kubernetes(known):
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    if not files:
        fail("no Kubernetes manifests in deploy/kubernetes")
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        kinds = [d["kind"] for d in docs]
        for d in docs:
            try:
                kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{f.name}: {d['kind']} {d['metadata']['name']}: {e.message} at {list(e.path)}")
        for want in ("StatefulSet", "PodDisruptionBudget", "Service"):
            if want not in kinds:
                fail(f"{f.name}: no {want}")
        for sts in (d for d in docs if d["kind"] == "StatefulSet"):
            spec = sts["spec"]["template"]["spec"]
            if sts["spec"].get("podManagementPolicy") != "Parallel":
                fail(f"{f.name}: podManagementPolicy must be Parallel")
            c = spec["containers"][0]
            env = env_of(c)
            check_env_names(f.name, env, known)
            shutdown = int(env.get("MESH_SHUTDOWN_TIMEOUT_SECS") or 25)
            pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            grace = spec["terminationGracePeriodSeconds"]
            if grace < pre_stop + shutdown + 5:
                fail(f"{f.name}: grace {grace}s < preStop {pre_stop}s + shutdown {shutdown}s + 5s")
            for probe, path in (("startupProbe", "/livez"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
                if c.get(probe, {}).get("httpGet", {}).get("path") != path:
                    fail(f"{f.name}: {probe} is not {path}")
            ann = sts["spec"]["template"]["metadata"].get("annotations", {})
            if ann.get("consul.hashicorp.com/connect-inject") == "true":
                for way in ("inbound", "outbound"):
                    key = f"consul.hashicorp.com/transparent-proxy-exclude-{way}-ports"
                    if ann.get(key) != str(PEER_PORT):
                        fail(f"{f.name}: {key} must be {PEER_PORT}")
                if env.get("MESH_CONSUL_MODE") != "observe":
                    fail(f"{f.name}: under consul-k8s the node must observe (MESH_CONSUL_MODE=observe)")
        print(f"   ok: {f.relative_to(ROOT)} ({', '.join(kinds)}), Kubernetes {K8S_VERSION} schemas")


def unquote(v):
    """python-hcl2 8 keeps string literals' quotes (and adds markers):
    plain values for the checks below."""
    if isinstance(v, dict):
        return {unquote(k): unquote(x) for k, x in v.items() if not str(k).startswith("__")}
    if isinstance(v, list):
        return [unquote(x) for x in v]
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def check_nomad(known):
    f = DEPLOY / "nomad" / "mesh.nomad.hcl"
    doc = unquote(hcl2.loads(f.read_text()))
    job = doc["job"][0]["mesh"]
    group = job["group"][0]["node"]
    task = group["task"][0]["mesh"]
    env = task["env"][0] if isinstance(task["env"], list) else task["env"]
    check_env_names(f.name, env, known)
    shutdown = int(env.get("MESH_SHUTDOWN_TIMEOUT_SECS", 25))
    kill = int(str(task["kill_timeout"]).rstrip("s"))
    if kill < shutdown + 5:
        fail(f"{f.name}: kill_timeout {kill}s < shutdown {shutdown}s + 5s")
    if task.get("kill_signal") != "SIGTERM":
        fail(f"{f.name}: kill_signal must be SIGTERM")
    service = group["service"][0]
    if service["meta"][0].get("alloc_id") != "${NOMAD_ALLOC_ID}":
        fail(f"{f.name}: the service must carry meta alloc_id = NOMAD_ALLOC_ID")
    if env.get("MESH_CONSUL_NODE_META") != "alloc_id":
        fail(f"{f.name}: MESH_CONSUL_NODE_META must name the alloc_id meta")
    print(f"   ok: {f.relative_to(ROOT)} (HCL2 parses; job/group/task, kill signal and timeout)")


def check_compose(known):
    f = DEPLOY / "compose" / "compose.yaml"
    doc = yaml.safe_load(f.read_text())
    services = doc["services"]
    nodes = [n for n in services if n.startswith("node-")]
    if "consul" not in services or len(nodes) != 3:
        fail(f"{f.name}: expected consul and three nodes, found {sorted(services)}")
    for n in nodes:
        s = services[n]
        if s.get("stop_signal") != "SIGTERM" or not s.get("image"):
            fail(f"{f.name}: {n} lacks the image or stop_signal SIGTERM")
        check_env_names(f"{f.name} {n}", s.get("environment", {}), known)
        if s["environment"].get("MESH_NODE_ID") != n:
            fail(f"{f.name}: {n} has node id {s['environment'].get('MESH_NODE_ID')}")
    print(f"   ok: {f.relative_to(ROOT)} (YAML parses; consul and {len(nodes)} nodes)")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    known = mesh_node_env(sys.argv[1])
    check_kubernetes(known)
    check_nomad(known)
    check_compose(known)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
