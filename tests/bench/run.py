"""``make bench``: every figure of issue 10 against its baseline in one run, the table, ``bench/results.json``.

    python -m tests.bench [--quick] [--only latency batch ...] [--rebuild auto|always|never]

Timed figures run interleaved with their baselines (the order alternates each round) and report min and
median; ratios are ours / baseline, of the medians (of the minimums in brackets). Counts are taken after the
timed figures, with the counters of ``tests/bench/counting.py`` installed (they are never on while timing).
Everything runs on loopback: moto's standalone server, the local PostgreSQL, the handler in this process (its
log lines and EMF metrics go to /dev/null while measured). Loopback has no network latency, so every figure is
the client's and moto's own cost; against S3 or R2 add the transfer time and about 1 ms per database round
trip to RDS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.local_stack import REPO_ROOT

INNER_COLD_START_KEYS = ("exit_ms", "import_ms", "promoter_ms", "modules")
FIGURES = ("latency", "batch", "e2e", "counts", "sizes", "profiles", "staging", "coldstart", "layer")
MiB = 1024 * 1024
MB = 1000 * 1000
KiB = 1024
X = "\N{MULTIPLICATION SIGN}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(samples: list[float]) -> dict[str, float]:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "n": len(samples),
    }


def ratio(ours: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    return {"median": ours["median"] / baseline["median"], "min": ours["min"] / baseline["min"]}


# --- timed figures ------------------------------------------------------------------------------------------------


def interleaved(rounds: int, ours: Callable[[int], float], baseline: Callable[[int], float]) -> dict[str, Any]:
    """``rounds`` of (ours, baseline), the order alternating; each callable returns the seconds it measured."""
    samples: dict[str, list[float]] = {"ours": [], "baseline": []}
    steps = [("ours", ours), ("baseline", baseline)]
    for round_ in range(rounds):
        for name, step in steps if round_ % 2 == 0 else steps[::-1]:
            samples[name].append(step(round_))
    result = {name: stats(values) for name, values in samples.items()}
    return {**result, "ratio": ratio(result["ours"], result["baseline"]), "samples": samples}


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def figure_latency(stack: Any, floor: Any, rounds: int, pair: dict[str, bytes]) -> dict[str, Any]:
    from tests.bench.stack import quiet_stdout

    ours_jobs, floor_jobs = stack.new_jobs(rounds, pair), stack.new_jobs(rounds, pair)
    stack.receive(ours_jobs + floor_jobs)
    ours_events = [stack.event([job]) for job in ours_jobs]
    floor_events = [stack.event([job]) for job in floor_jobs]
    with quiet_stdout():
        result = interleaved(
            rounds,
            lambda i: timed(lambda: stack.invoke(ours_events[i])),
            lambda i: timed(lambda: floor.handle(floor_events[i])),
        )
    _check_outcomes(stack, ours_jobs + floor_jobs, "promoted")
    stack.delete(ours_jobs + floor_jobs)
    stack.purge(ours_jobs + floor_jobs)
    return result


def figure_batch(stack: Any, floor: Any, size: int, repeats: int, pair: dict[str, bytes]) -> dict[str, Any]:
    """``size`` manifests, one job each, delivered in events of 10; the total time of each side per repeat."""
    from tests.bench.stack import quiet_stdout

    totals: dict[str, list[float]] = {"ours": [], "baseline": []}
    for repeat in range(repeats):
        ours_jobs, floor_jobs = stack.new_jobs(size, pair), stack.new_jobs(size, pair)
        stack.receive(ours_jobs + floor_jobs, timeout=120)
        batches = range(0, size, 10)
        spent = {"ours": 0.0, "baseline": 0.0}
        with quiet_stdout():
            for n, start in enumerate(batches):
                ours_event = stack.event(ours_jobs[start : start + 10])
                floor_event = stack.event(floor_jobs[start : start + 10])
                steps = [
                    ("ours", lambda e=ours_event: stack.invoke(e)),
                    ("baseline", lambda e=floor_event: floor.handle(e)),
                ]
                for name, step in steps if (n + repeat) % 2 == 0 else steps[::-1]:
                    spent[name] += timed(step)
        _check_outcomes(stack, ours_jobs + floor_jobs, "promoted")
        for name, seconds in spent.items():
            totals[name].append(seconds)
        stack.delete(ours_jobs + floor_jobs)
        stack.purge(ours_jobs + floor_jobs)
        log(f"  batch repeat {repeat + 1}/{repeats}: ours {spent['ours']:.2f} s, floor {spent['baseline']:.2f} s")
    result = {name: stats(values) for name, values in totals.items()}
    return {**result, "ratio": ratio(result["ours"], result["baseline"]), "samples": totals, "manifests": size}


def figure_e2e(stack: Any, repeats: int, pair: dict[str, bytes]) -> dict[str, Any]:
    """From the manifest's PUT to the handler's return (its transaction committed), through the queue: the
    poller's long-polling ReceiveMessage, the event, the handler; then the poller deletes the message."""
    from sqlalchemy import text

    from tests.bench.stack import quiet_stdout

    sqs, queue = stack.pipeline.sqs, stack.pipeline.queue_url
    to_receive, to_commit = [], []
    jobs = stack.new_jobs(repeats, pair, manifest=False)
    for job in jobs:
        started = time.perf_counter()
        stack.put_manifest(job)
        messages: list[dict[str, Any]] = []
        deadline = started + 60
        while not messages:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the notification of {job.manifest_key} did not arrive within 60 s")
            answer = sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=20, AttributeNames=["All"]
            )
            for message in answer.get("Messages", []):
                if job.manifest_key in stack.keys_of(message):
                    messages.append(message)
                else:
                    sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        received = time.perf_counter()
        with quiet_stdout():
            stack.invoke(stack.pipeline.lambda_event(messages))
        committed = time.perf_counter()
        for message in messages:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        with stack.engine.connect() as connection:
            path = connection.execute(
                text("SELECT checkpoint_path FROM validation_results WHERE job_id = :job AND epoch = 20"),
                {"job": job.job_id},
            ).scalar_one()
        assert path and path.endswith("last.pt"), path
        to_receive.append(received - started)
        to_commit.append(committed - started)
    stack.purge(jobs)
    return {"to_receive": stats(to_receive), "ours": stats(to_commit), "samples": to_commit}


def _check_outcomes(stack: Any, jobs: list[Any], expected: str) -> None:
    outcomes = stack.outcomes(jobs)
    if outcomes.count(expected) < len(jobs):
        raise RuntimeError(f"expected {len(jobs)} {expected}, the records say {outcomes}")


# --- counted figures ----------------------------------------------------------------------------------------------


def figure_counts(stack: Any, probe: Any, floor: Any, pair: dict[str, bytes]) -> dict[str, Any]:
    """One promotion and one duplicate delivery of the same SQS event, each side, counted; a warm-up first
    (the connections the probe made the engine drop are opened again there)."""
    from tests.bench.stack import quiet_stdout

    jobs = stack.new_jobs(4, pair)
    stack.receive(jobs)
    result: dict[str, Any] = {}
    with quiet_stdout():
        for side, run, warm, job in (
            ("ours", stack.invoke, jobs[0], jobs[1]),
            ("baseline", floor.handle, jobs[2], jobs[3]),
        ):
            run(stack.event([warm]))
            with probe.count() as promotion:
                run(stack.event([job]))
            with probe.count() as duplicate:
                run(stack.event([job]))
            result[side] = {"promotion": promotion.as_dict(), "duplicate": duplicate.as_dict()}
    outcomes = stack.outcomes([jobs[1]]), stack.outcomes([jobs[3]])
    assert all(o == ["promoted", "duplicate"] for o in outcomes), outcomes
    stack.delete(jobs)
    stack.purge(jobs)
    return result


def figure_sizes(stack: Any, probe: Any, floor: Any, sizes_mb: list[int]) -> list[dict[str, Any]]:
    """One last.pt of each size (decimal MB; above 64 MiB the trainer stages it as a multipart upload), promoted
    through the handler and by the floor: latency, bytes of the checkpoint read, S3 calls, round trips."""
    from tests.bench.stack import quiet_stdout

    rows = []
    for size_mb in sizes_mb:
        data = os.urandom(size_mb * MB)
        ours, theirs = stack.new_jobs(1, {"last": data}, {"last": 20}), stack.new_jobs(1, {"last": data}, {"last": 20})
        del data
        stack.receive(ours + theirs)
        head = stack.pipeline.s3.head_object(Bucket=stack.bucket, Key=stack.layout.staged_key(ours[0].ref, "last"))
        row: dict[str, Any] = {"size_mb": size_mb, "etag_parts": _parts(head["ETag"])}
        with quiet_stdout():
            for side, run, job in (("ours", stack.invoke, ours[0]), ("baseline", floor.handle, theirs[0])):
                try:
                    with probe.count() as tally:
                        seconds = timed(lambda run=run, job=job: run(stack.event([job])))
                except Exception as exc:  # the floor refuses files without a store checksum
                    row[side] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                row[side] = {
                    "seconds": seconds,
                    "checkpoint_bytes_read": tally.bytes_read(".pt"),
                    "s3_calls": tally.s3_calls,
                    "s3_operations": dict(tally.s3_operations),
                    "round_trips": tally.round_trips,
                }
        stack.delete(ours + theirs)
        stack.purge(ours + theirs)
        rows.append(row)
        log(f"  {size_mb} MB: {row}")
    return rows


def _parts(etag: str) -> int:
    tail = etag.strip('"').rpartition("-")[2]
    return int(tail) if "-" in etag and tail.isdigit() else 0


# --- the table ----------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _timed_row(
    figure: str, result: dict[str, Any], fmt: Callable[[float], str], target: float | None
) -> dict[str, Any]:
    ours, base, r = result["ours"], result["baseline"], result["ratio"]
    return {
        "figure": figure,
        "ours": f"{fmt(ours['median'])} (min {fmt(ours['min'])})",
        "baseline": f"{fmt(base['median'])} (min {fmt(base['min'])})",
        "ratio": f"{r['median']:.2f}{X} ({r['min']:.2f}{X})",
        "target": f"≤ {target}{X}" if target else "report",
        "met": None if target is None else r["median"] <= target,
    }


def _ops(tally: dict[str, Any]) -> str:
    short = {"GetObject": "GET", "HeadObject": "HEAD", "CopyObject": "COPY"}
    ops = ", ".join(f"{short.get(op, op)} {n}" for op, n in tally["s3_operations"].items())
    return f"{tally['s3_calls']} ({ops})" if ops else "0"


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "latency" in results:
        rows.append(
            _timed_row(f"promotion latency, SQS event, 2 {X} 1 MiB: handler vs floor", results["latency"], _ms, 1.3)
        )
    if "batch" in results:
        n = results["batch"]["manifests"]
        rows.append(
            _timed_row(f"SQS batch of {n} manifests (events of 10): handler vs floor", results["batch"], _s, 1.3)
        )
    if "counts" in results:
        counts = results["counts"]
        for kind, s3_target in (("promotion", None), ("duplicate", None)):
            ours, base = counts["ours"][kind], counts["baseline"][kind]
            target_calls = s3_target if s3_target is not None else base["s3_calls"]
            rows.append(
                {
                    "figure": f"S3 calls per {kind}",
                    "ours": _ops(ours),
                    "baseline": _ops(base),
                    "ratio": f"{ours['s3_calls'] / max(base['s3_calls'], 1):.2f}{X}",
                    "target": f"≤ {target_calls} (the essential ones)",
                    "met": ours["s3_calls"] <= target_calls,
                }
            )
        for kind in ("promotion", "duplicate"):
            ours, base = counts["ours"][kind], counts["baseline"][kind]
            rows.append(
                {
                    "figure": f"database round trips per {kind} (statements; of them via SQLAlchemy)",
                    "ours": f"{ours['round_trips']} ({ours['statements']}; {len(ours['sql_statements'])})",
                    "baseline": f"{base['round_trips']} ({base['statements']}; {len(base['sql_statements'])})",
                    "ratio": f"{ours['round_trips'] / max(base['round_trips'], 1):.2f}{X}",
                    "target": "≤ 12",
                    "met": ours["round_trips"] <= 12,
                }
            )
    if "coldstart" in results:
        cold = results["coldstart"]
        for variant, label in (
            ("function_traced", "tracing on, as deployed"),
            ("function_trace_disabled", "POWERTOOLS_TRACE_DISABLED=1"),
        ):
            rows.append(
                _timed_row(
                    f"cold start ({label}), spawn to ready: built handler + promoter vs boto3 + S3 client",
                    {"ours": cold[variant], "baseline": cold["boto3_only"], "ratio": cold["ratio"][variant]},
                    _ms,
                    1.6,
                )
            )
    if "sizes" in results:
        for row in results["sizes"]:
            ours = row.get("ours", {})
            if "error" in ours:
                rows.append(
                    {
                        "figure": f"checkpoint bytes read, {row['size_mb']} MB",
                        "ours": ours["error"],
                        "baseline": "",
                        "ratio": "",
                        "target": "≤ 64 KiB",
                        "met": False,
                    }
                )
                continue
            kind = f"multipart, {row['etag_parts']} parts" if row["etag_parts"] else "single PUT"
            rows.append(
                {
                    "figure": f"checkpoint bytes read through the function, {row['size_mb']} MB ({kind})",
                    "ours": f"{ours['checkpoint_bytes_read']:,} B",
                    "baseline": f"{row.get('baseline', {}).get('checkpoint_bytes_read', 0):,} B (floor)",
                    "ratio": "",
                    "target": "≤ 64 KiB",
                    "met": ours["checkpoint_bytes_read"] <= 64 * KiB,
                }
            )
            base = row.get("baseline", {})
            if "seconds" in base:
                rows.append(
                    {
                        "figure": f"  promotion at {row['size_mb']} MB: latency, S3 calls, round trips",
                        "ours": f"{_ms(ours['seconds'])}, {ours['s3_calls']}, {ours['round_trips']}",
                        "baseline": f"{_ms(base['seconds'])}, {base['s3_calls']}, {base['round_trips']}",
                        "ratio": f"{ours['seconds'] / base['seconds']:.2f}{X}",
                        "target": "report",
                        "met": None,
                    }
                )
    if "staging" in results:
        rows.append(
            _timed_row(
                f"trainer staging of {results['staging']['mib']} MiB: TrainingRun vs upload_file",
                results["staging"],
                _s,
                1.1,
            )
        )
    if "layer" in results:
        layer = results["layer"]["CkptLayer"]
        rows.append(
            {
                "figure": "built layer: file bytes (du -sb), zipped; .pyc files",
                "ours": (
                    f"{layer['unzipped_bytes'] / MB:.1f} MB ({(layer['du_sb'] or 0) / MB:.1f} MB),"
                    f" {layer['zipped_bytes'] / MB:.1f} MB; {layer['pyc_files']}"
                ),
                "baseline": "",
                "ratio": "",
                "target": "report",
                "met": None,
            }
        )
    if "e2e" in results:
        e2e = results["e2e"]
        rows.append(
            {
                "figure": "manifest PUT → committed row, through the SQS poller",
                "ours": f"{_ms(e2e['ours']['median'])} (min {_ms(e2e['ours']['min'])})",
                "baseline": f"received after {_ms(e2e['to_receive']['median'])}",
                "ratio": "",
                "target": "report",
                "met": None,
            }
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    headers = ("figure", "ours", "baseline", "ratio", "target", "")
    cells = [
        (
            r["figure"],
            r["ours"],
            r["baseline"],
            r["ratio"],
            r["target"],
            {True: "met", False: "MISSED", None: ""}[r["met"]],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*c) for c in cells]
    return "\n".join(out)


def render_details(results: dict[str, Any]) -> str:
    out = []
    if "counts" in results:
        for side in ("ours", "baseline"):
            for kind in ("promotion", "duplicate"):
                tally = results["counts"][side][kind]
                out.append(f"\nwire round trips, {'handler' if side == 'ours' else 'floor'}, {kind}:")
                out += [f"  {n + 1:>2}. {line[:150]}" for n, line in enumerate(tally["wire_trace"])]
    if "profiles" in results:
        out.append("\nbytes of a multipart checkpoint read to verify it, by profile and trainer (Promoter, SQLite):")
        for row in results["profiles"]["rows"]:
            out.append(
                f"  {row['profile']:>3}  {row['trainer']:<22} {row['checksum_source']:<10} {row['bytes_read']:>12,} B"
                f"  {row['seconds']:.3f} s  {row['s3_operations']}"
            )
    if "coldstart" in results:
        cold = results["coldstart"]
        for variant in ("function_traced", "function_trace_disabled", "boto3_only"):
            inner = cold["inner"][variant]
            out.append(
                f"\ncold start {variant}: ready {cold[variant]['median'] * 1e3:.0f} ms median (exit"
                f" {inner['exit_ms']:.0f} ms); inside: import {inner['import_ms']:.0f} ms, build"
                f" {inner['promoter_ms']:.0f} ms, {inner['modules']} modules"
            )
        for profile in cold.get("importtime", []):
            label = "tracing on" if profile["traced"] else "tracing disabled"
            out.append(f"\n-X importtime, {label}: {profile['total_ms']:.0f} ms in {profile['modules']} modules")
            out.append(
                "  self time by package: "
                + ", ".join(f"{p['package']} {p['ms']:.0f}" for p in profile["by_package_self_ms"][:10])
            )
            out.append(
                "  cumulative where first imported: "
                + ", ".join(f"{p['package']} {p['ms']:.0f}" for p in profile["entered_cumulative_ms"][:10])
            )
            out.append(
                "  slowest modules (self): "
                + ", ".join(f"{p['module']} {p['ms']:.0f}" for p in profile["slowest_modules_self_ms"][:8])
            )
    if "layer" in results:
        largest = results["layer"]["CkptLayer"]["largest"]
        out.append("\nlayer's largest entries: " + ", ".join(f"{e['entry']} {e['bytes'] / MB:.1f} MB" for e in largest))
    return "\n".join(out)


# --- the run ------------------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    import boto3
    import moto
    import pg8000
    import sqlalchemy

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--untracked-files=no").splitlines(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": {
            "boto3": boto3.__version__,
            "moto": moto.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "pg8000": pg8000.__version__,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="run only these figures")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes: a smoke run")
    parser.add_argument("--rounds", type=int, default=30, help="promotions per side for the latency figure")
    parser.add_argument("--batch", type=int, default=200, help="manifests in the batch figure")
    parser.add_argument("--batch-repeats", type=int, default=3)
    parser.add_argument("--e2e-repeats", type=int, default=5)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[8, 100, 300])
    parser.add_argument("--profile-mb", type=int, default=100, help="the multipart file of the by-profile bytes")
    parser.add_argument("--staging-mib", type=int, default=200)
    parser.add_argument("--staging-repeats", type=int, default=7)
    parser.add_argument("--cold-repeats", type=int, default=10)
    parser.add_argument(
        "--rebuild",
        choices=("auto", "always", "never"),
        default="auto",
        help="sam build before the cold start: when missing or older than the sources (auto)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch, args.batch_repeats, args.e2e_repeats = 6, 20, 1, 2
        args.sizes_mb, args.profile_mb, args.staging_mib, args.staging_repeats, args.cold_repeats = (
            [8, 70],
            70,
            70,
            1,
            2,
        )
    figures = set(args.only or FIGURES)
    functions = str(REPO_ROOT / "functions")
    if functions not in sys.path:
        sys.path.insert(0, functions)

    from tests.bench import coldstart, staging
    from tests.bench.counting import CostProbe
    from tests.bench.floor import Floor
    from tests.bench.stack import Stack, bench_database, plain_postgres_url, quiet_stdout
    from tests.e2e.local_stack import moto_server

    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(), "arguments": {k: str(v) for k, v in vars(args).items()}}
    if figures & {"coldstart", "layer"}:
        log("checking the build (sam build when it is missing or older than the sources)")
        results["build"] = coldstart.ensure_build(REPO_ROOT, args.rebuild)
        log(f"  {results['build']}")
    if "staging" in figures:
        log(f"trainer staging: {args.staging_mib} MiB, {args.staging_repeats} rounds")
        # First, on a moto server of its own: after the other figures (their moto server alive, the disk still
        # writing back) the same code measured 1.26-1.32x against 1.03-1.11x alone: the machine, not the trainer.
        # TrainingRun logs through the ckpt loggers: kept off stdout.
        with moto_server() as staging_endpoint, quiet_stdout():
            samples = staging.staging(staging_endpoint, args.staging_mib * MiB, args.staging_repeats)
        ours, base = stats(samples["training_run"]), stats(samples["upload_file"])
        results["staging"] = {
            "ours": ours,
            "baseline": base,
            "ratio": ratio(ours, base),
            "samples": samples,
            "mib": args.staging_mib,
        }
    pair = {"best": os.urandom(MiB), "last": os.urandom(MiB)}
    with moto_server() as endpoint, bench_database() as database_url:
        stack = Stack(endpoint, database_url)
        floor = Floor(endpoint, stack.bucket, plain_postgres_url(database_url))
        # warm: the handler's first invocation builds its promoter; the floor prepares its statements
        warm = stack.new_jobs(2, pair)
        stack.receive(warm)
        with quiet_stdout():
            stack.invoke(stack.event([warm[0]]))
            floor.handle(stack.event([warm[1]]))
        stack.delete(warm)

        if "latency" in figures:
            log(f"promotion latency: {args.rounds} rounds, interleaved")
            results["latency"] = figure_latency(stack, floor, args.rounds, pair)
        if "batch" in figures:
            log(f"SQS batch: {args.batch} manifests per side, {args.batch_repeats} repeats")
            results["batch"] = figure_batch(stack, floor, args.batch, args.batch_repeats, pair)
        if "e2e" in figures:
            log(f"end to end through the poller: {args.e2e_repeats} manifests")
            results["e2e"] = figure_e2e(stack, args.e2e_repeats, pair)
        if "coldstart" in figures:
            log(f"cold starts: {args.cold_repeats} of each variant, interleaved; then -X importtime")
            samples = coldstart.cold_starts(REPO_ROOT, endpoint, stack.bucket, database_url, args.cold_repeats)
            cold: dict[str, Any] = {name: stats([s["ready_ms"] / 1e3 for s in runs]) for name, runs in samples.items()}
            cold["ratio"] = {
                name: ratio(cold[name], cold["boto3_only"]) for name in ("function_traced", "function_trace_disabled")
            }
            cold["inner"] = {
                name: {key: statistics.median(s[key] for s in runs) for key in INNER_COLD_START_KEYS}
                for name, runs in samples.items()
            }
            cold["samples"] = samples
            cold["importtime"] = [
                coldstart.import_profile(REPO_ROOT, endpoint, stack.bucket, database_url, traced)
                for traced in (True, False)
            ]
            results["coldstart"] = cold

        # counts: the probe is installed only now, after every timed figure
        if figures & {"counts", "sizes", "profiles"}:
            with CostProbe() as probe:
                probe.watch_promoter(stack.handler.get_promoter())
                counted_floor = Floor(endpoint, stack.bucket, plain_postgres_url(database_url))  # a counted connection
                probe.watch_client(counted_floor.s3)
                if "counts" in figures:
                    log("counts: S3 calls, round trips, statements per promotion and per duplicate")
                    results["counts"] = figure_counts(stack, probe, counted_floor, pair)
                if "sizes" in figures:
                    log(f"checkpoint sizes {args.sizes_mb} MB: bytes read, calls, round trips, latency")
                    results["sizes"] = figure_sizes(stack, probe, counted_floor, args.sizes_mb)
                if "profiles" in figures:
                    log(f"bytes read by profile and trainer: {args.profile_mb} MB multipart")
                    with quiet_stdout():
                        rows = staging.bytes_by_profile(endpoint, args.profile_mb * MB, probe)
                    results["profiles"] = {"size_mb": args.profile_mb, "rows": rows}
                counted_floor.close()
        floor.close()
        stack.engine.dispose()
        stack.handler.get_promoter().store.engine.dispose()
    if "layer" in figures:
        log("built layer and function sizes")
        results["layer"] = coldstart.package_sizes(REPO_ROOT)

    results["seconds"] = time.perf_counter() - started
    results["table"] = table_rows(results)
    print(render(results["table"]))
    print(render_details(results))
    print(f"\n{results['seconds']:.0f} s; results in {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
