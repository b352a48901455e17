#!/usr/bin/env python3
"""Check the deployment files as far as a machine without Docker allows.

    python3 scripts/check-deploy.py

- docker-compose.yml, deploy/k8s/*.yaml, the Prometheus configuration and alert rules, the
  Grafana provisioning files and dashboards parse, and hold together: mounted files exist,
  build targets exist in the Dockerfile, Secret keys and probe paths are the ones used, every
  alert has a runbook entry, every walcached TOML parses;
- every metric name the dashboards and the alert rules query is defined as a constant in
  crates/walcache/src/metrics.rs or crates/walcached/src/metrics.rs (`_bucket`, `_sum` and
  `_count` only on histograms).

Needs python3 (3.11+, for tomllib) and PyYAML; installs PyYAML (Debian's python3-yaml, else
pip) when it is missing. Exits 0 when everything holds, 1 otherwise, printing each problem.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

METRIC_SOURCES = [
    ROOT / "crates/walcache/src/metrics.rs",
    ROOT / "crates/walcached/src/metrics.rs",
]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S_DIR = ROOT / "deploy/k8s"
PROMETHEUS_CONFIGS = [ROOT / "deploy/compose/prometheus.yml"]
ALERT_RULES = [ROOT / "deploy/prometheus/alerts.yml"]
GRAFANA_PROVISIONING = ROOT / "deploy/grafana/provisioning"
DASHBOARDS_DIR = ROOT / "deploy/grafana/dashboards"
RUNBOOK = ROOT / "docs/runbook.md"
WALCACHED_TOMLS = [ROOT / "deploy/compose/walcached.toml", ROOT / "examples/walcached.toml"]

# A metric name: the library's `walcache_*` and the daemon's `walcached_*` (digits included:
# `walcache_l1_flushes_total`, `walcache_l2_duration_seconds`).
METRIC_RE = re.compile(r"\bwalcached?_[a-z0-9_]*[a-z0-9]")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
CONST_RE = re.compile(
    r'((?:^[ \t]*///[^\n]*\n)*)^[ \t]*pub const [A-Z0-9_]+: &str =\s*"([^"]+)";', re.M
)

problems: list[str] = []


def problem(where: Path | str, text: str) -> None:
    where = where.relative_to(ROOT) if isinstance(where, Path) else where
    problems.append(f"{where}: {text}")


def load_yaml_module():
    try:
        import yaml  # noqa: PLC0415

        return yaml
    except ImportError:
        pass
    print("PyYAML is missing: installing it", file=sys.stderr)
    attempts = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        attempts.append(["apt-get", "install", "-y", "python3-yaml"])
    attempts.append([sys.executable, "-m", "pip", "install", "--quiet", "--user", "pyyaml"])
    attempts.append(
        [sys.executable, "-m", "pip", "install", "--quiet", "--user", "--break-system-packages", "pyyaml"]
    )
    for cmd in attempts:
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            if subprocess.run(cmd, check=False, env=env).returncode != 0:
                continue
        except OSError:
            continue
        import importlib
        import site

        importlib.invalidate_caches()
        user_site = site.getusersitepackages()
        if user_site not in sys.path:
            sys.path.append(user_site)
        try:
            import yaml  # noqa: PLC0415

            return yaml
        except ImportError:
            continue
    sys.exit(
        "check-deploy: PyYAML is required and could not be installed: "
        "apt-get install python3-yaml (or pip install pyyaml)"
    )


yaml = load_yaml_module()
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def read_yaml(path: Path, multi: bool = False):
    try:
        text = path.read_text()
        return list(yaml.safe_load_all(text)) if multi else yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        problem(path, f"does not parse as YAML: {e}")
        return None


# --- metric names defined in the code --------------------------------------------------------


def defined_metrics() -> dict[str, str]:
    """name → kind (`counter`, `gauge`, `histogram`, or `` when the doc comment does not say)."""
    names: dict[str, str] = {}
    for src in METRIC_SOURCES:
        try:
            text = src.read_text()
        except OSError as e:
            problem(src, f"cannot be read: {e}")
            continue
        for doc, name in CONST_RE.findall(text):
            m = re.search(r"///\s*(Counter|Gauge|Histogram)\b", doc)
            names[name] = m.group(1).lower() if m else ""
    if not names:
        problem("metrics", "no metric constants found in " + ", ".join(str(s) for s in METRIC_SOURCES))
    return names


def check_metric_names(path: Path, text: str, defined: dict[str, str], used: set[str]) -> None:
    for name in sorted(set(METRIC_RE.findall(text))):
        if name in defined:
            used.add(name)
            continue
        base = next(
            (name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s) and name[: -len(s)] in defined),
            None,
        )
        if base is None:
            problem(path, f"metric {name} is not defined in crates/walcache(d)/src/metrics.rs")
        elif defined[base] not in ("histogram", ""):
            problem(path, f"metric {name}: {base} is a {defined[base]}, not a histogram")
        else:
            used.add(base)


# --- docker-compose.yml and the Dockerfile ---------------------------------------------------


def dockerfile_stages(path: Path) -> set[str]:
    try:
        text = path.read_text()
    except OSError as e:
        problem(path, f"cannot be read: {e}")
        return set()
    return {m.lower() for m in re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)}


def check_compose_variables() -> None:
    """Every ${NAME} the file interpolates is a plain variable name that its comments tell
    users to set: a variable nobody can find (or a mangled name) silently keeps the demo
    default, such as a published signing key."""
    try:
        text = COMPOSE.read_text()
    except OSError:
        return
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for m in re.finditer(r"\$\{([^}:]*)", text):
        name = m.group(1)
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or len(name) > 40:
            problem(COMPOSE, f"interpolates ${{{name}}}: not a plain variable name")
        elif name not in comments:
            problem(COMPOSE, f"interpolates ${{{name}}}, which no comment tells users to set")


def check_compose() -> None:
    check_compose_variables()
    doc = read_yaml(COMPOSE)
    if doc is None:
        return
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        problem(COMPOSE, "no services")
        return
    for required in ("postgres", "redis", "walcached", "service", "prometheus", "grafana"):
        if required not in services:
            problem(COMPOSE, f"service {required!r} is missing")
    volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problem(COMPOSE, f"service {name}: not a mapping")
            continue
        if "image" not in svc and "build" not in svc:
            problem(COMPOSE, f"service {name}: neither image nor build")
        build = svc.get("build")
        if isinstance(build, dict):
            context = ROOT / build.get("context", ".")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problem(COMPOSE, f"service {name}: build file {dockerfile} does not exist")
            elif "target" in build and build["target"].lower() not in dockerfile_stages(dockerfile):
                problem(COMPOSE, f"service {name}: target {build['target']!r} is not a stage of {dockerfile.name}")
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith(("./", "../", "/")):
                if not (ROOT / source).exists():
                    problem(COMPOSE, f"service {name}: mounted {source} does not exist")
            elif source and source not in volumes:
                problem(COMPOSE, f"service {name}: named volume {source!r} is not declared")
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                problem(COMPOSE, f"service {name}: depends on unknown service {dep!r}")
    pg = services.get("postgres") or {}
    command = pg.get("command", "")
    command = " ".join(command) if isinstance(command, list) else str(command)
    if "wal_level=logical" not in command:
        problem(COMPOSE, "postgres: the command must set wal_level=logical")
    redis = services.get("redis") or {}
    rcommand = redis.get("command", "")
    rcommand = " ".join(rcommand) if isinstance(rcommand, list) else str(rcommand)
    if not re.search(r"maxmemory-policy\s+(volatile-\S+|noeviction)", rcommand):
        problem(COMPOSE, "redis: the maxmemory-policy must be volatile-* or noeviction")


# --- Kubernetes -------------------------------------------------------------------------------


def check_k8s() -> None:
    files = sorted(K8S_DIR.glob("*.yaml")) + sorted(K8S_DIR.glob("*.yml"))
    if not files:
        problem(K8S_DIR, "no manifests")
    for path in files:
        docs = [d for d in (read_yaml(path, multi=True) or []) if d is not None]
        by_kind: dict[tuple[str, str], dict] = {}
        for d in docs:
            if not isinstance(d, dict) or not {"apiVersion", "kind", "metadata"} <= d.keys():
                problem(path, "a document lacks apiVersion, kind or metadata")
                continue
            by_kind[(d["kind"], d["metadata"].get("name", ""))] = d
        for (kind, name), d in by_kind.items():
            if kind == "ConfigMap":
                for key, value in (d.get("data") or {}).items():
                    if key.endswith(".toml"):
                        check_walcached_toml(f"{path.relative_to(ROOT)} ConfigMap {name} {key}", value)
            if kind != "Deployment":
                continue
            spec = d.get("spec", {})
            pod = spec.get("template", {}).get("spec", {})
            labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
            if not set((spec.get("selector", {}).get("matchLabels") or {}).items()) <= set(labels.items()):
                problem(path, f"Deployment {name}: selector does not match the pod labels")
            volumes = {v.get("name"): v for v in pod.get("volumes") or []}
            for c in pod.get("containers") or []:
                probes = {
                    p: (c.get(p) or {}).get("httpGet", {}).get("path")
                    for p in ("livenessProbe", "readinessProbe")
                }
                if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
                    problem(path, f"container {c.get('name')}: probes must be /healthz and /readyz, got {probes}")
                if not (c.get("resources") or {}).get("requests"):
                    problem(path, f"container {c.get('name')}: no resource requests")
                for env in c.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        secret = by_kind.get(("Secret", ref.get("name")))
                        if secret is not None:
                            keys = set((secret.get("stringData") or {}).keys()) | set(
                                (secret.get("data") or {}).keys()
                            )
                            if ref.get("key") not in keys:
                                problem(path, f"env {env.get('name')}: Secret {ref.get('name')} has no key {ref.get('key')!r}")
                for mount in c.get("volumeMounts") or []:
                    vol = volumes.get(mount.get("name"))
                    if vol is None:
                        problem(path, f"volumeMount {mount.get('name')}: no such volume")
                    elif "configMap" in vol and ("ConfigMap", vol["configMap"].get("name")) not in by_kind:
                        problem(path, f"volume {mount.get('name')}: ConfigMap {vol['configMap'].get('name')} is not in the file")


# --- walcached TOML ---------------------------------------------------------------------------

TOML_SECTIONS = {
    "postgres": {"url", "password_file", "slot", "publication"},
    "redis": {"url", "ca_file", "client_cert_file", "client_key_file", "key_prefix"},
    "stream": {
        "batch_max_keys",
        "batch_max_delay_ms",
        "heartbeat_interval_ms",
        "status_interval_ms",
        "large_transaction_keys",
        "max_message_bytes",
        "catalog_interval_ms",
        "max_frame_bytes",
    },
    "http": {"listen"},
    "refresh": {"interval_secs", "max_deletes_per_second", "scan_count"},
    "security": {"signing_keys_file"},
}
# The admin API's fields (docs/admin-api.md).
TOML_SECTIONS["http"] |= {"admin_token_file", "manual_refresh_min_interval_secs"}


def check_walcached_toml(where: str, text: str) -> None:
    if tomllib is None:
        return
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(where, f"does not parse as TOML: {e}")
        return
    for section, fields in doc.items():
        if section == "rules":
            for i, rule in enumerate(fields):
                extra = set(rule) - {"table", "namespace", "keys", "tags", "tag_namespaces"}
                if extra or not {"table", "namespace"} <= set(rule):
                    problem(where, f"rules[{i}]: unknown fields {sorted(extra)} or missing table/namespace")
        elif section not in TOML_SECTIONS:
            problem(where, f"unknown section [{section}]")
        else:
            extra = set(fields) - TOML_SECTIONS[section]
            if extra:
                problem(where, f"[{section}]: unknown fields {sorted(extra)}")
    for required in ("postgres", "redis", "rules"):
        if required not in doc:
            problem(where, f"[{required}] is missing")


# --- Prometheus, Grafana ------------------------------------------------------------------------


def runbook_anchors() -> set[str]:
    try:
        text = RUNBOOK.read_text()
    except OSError as e:
        problem(RUNBOOK, f"cannot be read: {e}")
        return set()
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", text, re.M):
        anchors.add(re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-"))
    return anchors


def check_prometheus(defined: dict[str, str], used: set[str]) -> None:
    for path in PROMETHEUS_CONFIGS:
        doc = read_yaml(path)
        if doc is None:
            continue
        if not doc.get("scrape_configs"):
            problem(path, "no scrape_configs")
        for job in doc.get("scrape_configs") or []:
            if "job_name" not in job:
                problem(path, "a scrape config has no job_name")
        check_metric_names(path, path.read_text(), defined, used)
    anchors = runbook_anchors()
    for path in ALERT_RULES:
        doc = read_yaml(path)
        if doc is None:
            continue
        seen = set()
        for group in doc.get("groups") or []:
            if "name" not in group or not group.get("rules"):
                problem(path, "a group without a name or rules")
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record")
                if not name or not rule.get("expr"):
                    problem(path, f"rule {name!r}: needs alert (or record) and expr")
                    continue
                if name in seen:
                    problem(path, f"alert {name} is defined twice")
                seen.add(name)
                if "alert" in rule:
                    url = (rule.get("annotations") or {}).get("runbook_url", "")
                    anchor = url.split("#", 1)[1] if "#" in url else ""
                    if anchor not in anchors:
                        problem(path, f"alert {name}: runbook_url {url!r} has no heading in docs/runbook.md")
                    if not (rule.get("annotations") or {}).get("summary"):
                        problem(path, f"alert {name}: no summary")
        if not seen:
            problem(path, "no rules")
        check_metric_names(path, path.read_text(), defined, used)


def dashboard_panels(panels):
    for p in panels or []:
        yield p
        yield from dashboard_panels(p.get("panels"))


def check_grafana(defined: dict[str, str], used: set[str]) -> None:
    for path in sorted(GRAFANA_PROVISIONING.rglob("*.y*ml")):
        doc = read_yaml(path)
        if doc is not None and doc.get("apiVersion") != 1:
            problem(path, "provisioning files need apiVersion: 1")
        for provider in (doc or {}).get("providers") or []:
            target = provider.get("options", {}).get("path", "")
            if target and not (DASHBOARDS_DIR.exists()):
                problem(path, f"provider {provider.get('name')}: {DASHBOARDS_DIR} does not exist")
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    if not dashboards:
        problem(DASHBOARDS_DIR, "no dashboards")
    for path in dashboards:
        try:
            dash = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problem(path, f"does not parse as JSON: {e}")
            continue
        if not dash.get("uid") or not dash.get("title"):
            problem(path, "needs a uid and a title")
        ids = set()
        exprs = []
        for p in dashboard_panels(dash.get("panels")):
            if p.get("id") in ids:
                problem(path, f"panel id {p.get('id')} is used twice")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                continue
            if not p.get("gridPos"):
                problem(path, f"panel {p.get('title')!r}: no gridPos")
            targets = p.get("targets") or []
            if not targets:
                problem(path, f"panel {p.get('title')!r}: no queries")
            for t in targets:
                if not t.get("expr"):
                    problem(path, f"panel {p.get('title')!r}: a query without expr")
                exprs.append(t.get("expr", ""))
        if not exprs:
            problem(path, "no queries")
        # The whole file, not just the queries: descriptions name metrics too.
        check_metric_names(path, path.read_text(), defined, used)


def main() -> int:
    defined = defined_metrics()
    used: set[str] = set()
    check_compose()
    check_k8s()
    for path in WALCACHED_TOMLS:
        try:
            check_walcached_toml(str(path.relative_to(ROOT)), path.read_text())
        except OSError as e:
            problem(path, f"cannot be read: {e}")
    check_prometheus(defined, used)
    check_grafana(defined, used)
    if problems:
        for p in problems:
            print(f"check-deploy: {p}", file=sys.stderr)
        print(f"check-deploy: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    unused = sorted(set(defined) - used)
    print(
        f"check-deploy: ok: compose, k8s, prometheus, grafana; {len(used)} of {len(defined)} "
        f"metrics queried, all defined"
        + (f" (not queried: {', '.join(unused)})" if unused else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
