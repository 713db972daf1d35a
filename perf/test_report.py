#!/usr/bin/env python3
"""Unit tests of perf/report.py: medians over rounds and per-round ratios.

Run: python3 -m unittest perf/test_report.py (tests/suites/40-loadgen.sh does).
"""
import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402


def summary(ops, cpu, p99=100.0, p999=200.0, errors=0, rate=None):
    return {
        "target_rate": rate,
        "ops_per_sec": ops,
        "server_cpu_us_per_op": cpu,
        "client_cpu_us_per_op": 1.0,
        "latency_us": {"p50": 10.0, "p99": p99, "p999": p999},
        "errors": errors,
    }


class ReportTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, data):
        (self.out / f"{name}.json").write_text(json.dumps(data))

    def test_rounds_are_read_in_round_order_and_the_old_layout_still_reads(self):
        for r in (10, 2, 1):
            self.write(f"dnd-get-p1.r{r}", summary(r * 1000, 5.0))
        self.write("redis-get-p1", summary(7, 7.0))
        self.assertEqual(list(report.rounds(self.out, "dnd-get-p1")), [1, 2, 10])
        self.assertEqual(report.rounds(self.out, "redis-get-p1")[1]["ops_per_sec"], 7)
        self.assertEqual(report.rounds(self.out, "memcached-get-p1"), {})

    def test_median_and_spread(self):
        self.assertEqual(report.median([3, 1, 2]), 2)
        self.assertEqual(report.median([4, 1, 2, 3]), 2.5)
        self.assertIsNone(report.median([None]))
        self.assertEqual(report.spread([1.0, 3.0, 2.0], 1), "2.0 (1.0–3.0)")
        self.assertEqual(report.spread([2.0], 2), "2.00")

    def test_goal_ratios_pair_rounds_and_point_the_right_way(self):
        # Round 1: ours 5 µs against Redis 7 (1.40x, meets 1.15); round 2:
        # ours 7 against 7.7 (1.10x, misses); round 3 exists only for us.
        self.write("dnd-get-p1.r1", summary(150_000, 5.0))
        self.write("redis-get-p1.r1", summary(100_000, 7.0))
        self.write("dnd-get-p1.r2", summary(100_000, 7.0))
        self.write("redis-get-p1.r2", summary(125_000, 7.7))
        self.write("dnd-get-p1.r3", summary(1, 100.0))
        md = report.goals_section(self.out)
        cpu = next(line for line in md.splitlines() if line.startswith("| server CPU per op, pipeline 1 |"))
        self.assertIn("| 1.25 (1.10–1.40)x | 1 of 2 | 1.15x |", cpu)
        ops = next(line for line in md.splitlines() if line.startswith("| throughput, pipeline 1"))
        # Throughput is ours over theirs: 1.5 and 0.8.
        self.assertIn("| 1.15 (0.80–1.50)x | 1 of 2 | 1x |", ops)

    def test_lower_latency_must_be_strictly_lower(self):
        self.write("dnd-open-50pct.r1", summary(1, 1.0, p99=100.0, p999=300.0))
        self.write("redis-open-50pct.r1", summary(1, 1.0, p99=100.0, p999=600.0))
        md = report.goals_section(self.out)
        p99 = next(line for line in md.splitlines() if line.startswith("| open-loop p99 (lower)"))
        p999 = next(line for line in md.splitlines() if line.startswith("| open-loop p99.9 (lower)"))
        self.assertIn("| 0 of 1 |", p99)
        self.assertIn("| 2.00x | 1 of 1 |", p999)

    def test_open_rates_are_quarters_of_the_peak_with_the_top_capped(self):
        self.assertEqual(report.open_rates(100_000, 60_000), [20_000, 40_000, 60_000])
        self.assertEqual(report.open_rates(80_000, 60_000), [20_000, 40_000, 60_000])
        # A slower peak is used as it is; a larger cap lets a fast host go higher.
        self.assertEqual(report.open_rates(40_000, 60_000), [10_000, 20_000, 30_000])
        self.assertEqual(report.open_rates(400_000, 150_000), [50_000, 100_000, 150_000])

    def test_open_loop_rows_are_titled_by_their_rate(self):
        self.write("dnd-open-low.r1", summary(20_000, 14.0, rate=20_000))
        self.write("memcached-open-low.r1", summary(20_000, 8.0, rate=20_000))
        table = report.table(self.out)
        self.assertIn("| 90/10 open loop at 20,000/s (light) | dnd-cache | 20,000 (of 20,000) |", table)
        self.assertIn("| 90/10 open loop at 20,000/s (light) | memcached |", table)
        self.assertNotIn("(middle)", table)

    def test_open_loop_goals_are_ours_over_the_best_peer_in_each_round(self):
        # CPU: ours 6 and 10 µs against memcached's 8 and 8 → 0.75 (meets
        # 0.8) and 1.25 (misses). p99: round 1 Redis is best (50), round 2
        # memcached (80); ours 50 and 100 → 1.00 (at the best: meets) and 1.25.
        for r, (cpu, p99, redis_p99, mc_p99) in enumerate([(6.0, 50.0, 50.0, 90.0), (10.0, 100.0, 95.0, 80.0)], 1):
            self.write(f"dnd-open-mid.r{r}", summary(40_000, cpu, p99=p99, p999=500.0, rate=40_000))
            self.write(f"redis-open-mid.r{r}", summary(40_000, 9.5, p99=redis_p99, p999=1000.0, rate=40_000))
            self.write(f"memcached-open-mid.r{r}", summary(40_000, 8.0, p99=mc_p99, p999=250.0, rate=40_000))
        md = report.open_goals_section(self.out)
        line = lambda what: next(x for x in md.splitlines() if x.startswith(f"| {what} |"))  # noqa: E731
        self.assertIn(
            "| 90/10 open loop at 40,000/s (middle) | memcached | 1.00 (0.75–1.25)x | 1 of 2 | ≤ 0.8x |",
            line("server CPU per request"),
        )
        self.assertIn("| best of Redis and memcached | 1.12 (1.00–1.25)x | 1 of 2 | ≤ 1x |", line("p99"))
        # p99.9: 500 against the best 250 in both rounds.
        self.assertIn("| 2.00 (2.00–2.00)x | 0 of 2 | ≤ 1x |", line("p99.9"))
        self.assertEqual(report.open_goals_section(Path(self.tmp.name) / "missing"), "")

    def test_open_loop_goals_with_one_peer_name_it(self):
        self.write("dnd-open-high.r1", summary(60_000, 7.0, p99=90.0, rate=60_000))
        self.write("redis-open-high.r1", summary(60_000, 8.0, p99=100.0, rate=60_000))
        md = report.open_goals_section(self.out)
        self.assertIn("| p99 | 90/10 open loop at 60,000/s (heavy) | Redis | 0.90x | 1 of 1 | ≤ 1x |", md)
        self.assertNotIn("server CPU per request", md, "no memcached runs: no CPU row")

    def test_the_floor_is_ours_over_the_echo_in_each_round(self):
        # GET: 4.2 over 4.0 = 1.05 (meets 1.1), 5.0 over 4.0 = 1.25 (misses).
        for r, (ours, echo) in enumerate([(4.2, 4.0), (5.0, 4.0)], 1):
            self.write(f"dnd-get-p1.r{r}", summary(200_000, ours))
            self.write(f"echo-get-p1.r{r}", summary(250_000, echo))
        self.write("echo-set-p1.r1", summary(250_000, 4.0))
        md = report.floor_section(self.out)
        self.assertIn("| GET, pipeline 1 | 1.15 (1.05–1.25)x | 1 of 2 | ≤ 1.1x |", md)
        self.assertNotIn("SET, pipeline 1", md, "no dnd-cache SET runs: no row")
        self.assertIn("| GET, pipeline 1 | echo (floor) | 250,000 |", report.table(self.out))
        self.assertEqual(report.floor_section(Path(self.tmp.name) / "missing"), "")

    def test_client_cpu_ratio_per_round(self):
        (self.out / "client-cpu-requests.txt").write_text("1000000")
        for r, (rb, ours) in enumerate([("0.5 1.5", "0.2 0.8"), ("0.4 1.6", "0.2 0.9")], start=1):
            (self.out / f"redis-benchmark.r{r}.cpu").write_text(rb)
            (self.out / f"loadgen-vs-redis-benchmark.r{r}.cpu").write_text(ours)
        text = report.client_cpu_section(self.out)
        # 2.0 / 1.0 = 2.00x and 2.0 / 1.1 = 1.82x.
        self.assertIn("1.91 (1.82–2.00)x cheaper", text)
        self.assertIn("1 of 2 rounds at goal", text)


if __name__ == "__main__":
    unittest.main()
