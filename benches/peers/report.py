#!/usr/bin/env python3
"""Peer bench helper (Python standard library only), called by run.sh:

  report.py header                      the CSV header line
  report.py parse --kind wrk|h2load --raw FILE --commit C --round R --variant V --mode M [--rss-kb N]
                                        one CSV row from a wrk or h2load output
  report.py rss PID                     resident memory (kB) of PID and its child processes
  report.py report W                    medians over rounds: W/results.md (printed), W/medians.csv,
                                        W/results.svg
"""
import argparse
import csv
import datetime
import html
import os
import platform
import re
import statistics
import sys

FIELDS = ["commit", "round", "variant", "mode", "rps", "p50_ms", "p99_ms", "non2xx", "errors",
          "reused_tokens", "rss_kb"]
VARIANTS = ["direct", "nginx-pass", "haproxy-jwt", "envoy-jwt", "gatehouse", "bare-hyper",
            "bare-pingora"]
MODES = ["warm", "1k", "cold", "deny", "none", "h2"]
MODE_TEXT = {
    "warm": "one valid token, repeated",
    "1k": "1 000 valid tokens, round robin",
    "cold": "every request a token not seen before",
    "deny": "one token with a broken signature, repeated (401 expected)",
    "none": "no token (401 expected)",
    "h2": "HTTP/2, one valid token",
}
COLOURS = {"direct": "#9e9e9e", "nginx-pass": "#4caf50", "haproxy-jwt": "#2196f3",
           "envoy-jwt": "#9c27b0", "gatehouse": "#e65100", "bare-hyper": "#795548",
           "bare-pingora": "#00897b"}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)?", text.strip())
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, None: 1.0}[m.group(2)]


def parse_wrk(out):
    row = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    row["rps"] = float(m.group(1)) if m else 0.0
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % pct, out, re.M)
        row[key] = to_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    row["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    row["errors"] = sum(int(g) for g in m.groups()) if m else 0
    m = re.search(r"^tokens: (\d+) reused: (\d+)", out, re.M)
    row["reused_tokens"] = int(m.group(2)) if m else ""
    if not re.search(r"requests in", out):
        row["errors"] = "no-output"
    return row


def parse_h2load(out, log):
    row = {"reused_tokens": ""}
    m = re.search(r"^finished in [0-9.]+\w*, ([0-9.]+) req/s", out, re.M)
    row["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out, re.M)
    done = int(m.group(3)) if m else 0
    row["errors"] = int(m.group(6)) + int(m.group(7)) if m else "no-output"
    m = re.search(r"^status codes: (\d+) 2xx", out, re.M)
    row["non2xx"] = done - (int(m.group(1)) if m else 0)
    # --log-file: start time (µs since the epoch), status, µs until the response ended
    times = []
    if log and os.path.exists(log):
        with open(log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[2].strip().isdigit():
                    times.append(int(parts[2]) / 1000.0)
    times.sort()
    row["p50_ms"] = times[len(times) // 2] if times else None
    row["p99_ms"] = times[min(len(times) - 1, int(len(times) * 0.99))] if times else None
    return row


def rss_kb(pid):
    """VmRSS of pid plus its descendants (nginx's worker is the master's child)."""
    if pid <= 0:
        return ""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
        todo.extend(children.get(p, []))
    return total or ""


def fmt_num(v, nd=2):
    return "" if v is None or v == "" else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def cmd_parse(a):
    with open(a.raw, errors="replace") as f:
        out = f.read()
    if a.kind == "wrk":
        row = parse_wrk(out)
    else:
        log = re.sub(r"-h2\.txt$", "-h2.log", a.raw)
        row = parse_h2load(out, log)
    row.update(commit=a.commit, round=a.round, variant=a.variant, mode=a.mode, rss_kb=a.rss_kb)
    w = csv.DictWriter(sys.stdout, FIELDS, lineterminator="\n")
    w.writerow({k: fmt_num(row.get(k), 3 if k.endswith("_ms") else 1) for k in FIELDS})


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def load_medians(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cells = {}
    for r in rows:
        cells.setdefault((r["variant"], r["mode"]), []).append(r)
    med = {}
    for key, rs in cells.items():
        errs = [num(r["errors"]) for r in rs]
        med[key] = {
            "rps": median(num(r["rps"]) for r in rs),
            "p50_ms": median(num(r["p50_ms"]) for r in rs),
            "p99_ms": median(num(r["p99_ms"]) for r in rs),
            "non2xx": median(num(r["non2xx"]) for r in rs),
            "errors": median(errs) if None not in errs else "no output",
            "reused_tokens": max((num(r["reused_tokens"]) or 0) for r in rs),
            "rss_kb": median(num(r["rss_kb"]) for r in rs),
            "rounds": len(rs),
            "spread": (min(num(r["rps"]) or 0 for r in rs), max(num(r["rps"]) or 0 for r in rs)),
        }
    commits = sorted({r["commit"] for r in rows})
    return rows, med, commits


def ratio(a, b):
    return a / b if a and b else None


def k(v):
    return "" if v is None else (f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}")


def r2(v):
    return "" if v is None else f"{v:.2f}"


def ms(v):
    return "" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def svg_chart(med, variants, modes, title):
    """Grouped bars: one group per load, one bar per variant, height = median req/s."""
    width, height, left, top, bottom = 980, 440, 70, 70, 80
    plot_w, plot_h = width - left - 20, height - top - bottom
    peak = max([med[(v, m)]["rps"] or 0 for v in variants for m in modes if (v, m) in med] + [1])
    raw_step = peak / 5
    mag = 10 ** (len(str(int(raw_step))) - 1)
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw_step)
    ticks = int(-(-peak // step))
    ymax = ticks * step
    group_w = plot_w / max(len(modes), 1)
    bar_w = min(24.0, (group_w - 16) / max(len(variants), 1))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    for i in range(ticks + 1):
        val = step * i
        y = top + plot_h - plot_h * i / ticks
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{k(val)}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
               f'text-anchor="middle">req/s (median)</text>')
    for gi, m in enumerate(modes):
        gx = left + gi * group_w + (group_w - bar_w * len(variants)) / 2
        for vi, v in enumerate(variants):
            cell = med.get((v, m))
            if not cell or not cell["rps"]:
                continue
            h = plot_h * cell["rps"] / ymax
            x, y = gx + vi * bar_w, top + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                       f'fill="{COLOURS.get(v, "#555")}"><title>{v} {m}: {cell["rps"]:.0f} req/s'
                       f'</title></rect>')
            cx = x + (bar_w - 2) / 2
            out.append(f'<text x="{cx:.1f}" y="{y - 4:.1f}" font-size="9" text-anchor="start" '
                       f'transform="rotate(-90 {cx:.1f} {y - 4:.1f})" dominant-baseline="middle">'
                       f'{k(cell["rps"])}</text>')
        out.append(f'<text x="{left + gi * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" '
                   f'text-anchor="middle" font-weight="bold">{m}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>')
    lx = left
    for v in variants:
        out.append(f'<rect x="{lx}" y="{height - 40}" width="12" height="12" fill="{COLOURS.get(v, "#555")}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 30}">{v}</text>')
        lx += 24 + 7.5 * len(v)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cmd_report(a):
    w = a.work
    rows, med, commits = load_medians(os.path.join(w, "results.csv"))
    if not rows:
        sys.exit("report.py: no results in %s/results.csv" % w)
    variants = [v for v in VARIANTS if any((v, m) in med for m in MODES)]
    modes = [m for m in MODES if any((v, m) in med for v in VARIANTS)]
    rounds = max(int(r["round"]) for r in rows)

    def rps(v, m):
        return (med.get((v, m)) or {}).get("rps")

    lines = []
    add = lines.append
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    add(f"## Peer bench: {when}, commit {', '.join(commits)}")
    add("")
    add(f"{os.cpu_count()} cores, {platform.system()} {platform.release()}; medians of {rounds} "
        f"round(s); settings: {a.settings or 'see run.sh'}. Only ratios within one run mean "
        "anything: the machine and its neighbours change between runs.")
    add("")
    add("Median req/s (non-2xx responses are expected only in `deny` and `none`):")
    add("")
    add("| variant | " + " | ".join(modes) + " |")
    add("|---|" + "---:|" * len(modes))
    for v in variants:
        add(f"| {v} | " + " | ".join(k(rps(v, m)) for m in modes) + " |")
    add("")
    add("Each cell: req/s, latency percentiles (ms), non-2xx responses and socket errors "
        "(medians), ratio of req/s to nginx-pass and to haproxy-jwt in the same load "
        "(nginx-pass: to its `warm` where it has no such load), resident memory after the cell:")
    add("")
    add("| variant | load | req/s | p50 | p99 | non-2xx | errors | ÷ nginx-pass | ÷ haproxy-jwt | RSS MB | min–max req/s |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for v in variants:
        for m in modes:
            c = med.get((v, m))
            if not c:
                continue
            base = rps("nginx-pass", m) or rps("nginx-pass", "warm")
            rss = f"{c['rss_kb'] / 1024:.0f}" if c["rss_kb"] else ""
            lo, hi = c["spread"]
            add(f"| {v} | {m} | {c['rps'] or 0:.0f} | {ms(c['p50_ms'])} | {ms(c['p99_ms'])} | "
                f"{fmt_num(c['non2xx'], 0)} | {fmt_num(c['errors'], 0)} | "
                f"{r2(ratio(c['rps'], base))} | {r2(ratio(c['rps'], rps('haproxy-jwt', m)))} | {rss} | "
                f"{lo:.0f}–{hi:.0f} |")
    add("")
    # Each target: (numerator cell, denominator cell, measure, goal). Its ratio is given two
    # ways. "of medians" divides the two cells' medians. "paired" divides the two cells of
    # each round (measured within a minute or two of each other: mode-major order) and
    # takes the median of those per-round ratios, so that the machine's drift between
    # rounds cancels; the verdict needs both.
    key = [
        (("gatehouse", "warm"), ("nginx-pass", "warm"), "rps", (">=", 0.8)),
        (("gatehouse", "warm"), ("haproxy-jwt", "warm"), "rps", (">=", 2.0)),
        (("gatehouse", "warm"), ("envoy-jwt", "warm"), "rps", (">=", 1.8)),
        (("gatehouse", "warm"), ("bare-pingora", "warm"), "rps", None),
        (("gatehouse", "warm"), ("bare-hyper", "warm"), "rps", None),
        (("gatehouse", "1k"), ("gatehouse", "warm"), "rps", (">=", 0.95)),
        (("gatehouse", "cold"), ("haproxy-jwt", "cold"), "rps", (">=", 1.0)),
        (("gatehouse", "deny"), ("gatehouse", "warm"), "rps", (">=", 1.5)),
        (("gatehouse", "h2"), ("haproxy-jwt", "h2"), "rps", (">=", 1.5)),
        (("gatehouse", "warm"), ("nginx-pass", "warm"), "p99_ms", ("<=", 1.5)),
    ]
    per_round = {(r["variant"], r["mode"], r["round"]): r for r in rows}
    round_ids = sorted({r["round"] for r in rows}, key=int)
    table = []
    for a_cell, b_cell, what, goal in key:
        of_medians = ratio((med.get(a_cell) or {}).get(what), (med.get(b_cell) or {}).get(what))
        if of_medians is None:
            continue
        rounds_r = []
        for rnd in round_ids:
            a_row, b_row = per_round.get(a_cell + (rnd,)), per_round.get(b_cell + (rnd,))
            if a_row and b_row:
                rounds_r.append(ratio(num(a_row[what]), num(b_row[what])))
        paired = median(rounds_r)
        verdict = ""
        if goal:
            op, bound = goal

            def ok(x):
                return x is not None and (x >= bound if op == ">=" else x <= bound)
            verdict = "met" if ok(of_medians) and ok(paired) else "missed"
        name = f"gatehouse {a_cell[1]} / {b_cell[0]} {b_cell[1]}"
        if what == "p99_ms":
            name = f"gatehouse p99 {a_cell[1]} / {b_cell[0]} p99 {b_cell[1]}"
        elif a_cell[0] == b_cell[0]:
            name = f"gatehouse {a_cell[1]} / gatehouse {b_cell[1]}"
        table.append((name, of_medians, paired, rounds_r, goal, verdict))
    if table:
        add("Key ratios (req/s unless named): of the medians, and paired (the median of the "
            "per-round ratios, each round's two cells measured minutes apart at most):")
        add("")
        add("| ratio | of medians | paired | per round | target | |")
        add("|---|---:|---:|---|---|---|")
        for name, of_medians, paired, rounds_r, goal, verdict in table:
            per = " / ".join(r2(x) for x in rounds_r)
            target = f"{'≥' if goal[0] == '>=' else '≤'} {goal[1]}" if goal else ""
            add(f"| {name} | {of_medians:.2f} | {r2(paired)} | {per} | {target} | {verdict} |")
        add("")
    gh_rss = (med.get(("gatehouse", "cold")) or {}).get("rss_kb")
    if gh_rss:
        add(f"gatehouse resident memory after the `cold` load: {gh_rss / 1024:.0f} MB (median, /proc VmRSS).")
        add("")
    reused = [(v, c["reused_tokens"]) for (v, m), c in med.items() if m == "cold" and c["reused_tokens"]]
    for v, n in reused:
        add(f"Warning: {v} `cold` reused {n:.0f} tokens (raise COLD_TOKENS): those requests were not cold.")
    notes = os.path.join(w, "notes.txt")
    if os.path.exists(notes):
        with open(notes) as f:
            for line in f:
                add(f"Note: {line.strip()}")
    if reused or os.path.exists(notes):
        add("")
    add("Loads: " + "; ".join(f"`{m}` {MODE_TEXT[m]}" for m in modes) + ".")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(w, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(w, "medians.csv"), "w", newline="") as f:
        cw = csv.writer(f, lineterminator="\n")
        cw.writerow(["variant", "mode", "rps", "p50_ms", "p99_ms", "non2xx", "errors", "rss_kb", "rounds"])
        for v in variants:
            for m in modes:
                c = med.get((v, m))
                if c:
                    cw.writerow([v, m, fmt_num(c["rps"], 1), fmt_num(c["p50_ms"], 3),
                                 fmt_num(c["p99_ms"], 3), fmt_num(c["non2xx"], 0),
                                 fmt_num(c["errors"], 0), fmt_num(c["rss_kb"], 0), c["rounds"]])
    with open(os.path.join(w, "results.svg"), "w") as f:
        f.write(svg_chart(med, variants, modes,
                          f"Peer bench, one worker thread each, commit {', '.join(commits)} "
                          f"(median req/s of {rounds} round(s))"))
    sys.stdout.write(text)
    print(f"\nwritten: {w}/results.csv, {w}/medians.csv, {w}/results.md, {w}/results.svg")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("header")
    p = sub.add_parser("parse")
    p.add_argument("--kind", choices=["wrk", "h2load"], required=True)
    for opt in ("--raw", "--commit", "--round", "--variant", "--mode"):
        p.add_argument(opt, required=True)
    p.add_argument("--rss-kb", default="")
    p = sub.add_parser("rss")
    p.add_argument("pid", type=int)
    p = sub.add_parser("report")
    p.add_argument("work")
    p.add_argument("--settings", default=os.environ.get("PEERS_SETTINGS", ""))
    a = ap.parse_args()
    if a.cmd == "header":
        print(",".join(FIELDS))
    elif a.cmd == "parse":
        cmd_parse(a)
    elif a.cmd == "rss":
        print(rss_kb(a.pid))
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
