"""Tests for report.py (standard library only): python3 -m unittest benches/peers/test_report.py

The fixtures are real wrk 4.1 and h2load 1.52 outputs from a smoke run of the bench."""
import csv
import os
import subprocess
import sys
import tempfile
import unittest
import xml.dom.minidom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

WRK_DENY = """Running 2s test @ https://127.0.0.1:18443/orders/1
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.00ms    4.21ms  39.63ms   74.78%
    Req/Sec     3.16k     0.94k    5.41k    75.00%
  Latency Distribution
     50%    5.32ms
     75%    8.10ms
     90%   10.75ms
     99%   19.25ms
  6452 requests in 2.06s, 466.26KB read
  Socket errors: connect 0, read 1626, write 0, timeout 0
  Non-2xx or 3xx responses: 6452
Requests/sec:   3128.18
Transfer/sec:    226.06KB
"""

WRK_COLD = """Running 2s test @ https://127.0.0.1:18443/orders/1
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.86ms    0.90ms  11.51ms   73.89%
    Req/Sec     8.27k     1.11k    9.65k    60.00%
  Latency Distribution
     50%  850.00us
     75%    4.27ms
     90%    4.86ms
     99%    1.02s
  16439 requests in 2.00s, 6.15MB read
Requests/sec:   8204.56
Transfer/sec:      3.07MB
tokens: 240000 reused: 17
"""

H2LOAD = """finished in 2.03s, 5907.50 req/s, 950.97KB/s
requests: 11815 total, 11975 started, 11815 done, 11800 succeeded, 15 failed, 3 errored, 2 timeout
status codes: 11800 2xx, 0 3xx, 15 4xx, 0 5xx
traffic: 1.86MB (1947584) total, 436.13KB (446599) headers (space savings 82.97%), 1.23MB (1287835) data
"""


class Parsers(unittest.TestCase):
    def test_wrk_with_errors_and_non2xx(self):
        row = report.parse_wrk(WRK_DENY)
        self.assertEqual(row["rps"], 3128.18)
        self.assertAlmostEqual(row["p50_ms"], 5.32)
        self.assertAlmostEqual(row["p99_ms"], 19.25)
        self.assertEqual(row["non2xx"], 6452)
        self.assertEqual(row["errors"], 1626)
        self.assertEqual(row["reused_tokens"], "")

    def test_wrk_units_and_reused_tokens(self):
        row = report.parse_wrk(WRK_COLD)
        self.assertAlmostEqual(row["p50_ms"], 0.85)
        self.assertAlmostEqual(row["p99_ms"], 1020.0)
        self.assertEqual(row["non2xx"], 0)
        self.assertEqual(row["errors"], 0)
        self.assertEqual(row["reused_tokens"], 17)

    def test_wrk_without_output_is_flagged(self):
        row = report.parse_wrk("unable to connect to 127.0.0.1:18443 Connection refused\n")
        self.assertEqual(row["rps"], 0.0)
        self.assertEqual(row["errors"], "no-output")

    def test_h2load_counts_and_percentiles_from_log(self):
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
            for i in range(1, 101):  # 1 ms .. 100 ms
                f.write(f"1796507641865359\t200\t{i * 1000}\n")
        try:
            row = report.parse_h2load(H2LOAD, f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(row["rps"], 5907.5)
        self.assertEqual(row["non2xx"], 15)
        self.assertEqual(row["errors"], 5)
        self.assertEqual(row["p50_ms"], 51.0)
        self.assertEqual(row["p99_ms"], 100.0)

    def test_rss_of_this_process(self):
        self.assertGreater(report.rss_kb(os.getpid()), 1000)
        self.assertEqual(report.rss_kb(0), "")


class Report(unittest.TestCase):
    def test_medians_ratios_and_chart(self):
        rows = [
            # round, variant, mode, rps, p99
            (1, "nginx-pass", "warm", 20000, 4.0), (2, "nginx-pass", "warm", 22000, 5.0),
            (3, "nginx-pass", "warm", 90000, 6.0),
            (1, "haproxy-jwt", "warm", 10000, 8.0), (2, "haproxy-jwt", "warm", 11000, 9.0),
            (3, "haproxy-jwt", "warm", 12000, 10.0),
            (1, "gatehouse", "warm", 15000, 6.0), (2, "gatehouse", "warm", 16500, 7.5),
            (3, "gatehouse", "warm", 1000, 9.0),
            (1, "gatehouse", "cold", 8000, 9.0), (2, "gatehouse", "cold", 8000, 9.0),
            (3, "gatehouse", "cold", 8000, 9.0),
        ]
        with tempfile.TemporaryDirectory() as w:
            with open(os.path.join(w, "results.csv"), "w", newline="") as f:
                cw = csv.DictWriter(f, report.FIELDS, lineterminator="\n")
                cw.writeheader()
                for r, v, m, rps, p99 in rows:
                    cw.writerow({"commit": "abc1234", "round": r, "variant": v, "mode": m,
                                 "rps": rps, "p50_ms": 1.0, "p99_ms": p99, "non2xx": 0,
                                 "errors": 0, "reused_tokens": 0 if m == "cold" else "",
                                 "rss_kb": 51200})
            out = subprocess.run([sys.executable, report.__file__, "report", w],
                                 capture_output=True, text=True, check=True).stdout
            self.assertIn("| gatehouse | 15.0k |", out)  # median of 15000, 16500, 1000
            self.assertIn("| gatehouse warm / nginx-pass warm | 0.68 |", out)  # 15000 / 22000
            self.assertIn("| gatehouse warm / haproxy-jwt warm | 1.36 |", out)  # 15000 / 11000
            self.assertIn("| gatehouse p99 warm / nginx-pass p99 warm | 1.50 |", out)  # 7.5 / 5
            # paired: the median of the per-round ratios; the verdict needs both figures
            self.assertIn("| gatehouse warm / nginx-pass warm | 0.68 | 0.75 | 0.75 / 0.75 / 0.01 | ≥ 0.8 | missed |", out)
            self.assertIn("| gatehouse warm / haproxy-jwt warm | 1.36 | 1.50 | 1.50 / 1.50 / 0.08 | ≥ 2.0 | missed |", out)
            self.assertIn("| gatehouse p99 warm / nginx-pass p99 warm | 1.50 | 1.50 | 1.50 / 1.50 / 1.50 | ≤ 1.5 | met |", out)
            self.assertNotIn("cold / haproxy-jwt cold", out)  # no haproxy-jwt cold cell
            self.assertIn("after the `cold` load: 50 MB", out)
            self.assertIn("commit abc1234", out)
            self.assertNotIn("Warning", out)
            with open(os.path.join(w, "medians.csv")) as f:
                medians = list(csv.DictReader(f))
            self.assertEqual(len(medians), 4)
            svg = xml.dom.minidom.parse(os.path.join(w, "results.svg"))
            bars = [r for r in svg.getElementsByTagName("rect") if r.getElementsByTagName("title")]
            self.assertEqual(len(bars), 4)

    def test_reused_cold_tokens_are_warned_about(self):
        with tempfile.TemporaryDirectory() as w:
            with open(os.path.join(w, "results.csv"), "w") as f:
                f.write(",".join(report.FIELDS) + "\n")
                f.write("abc1234,1,gatehouse,cold,9000,1,2,0,0,4000,51200\n")
            out = subprocess.run([sys.executable, report.__file__, "report", w],
                                 capture_output=True, text=True, check=True).stdout
            self.assertIn("Warning: gatehouse `cold` reused 4000 tokens", out)


if __name__ == "__main__":
    unittest.main()
