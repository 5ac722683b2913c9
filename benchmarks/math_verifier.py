r"""Side-by-side benchmark of rlvr's math verifier and Math-Verify, in one process.

    python benchmarks/math_verifier.py [--data-dir ../shared/data] [--no-math-verify]

Sets (each a list of (prediction, gold, expected, contested)):
  dev      verifier_dev/math_equiv_dev.jsonl: hand-labelled pairs (pred vs gold)
  math500  every MATH-500 gold solution against its `answer` (all expected equal)
  gsm8k    every GSM8K test solution against its `#### ` answer (all expected equal)

Rows:
  rlvr        verifiers.math.verify(pred, gold), one call at a time, each bounded at 1 s
              (cheap cases in-process, the rest in the killable worker pool, started beforehand)
  rlvr-batch  verifiers.score_batch("math", ...) over the whole set (what the learner calls)
  math-verify math_verify.verify(parse(gold), parse(pred)) with default settings, inputs prepared
              as its README and verl advise: a gold without a box is wrapped as \boxed{gold}, a bare
              prediction (no $, \(, \[ or \boxed) as $pred$ (default parse finds no LaTeX otherwise)
  mv-raw      the same on the strings exactly as given

Accuracy "nc" is over the non-contested rows; FP = judged equal but labelled different, FN = the
reverse; checks/s = rows / total wall time; p99 and max are per-call latencies in milliseconds
(for rlvr-batch, the whole batch time divided by rows). Needs the `bench` extra (math-verify).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_sets(data_dir: Path) -> dict[str, list[tuple[str, str, bool, bool]]]:
    sets = {}
    dev = []
    with open(data_dir / "verifier_dev" / "math_equiv_dev.jsonl") as f:
        for line in f:
            d = json.loads(line)
            dev.append((d["pred"], d["gold"], bool(d["equal"]), bool(d.get("contested", False))))
    sets["dev"] = dev
    m5 = []
    with open(data_dir / "math500_test.jsonl") as f:
        for line in f:
            d = json.loads(line)
            m5.append((d["solution"], d["answer"], True, False))
    sets["math500"] = m5
    gsm = []
    with open(data_dir / "gsm8k_test.jsonl") as f:
        for line in f:
            d = json.loads(line)
            gsm.append((d["answer"], d["answer"].split("####")[-1].strip(), True, False))
    sets["gsm8k"] = gsm
    return sets


def _wrap(s: str, fmt: str) -> str:
    if any(d in s for d in ("$", "\\(", "\\[", "\\boxed")):
        return s
    return fmt % s


def run_calls(fn, rows):
    verdicts, lat = [], []
    t0 = time.perf_counter()
    for pred, gold, _, _ in rows:
        t = time.perf_counter()
        try:
            v = bool(fn(pred, gold))
        except Exception:
            v = False
        lat.append(time.perf_counter() - t)
        verdicts.append(v)
    return verdicts, time.perf_counter() - t0, lat


def summarize(name, set_name, rows, verdicts, total_s, lat):
    n = len(rows)
    pairs = list(zip(verdicts, rows, strict=True))
    ok = sum(v == r[2] for v, r in pairs)
    nc = [(v, r) for v, r in pairs if not r[3]]
    ok_nc = sum(v == r[2] for v, r in nc)
    fp = sum(v and not r[2] for v, r in pairs)
    fn = sum((not v) and r[2] for v, r in pairs)
    lat_sorted = sorted(lat)
    p99 = lat_sorted[min(n - 1, int(0.99 * n))] if n else 0.0
    return {
        "set": set_name,
        "verifier": name,
        "n": n,
        "acc": 100.0 * ok / n,
        "acc_nc": 100.0 * ok_nc / max(1, len(nc)),
        "fp": fp,
        "fn": fn,
        "cps": n / total_s if total_s > 0 else float("inf"),
        "p99_ms": 1000 * p99,
        "max_ms": 1000 * (lat_sorted[-1] if lat else 0.0),
    }


def print_table(results):
    head = (
        f"| {'set':8} | {'verifier':11} | {'n':>5} | {'acc all':>7} | {'acc nc':>7} | {'FP':>3} | {'FN':>3} "
        f"| {'checks/s':>9} | {'p99 ms':>7} | {'max ms':>7} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in results:
        print(
            f"| {r['set']:8} | {r['verifier']:11} | {r['n']:5d} | {r['acc']:6.2f}% | {r['acc_nc']:6.2f}% | "
            f"{r['fp']:3d} | {r['fn']:3d} | {r['cps']:9.0f} | {r['p99_ms']:7.2f} | {r['max_ms']:7.1f} |"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--no-math-verify", action="store_true", help="only run rlvr's verifier")
    ap.add_argument("--show-errors", action="store_true", help="print the rows rlvr gets wrong")
    args = ap.parse_args(argv)

    import verifiers
    from verifiers import math as vm

    sets = load_sets(args.data_dir)
    vm.warm_up()
    vm.verify(r"\boxed{x^2}", "x*x")  # touch the pool once

    mv = None
    if not args.no_math_verify:
        try:
            import math_verify

            mv = math_verify
            mv.verify(mv.parse("$1$"), mv.parse("$1$"))
        except ImportError:
            print("math-verify is not installed (pip install -e '.[bench]'); skipping its rows", file=sys.stderr)

    results = []
    for set_name, rows in sets.items():
        verdicts, total, lat = run_calls(vm.verify, rows)
        results.append(summarize("rlvr", set_name, rows, verdicts, total, lat))
        if args.show_errors:
            for v, r in zip(verdicts, rows, strict=True):
                if v != r[2]:
                    print(
                        f"  rlvr wrong on {set_name}: expected {r[2]} gold={r[1]!r} pred={r[0][-150:]!r}",
                        file=sys.stderr,
                    )

        t = time.perf_counter()
        got = verifiers.score_batch("math", [r[0] for r in rows], [r[1] for r in rows], timeout_s=1.0)
        total_b = time.perf_counter() - t
        verdicts_b = [g == 1.0 for g in got]
        results.append(summarize("rlvr-batch", set_name, rows, verdicts_b, total_b, [total_b / len(rows)] * len(rows)))

        if mv is not None:

            def mv_check(pred, gold):
                return mv.verify(mv.parse(_wrap(gold, "\\boxed{%s}")), mv.parse(_wrap(pred, "$%s$")))

            def mv_raw(pred, gold):
                return mv.verify(mv.parse(gold), mv.parse(pred))

            verdicts, total, lat = run_calls(mv_check, rows)
            results.append(summarize("math-verify", set_name, rows, verdicts, total, lat))
            verdicts, total, lat = run_calls(mv_raw, rows)
            results.append(summarize("mv-raw", set_name, rows, verdicts, total, lat))

    print_table(results)
    by = {(r["set"], r["verifier"]): r for r in results}
    if ("math500", "math-verify") in by:
        ratio = by[("math500", "rlvr")]["cps"] / by[("math500", "math-verify")]["cps"]
        print(f"\nMATH-500 checks/s, rlvr / math-verify: {ratio:.1f}x")
    stats = verifiers.pool.get_pool(vm.WORKER_MEMORY_MB).stats
    print(f"pool: {stats}")


if __name__ == "__main__":
    main()
