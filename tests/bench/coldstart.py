"""Cold start and package size of the BUILT function (``sam build``'s ``.aws-sam/build``).

A cold start here is a fresh interpreter, from its spawn to its exit, that imports the built handler with
Lambda's ``sys.path`` (the function's folder, then the layer's ``python/``) and builds its promoter (settings,
engine, the schema check's connection, the S3 client), against the local stack. The baseline is a fresh
interpreter that only imports boto3 and creates an S3 client.

The figure is the time from the spawn to the moment the child is ready for its first event: Lambda's INIT ends
there, and an execution environment is never torn down as part of a cold start. The interpreter's teardown at
exit (some 100 ms for the baseline's 466 modules, more for the function's 800) is recorded beside it.

Both run ``python -I -S -B``: no site-packages but the ones named, no ``PYTHON*`` variables, and no bytecode
written, because Lambda's ``/var/task`` and ``/opt`` are read-only: whatever ``.pyc`` the build does not ship is
compiled again on every cold start. The baseline's boto3 is the venv's, compiled at install, as the Lambda
runtime's own boto3 is. The function runs with the environment template.yaml gives it plus Lambda's own
(``LAMBDA_TASK_ROOT`` etc., so Powertools' Tracer is on, as ``Tracing: Active`` has it in AWS), and again with
``POWERTOOLS_TRACE_DISABLED=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

FUNCTION = "PromoteCheckpointsFunction"
LAYER = "CkptLayer"
SOURCES = ("layers/ckpt/ckpt", "layers/ckpt/requirements.txt", "functions", "template.yaml", "samconfig.toml")


def build_dir(root: Path) -> Path:
    return root / ".aws-sam" / "build"


def stale_reason(root: Path) -> str | None:
    """Why the build cannot be measured as it is (missing, or older than a source file); None when current."""
    built = build_dir(root) / "template.yaml"
    if not (build_dir(root) / FUNCTION).is_dir() or not (build_dir(root) / LAYER / "python").is_dir():
        return "no build"
    newest = max(
        (path.stat().st_mtime, str(path))
        for source in SOURCES
        for path in ([root / source] if (root / source).is_file() else (root / source).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    )
    if newest[0] > built.stat().st_mtime:
        return f"{Path(newest[1]).relative_to(root)} changed after the build"
    return None


def ensure_build(root: Path, rebuild: str = "auto") -> dict[str, Any]:
    """Build as ``make build`` does (sam build, then compiled to bytecode) when ``rebuild`` is "always", or "auto"
    and the build is missing or stale."""
    reason = stale_reason(root)
    if rebuild == "never" or (rebuild == "auto" and reason is None):
        return {"built": False, "stale": reason}
    started = time.perf_counter()
    result = subprocess.run(
        ["make", "--no-print-directory", "build"],
        cwd=root,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sam build failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return {"built": True, "because": reason or "asked to", "seconds": round(time.perf_counter() - started, 1)}


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def package_sizes(root: Path) -> dict[str, Any]:
    """The built layer and function: bytes unzipped (as ``du -sb`` counts file contents), zipped (deflate, as
    ``sam package`` zips them), files, ``.pyc`` files, and the layer's largest top-level entries."""
    sizes: dict[str, Any] = {}
    for name in (LAYER, FUNCTION):
        folder = build_dir(root) / name
        unzipped, files = _tree_size(folder)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / f"{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    zf.write(path, path.relative_to(folder))
            zipped = archive.stat().st_size
        du = subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True).stdout.split()
        sizes[name] = {
            "unzipped_bytes": unzipped,
            "du_sb": int(du[0]) if du else None,
            "zipped_bytes": zipped,
            "files": files,
            "pyc_files": sum(1 for _ in folder.rglob("*.pyc")),
        }
    python = build_dir(root) / LAYER / "python"
    entries = [(_tree_size(p)[0] if p.is_dir() else p.stat().st_size, p.name) for p in python.iterdir()]
    sizes[LAYER]["largest"] = [{"entry": name, "bytes": size} for size, name in sorted(entries, reverse=True)[:12]]
    return sizes


# --- cold starts -------------------------------------------------------------------------------------------------

_FUNCTION_SCRIPT = """
import sys, time, json
started = time.perf_counter()
sys.path[:0] = {paths!r}
from promote_checkpoints import handler
imported = time.perf_counter()
handler.get_promoter()
built = time.perf_counter()
print(json.dumps({{"ready_monotonic": time.monotonic(), "import_ms": (imported - started) * 1e3,
                  "promoter_ms": (built - imported) * 1e3, "modules": len(sys.modules)}}))
"""

_BASELINE_SCRIPT = """
import sys, time, json
started = time.perf_counter()
sys.path[:0] = {paths!r}
import boto3
imported = time.perf_counter()
boto3.client("s3", endpoint_url={endpoint!r}, region_name="us-east-1")
built = time.perf_counter()
print(json.dumps({{"ready_monotonic": time.monotonic(), "import_ms": (imported - started) * 1e3,
                  "promoter_ms": (built - imported) * 1e3, "modules": len(sys.modules)}}))
"""


def lambda_environment(root: Path, endpoint: str, bucket: str, database_url: str, traced: bool) -> dict[str, str]:
    """template.yaml's environment for the function, plus what Lambda sets itself."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TZ": ":UTC",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "LAMBDA_TASK_ROOT": str(build_dir(root) / FUNCTION),
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "CHECKPOINT_BUCKET": bucket,
        "AWS_S3_ENDPOINT_URL": endpoint,
        "DATABASE_URL": database_url,
        "POWERTOOLS_SERVICE_NAME": "checkpoint-promotion",
        "POWERTOOLS_METRICS_NAMESPACE": "CheckpointPipeline",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "LOG_LEVEL": "INFO",
    }
    if not traced:
        env["POWERTOOLS_TRACE_DISABLED"] = "1"
    return env


def _spawn(script: str, env: dict[str, str], extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """One cold start: ``ready_ms`` from the spawn to the moment it is ready for an event (CLOCK_MONOTONIC is the
    machine's, shared by both processes), ``exit_ms`` from the spawn to the exit, and what the child measured."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", *extra, "-c", script], env=env, capture_output=True, text=True
    )
    exited = time.monotonic()
    if result.returncode != 0:
        raise RuntimeError(f"cold start failed:\n{result.stderr[-3000:]}")
    inner = json.loads(result.stdout.strip().splitlines()[-1])
    ready = inner.pop("ready_monotonic")
    return {"ready_ms": (ready - started) * 1e3, "exit_ms": (exited - started) * 1e3, **inner}, result.stderr


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def cold_starts(
    root: Path, endpoint: str, bucket: str, database_url: str, repeats: int
) -> dict[str, list[dict[str, float]]]:
    """``repeats`` cold starts of each variant, interleaved (the order rotates each round)."""
    paths = [str(build_dir(root) / FUNCTION), str(build_dir(root) / LAYER / "python")]
    variants = {
        "function_traced": (
            _FUNCTION_SCRIPT.format(paths=paths),
            lambda_environment(root, endpoint, bucket, database_url, traced=True),
        ),
        "function_trace_disabled": (
            _FUNCTION_SCRIPT.format(paths=paths),
            lambda_environment(root, endpoint, bucket, database_url, traced=False),
        ),
        "boto3_only": (
            _BASELINE_SCRIPT.format(paths=[_site_packages()], endpoint=endpoint),
            lambda_environment(root, endpoint, bucket, database_url, traced=False),
        ),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            script, env = variants[name]
            samples[name].append(_spawn(script, env)[0])
    return samples


def import_profile(
    root: Path, endpoint: str, bucket: str, database_url: str, traced: bool, top: int = 15
) -> dict[str, Any]:
    """``-X importtime`` of one cold start of the function: self time by package, each package's cumulative
    time where it is first imported from elsewhere, and the slowest single modules."""
    paths = [str(build_dir(root) / FUNCTION), str(build_dir(root) / LAYER / "python")]
    env = lambda_environment(root, endpoint, bucket, database_url, traced=traced)
    _, stderr = _spawn(_FUNCTION_SCRIPT.format(paths=paths), env, ("-X", "importtime"))
    rows = []  # (self µs, cumulative µs, module, depth), in the order Python prints them: children first
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = (part for part in line[len("import time:") :].split("|"))
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((int(self_us), int(cumulative_us), name.strip(), depth))
    # Self time by top-level package: every microsecond counted once.
    by_package_self: dict[str, int] = {}
    for self_us, _, name, _ in rows:
        package = name.split(".")[0]
        by_package_self[package] = by_package_self.get(package, 0) + self_us
    # Cumulative time of each package where another package (or the script) first imports it: what importing
    # it costs, with what it pulls in (so these overlap).
    entered: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    for _, cumulative, name, depth in reversed(rows):  # parents before their children
        while stack and stack[-1][0] >= depth:
            stack.pop()
        package = name.split(".")[0]
        if not stack or stack[-1][1].split(".")[0] != package:
            entered[package] = entered.get(package, 0) + cumulative
        stack.append((depth, name))
    return {
        "traced": traced,
        "total_ms": sum(r[0] for r in rows) / 1e3,
        "modules": len(rows),
        "entered_cumulative_ms": [
            {"package": name, "ms": round(us / 1e3, 1)}
            for name, us in sorted(entered.items(), key=lambda kv: -kv[1])[:top]
        ],
        "by_package_self_ms": [
            {"package": name, "ms": round(us / 1e3, 1)}
            for name, us in sorted(by_package_self.items(), key=lambda kv: -kv[1])[:top]
        ],
        "slowest_modules_self_ms": [
            {"module": name, "ms": round(self_us / 1e3, 1)} for self_us, _, name, _ in sorted(rows, reverse=True)[:top]
        ],
    }
