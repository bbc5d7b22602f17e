#!/usr/bin/env bash
# Validate the deployment files offline:
#   - kubernetes-validate (strict schemas, Kubernetes 1.30 = the oldest supported, and
#     the newest it knows) on the rendered kustomize overlay, the base and the Secret
#     placeholders;
#   - checkov (security policies) on the same: zero failures; each waiver is a
#     `checkov.io/skipN` annotation in the manifest, with its reason;
#   - the Prometheus Operator resources (no schema in kubernetes-validate: waived there,
#     checked by kubernetes/check-monitoring.py instead);
#   - promtool check rules / test rules on deploy/prometheus.
# kubernetes-validate and checkov are installed from PyPI into a venv on first use
# ($DEPLOY_VENV, default ~/.cache/gatehouse/deploy-venv); promtool from Debian's
# `prometheus` package; kubectl (its built-in kustomize) renders the overlays.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
K8S_VERSIONS=(1.30.0 1.37.0)
# Kinds kubernetes-validate has no schema for, and why that is acceptable.
declare -A WAIVED_KINDS=(
  [ServiceMonitor]="Prometheus Operator CRD: kubernetes-validate ships core schemas only; check-monitoring.py checks its fields and that it scrapes the admin port"
  [PrometheusRule]="Prometheus Operator CRD: kubernetes-validate ships core schemas only; check-monitoring.py checks its fields and that it equals alerts.yml, promtool checks the rules"
)

venv=${DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gatehouse/deploy-venv}
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qF "$KUBERNETES_VALIDATE_VERSION" ||
   ! "$venv/bin/checkov" --version 2>/dev/null | grep -qF "$CHECKOV_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "checkov==$CHECKOV_VERSION"
fi
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if command -v kubectl >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null 2>&1; then
  render() { kustomize build "$1"; }
else
  echo "validate.sh: kubectl (or kustomize) is needed to render the kustomize overlays" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
render kubernetes/overlays/example >"$work/example.yaml"
render kubernetes/base >"$work/base.yaml"
files=("$work/example.yaml" "$work/base.yaml" kubernetes/secrets/*.yaml)
status=0

# 1. Schemas, strict: unknown fields are errors.
for v in "${K8S_VERSIONS[@]}"; do
  set +e
  "$venv/bin/kubernetes-validate" --strict -k "$v" "${files[@]}" >"$work/kv.txt" 2>&1
  rc=$?
  set -e
  passed=$(grep -c '^INFO .* passed' "$work/kv.txt" || true)
  failed=$(grep -c '^ERROR' "$work/kv.txt" || true)
  waived=()
  while read -r line; do
    kind=$(sed -n 's/.*schema for kind \([A-Za-z]*\) .*/\1/p' <<<"$line")
    if [ -n "$kind" ] && [ -n "${WAIVED_KINDS[$kind]:-}" ]; then
      waived+=("$kind")
    else
      echo "kubernetes-validate: not waived: $line" >&2
      failed=$((failed + 1))
    fi
  done < <(grep '^WARN' "$work/kv.txt" || true)
  grep '^ERROR\|^FATAL' "$work/kv.txt" >&2 || true
  [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] || status=1
  echo "kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict -k $v: $passed resources passed, $failed failed, ${#waived[@]} waived ($(printf '%s\n' "${waived[@]}" | sort -u | paste -sd, -): no schema)"
done
for kind in "${!WAIVED_KINDS[@]}"; do echo "  waiver $kind: ${WAIVED_KINDS[$kind]}"; done

# 2. What replaces the schema for the two CRDs; the PrometheusRule's rules through promtool.
"$venv/bin/python" kubernetes/check-monitoring.py "$work/example.yaml" prometheus/alerts.yml \
  "$work/prometheusrule-groups.yml" || status=1
promtool check rules "$work/prometheusrule-groups.yml" >/dev/null || status=1

# 3. Security policies. Waivers are annotations in the manifests; list them.
set +e
"$venv/bin/checkov" --compact --skip-download --framework kubernetes \
  -f "$work/example.yaml" -f kubernetes/secrets/gatehouse-tls.yaml \
  -f kubernetes/secrets/gatehouse-upstream-mtls.yaml -f kubernetes/secrets/gatehouse-pseudonym-key.yaml \
  -o json >"$work/checkov.json" 2>"$work/checkov.err"
rc=$?
set -e
"$venv/bin/python" - "$work/checkov.json" <<'PY' || status=1
import json, sys
d = json.load(open(sys.argv[1]))
reports = d if isinstance(d, list) else [d]
p = f = s = 0
for r in reports:
    p += r["summary"]["passed"]; f += r["summary"]["failed"]; s += r["summary"]["skipped"]
    for c in r["results"].get("failed_checks", []):
        print(f"  FAILED {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})")
    for c in r["results"].get("skipped_checks", []):
        why = c.get("check_result", {}).get("suppress_comment", "")
        print(f"  waiver {c['check_id']} ({c['check_name']}) on {c['resource']}: {why}")
print(f"checkov {r['summary'].get('checkov_version', '')} (kubernetes): {p} passed, {f} failed, {s} waived")
sys.exit(1 if f else 0)
PY
[ "$rc" -eq 0 ] || { cat "$work/checkov.err" >&2; status=1; }

# 4. Alerting rules: syntax, then the unit tests.
promtool check rules prometheus/alerts.yml | sed 's/^/promtool: /' || status=1
promtool test rules prometheus/alerts_test.yml | sed 's/^/promtool: /' || status=1

# 5. Every dashboard query parses as PromQL: promtool reads them as recording rules, after
# Grafana's variables are replaced by what they expand to.
"$venv/bin/python" - grafana/gatehouse.json "$work/dashboard-rules.yml" <<'PY' || status=1
import json, sys, yaml
dash = json.load(open(sys.argv[1]))
exprs = []
def walk(o):
    if isinstance(o, dict):
        if isinstance(o.get("expr"), str):
            exprs.append(o["expr"])
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(dash.get("panels", []))
subst = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*", "$instance": ".*"}
rules = []
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    rules.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"dashboard: {len(exprs)} queries in {sum(1 for p in dash['panels'] if p.get('type') != 'row')} panels")
PY
promtool check rules "$work/dashboard-rules.yml" >/dev/null || { echo "dashboard: a query does not parse" >&2; status=1; }

if [ "$status" -eq 0 ]; then echo "deploy/validate.sh: all checks passed"; else echo "deploy/validate.sh: FAILED" >&2; fi
exit "$status"
