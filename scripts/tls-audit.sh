#!/usr/bin/env bash
# TLS audit of the HTTPS listener with testssl.sh and sslscan (Debian packages).
#
# Installs `testssl.sh` and `sslscan` with apt-get when they are missing, starts
# `gatehouse demo` (its dev server certificate names a CRL distribution point, as a real
# one would), scans it with both tools, prints the findings by severity and exits 1 when
# any LOW, MEDIUM, HIGH or CRITICAL finding remains (0 otherwise; 2 when it cannot run).
# OK and INFO are not findings. The demo's dev CA is passed to testssl (--add-ca) so the
# chain of trust is judged as a client that trusts it would.
#
# Not counted (listed as "not the gateway's"): the testssl finding ids in
# TLS_AUDIT_IGNORE, by default DNS_CAArecord: a CAA record is a property of the DNS zone
# of the name scanned (here `localhost`), which no gateway setting can change.
#
# sslscan assigns no severity; the script grades its XML: SSLv2/SSLv3 or a null,
# anonymous or weak cipher HIGH; TLS 1.0/1.1, a medium-strength cipher, TLS compression
# or insecure renegotiation MEDIUM; heartbleed CRITICAL; a certificate key under
# 2048 bits (RSA) or 256 bits (EC), or a SHA-1/MD5 signature HIGH.
#
#   scripts/tls-audit.sh                 # builds the release binary if needed
#   GATEHOUSE=path/to/gatehouse scripts/tls-audit.sh
#   KEEP=dir scripts/tls-audit.sh        # keep the raw reports in dir
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v testssl >/dev/null || missing+=(testssl.sh)
command -v sslscan >/dev/null || missing+=(sslscan)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q "${missing[@]}" >&2 || { echo "cannot install ${missing[*]}" >&2; exit 2; }
fi

if [ -z "${GATEHOUSE:-}" ]; then
  cargo build --release --quiet --bin gatehouse
  GATEHOUSE=./target/release/gatehouse
fi
work=$(mktemp -d)
out="$work/demo.out"
"$GATEHOUSE" demo --port 0 >"$out" 2>"$work/demo.err" &
demo=$!
cleanup() {
  kill -INT "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$work"/*.json "$work"/*.xml "$work"/*.txt "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q '^# 7' "$out" && break; sleep 0.2; done
port=$(grep -m1 -o 'https://localhost:[0-9]*' "$out" | sed 's/.*://')
ca=$(grep -m1 -o -- '--cacert [^ ]*' "$out" | sed 's/--cacert //')
[ -n "$port" ] && [ -n "$ca" ] || { echo "demo did not start" >&2; cat "$work/demo.err" >&2; exit 2; }
echo "scanning gatehouse demo at localhost:$port ($("$GATEHOUSE" --version), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'))"

echo "testssl $(testssl --version 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -m1 -o '[0-9][0-9]*\.[0-9][0-9.]*' || true)..."
testssl --quiet --color 0 --warnings off --add-ca "$ca" --jsonfile "$work/testssl.json" \
  "https://localhost:$port" >"$work/testssl.txt" 2>&1 || true
echo "sslscan $(sslscan --version 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -m1 -o '[0-9][0-9]*\.[0-9][0-9.]*' || true)..."
sslscan --no-colour --show-certificate --xml="$work/sslscan.xml" "localhost:$port" >"$work/sslscan.txt" 2>&1 || true

python3 - "$work/testssl.json" "$work/sslscan.xml" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
from collections import Counter
FAIL = ["CRITICAL", "HIGH", "MEDIUM", "LOW"]
IGNORE = os.environ.get("TLS_AUDIT_IGNORE", "DNS_CAArecord").split()
findings = []
ignored = []
try:
    for f in json.load(open(sys.argv[1])):
        sev = f.get("severity", "")
        if sev in FAIL and f.get("id") in IGNORE:
            ignored.append((sev, f.get("id", ""), f.get("finding", "")))
        elif sev in FAIL or sev == "WARN":
            findings.append(("testssl", sev, f.get("id", ""), f.get("finding", "")))
except Exception as e:
    findings.append(("testssl", "HIGH", "no-report", f"no JSON report: {e}"))
try:
    root = ET.parse(sys.argv[2]).getroot()
    test = root.find("ssltest")
    if test is None:
        raise ValueError("no ssltest element")
    for p in test.findall("protocol"):
        if p.get("enabled") == "1":
            v = f'{p.get("type","").upper()}v{p.get("version","")}'
            if p.get("type") == "ssl":
                findings.append(("sslscan", "HIGH", "protocol", f"{v} enabled"))
            elif p.get("version") in ("1.0", "1.1"):
                findings.append(("sslscan", "MEDIUM", "protocol", f"{v} enabled"))
    for c in test.findall("cipher"):
        s = c.get("strength", "")
        name = f'{c.get("sslversion")} {c.get("cipher")}'
        if s in ("null", "anonymous", "weak"):
            findings.append(("sslscan", "HIGH", "cipher", f"{name} ({s})"))
        elif s == "medium":
            findings.append(("sslscan", "MEDIUM", "cipher", f"{name} ({s})"))
    for g in test.findall("group"):
        if int(g.get("bits", "0") or 0) < 112:
            findings.append(("sslscan", "MEDIUM", "group", f'{g.get("sslversion")} {g.get("name")} ({g.get("bits")} bits)'))
    for h in test.findall("heartbleed"):
        if h.get("vulnerable") == "1":
            findings.append(("sslscan", "CRITICAL", "heartbleed", h.get("sslversion", "")))
    for c in test.findall("compression"):
        if c.get("supported") == "1":
            findings.append(("sslscan", "MEDIUM", "compression", "TLS compression supported"))
    for r in test.findall("renegotiation"):
        if r.get("supported") == "1" and r.get("secure") != "1":
            findings.append(("sslscan", "MEDIUM", "renegotiation", "insecure renegotiation"))
    for cert in test.iter("certificate"):
        if cert.get("type") not in (None, "short"):
            continue
        alg = (cert.findtext("signature-algorithm") or "").lower()
        if "sha1" in alg or "md5" in alg:
            findings.append(("sslscan", "HIGH", "signature", alg))
        pk = cert.find("pk")
        if pk is not None:
            bits = int(pk.get("bits", "0") or 0)
            kind = (pk.get("type") or "").upper()
            # sslscan gives an EC key's security level (P-256: 128), an RSA key's size.
            if (kind == "RSA" and bits < 2048) or (kind.startswith("EC") and bits < 128):
                findings.append(("sslscan", "HIGH", "key", f"{kind} {bits} bits"))
except Exception as e:
    findings.append(("sslscan", "HIGH", "no-report", f"no XML report: {e}"))
counts = Counter((t, s) for t, s, _, _ in findings)
for tool in ("testssl", "sslscan"):
    parts = ", ".join(f"{s} {counts.get((tool, s), 0)}" for s in FAIL)
    warn = counts.get((tool, "WARN"), 0)
    print(f"{tool}: {parts}" + (f" (scan warnings: {warn})" if warn else ""))
for t, s, i, f in findings:
    print(f"  {t} {s:<8} {i}: {f}")
for s, i, f in ignored:
    print(f"  not the gateway's (TLS_AUDIT_IGNORE): testssl {s} {i}: {f}")
bad = sum(1 for _, s, _, _ in findings if s in FAIL)
print("TLS audit " + ("passed: no LOW/MEDIUM/HIGH/CRITICAL finding" if bad == 0 else f"FAILED: {bad} finding(s)"))
sys.exit(1 if bad else 0)
PY
