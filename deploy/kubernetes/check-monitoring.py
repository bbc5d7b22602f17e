"""Checks for the two Prometheus Operator resources that kubernetes-validate has no schema
for (ServiceMonitor, PrometheusRule are CRDs). Run by deploy/validate.sh:

    python3 check-monitoring.py RENDERED.yaml ALERTS.yml RULES_OUT.yml

- PrometheusRule: `spec.groups` must equal the groups of deploy/prometheus/alerts.yml (so
  promtool's check and unit tests cover what the cluster gets); the groups are written to
  RULES_OUT.yml for `promtool check rules`. Only fields of the monitoring.coreos.com/v1
  PrometheusRule are allowed (strict, as kubernetes-validate --strict is for core kinds).
- ServiceMonitor: only fields of monitoring.coreos.com/v1 used here; its selector must
  pick the gatehouse Service, each endpoint port must be a named port of that Service whose
  target is a named container port of the Deployment, and the NetworkPolicy must admit
  that port.
Exit 1 with every problem printed, else 0 with a one-line summary.
"""

import sys

import yaml

SERVICEMONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                       "podTargetLabels", "sampleLimit", "attachMetadata"}
SERVICEMONITOR_ENDPOINT = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                           "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings",
                           "tlsConfig", "authorization", "params", "followRedirects",
                           "enableHttp2"}
RULE_SPEC = {"groups"}
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy"}
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}

problems = []


def unknown(where, obj, allowed):
    for k in obj:
        if k not in allowed:
            problems.append(f"{where}: unknown field {k!r}")


def main():
    rendered, alerts_path, rules_out = sys.argv[1:4]
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    rules = by_kind.get("PrometheusRule", [])
    monitors = by_kind.get("ServiceMonitor", [])
    if len(rules) != 1 or len(monitors) != 1:
        problems.append(f"expected one PrometheusRule and one ServiceMonitor, got {len(rules)} and {len(monitors)}")
        return finish(0)

    rule = rules[0]
    unknown("PrometheusRule.spec", rule["spec"], RULE_SPEC)
    n_rules = 0
    for g in rule["spec"].get("groups", []):
        unknown(f"PrometheusRule group {g.get('name')}", g, RULE_GROUP)
        for r in g.get("rules", []):
            n_rules += 1
            unknown(f"PrometheusRule rule {r.get('alert') or r.get('record')}", r, RULE)
    alerts = yaml.safe_load(open(alerts_path))
    if rule["spec"].get("groups") != alerts.get("groups"):
        problems.append(f"PrometheusRule spec.groups differ from {alerts_path}: copy that file's groups into prometheusrule.yaml")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": rule["spec"].get("groups", [])}, f, sort_keys=False)

    mon = monitors[0]
    unknown("ServiceMonitor.spec", mon["spec"], SERVICEMONITOR_SPEC)
    sel = mon["spec"].get("selector", {}).get("matchLabels", {})
    services = [s for s in by_kind.get("Service", [])
                if sel and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    if len(services) != 1:
        problems.append(f"ServiceMonitor selector {sel} picks {len(services)} Services, expected 1")
        return finish(n_rules)
    svc = services[0]
    deploy = by_kind["Deployment"][0]
    container_ports = {p["name"]: p["containerPort"]
                       for c in deploy["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    admitted = {p["port"] for pol in by_kind.get("NetworkPolicy", [])
                for rule_ in pol["spec"].get("ingress", []) for p in rule_.get("ports", [])}
    for ep in mon["spec"].get("endpoints", []):
        unknown("ServiceMonitor endpoint", ep, SERVICEMONITOR_ENDPOINT)
        ports = [p for p in svc["spec"]["ports"] if p.get("name") == ep.get("port")]
        if not ports:
            problems.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a named port of Service {svc['metadata']['name']}")
            continue
        target = ports[0].get("targetPort")
        if target not in container_ports:
            problems.append(f"Service port {ep.get('port')!r} targets {target!r}, not a named container port of the Deployment")
            continue
        if container_ports[target] not in admitted:
            problems.append(f"NetworkPolicy admits no ingress to port {container_ports[target]} ({target}), which Prometheus scrapes")
        if ep.get("path", "/metrics") != "/metrics":
            problems.append(f"ServiceMonitor path {ep.get('path')!r}: gatehouse serves /metrics")
    return finish(n_rules)


def finish(n_rules):
    if problems:
        for p in problems:
            print(f"ERROR {p}")
        return 1
    print(f"monitoring resources: ServiceMonitor scrapes the admin port; PrometheusRule = alerts.yml ({n_rules} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
