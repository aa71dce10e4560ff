"""The Lambda base image that ``sam local invoke`` builds its container on (``make lambda-image``).

    python -m tests.invoke.image [--rebuild]

``sam local invoke`` runs a zip function in an image it builds ``FROM public.ecr.aws/lambda/python:3.11-x86_64``,
adding its Runtime API emulator (``/var/rapid/aws-lambda-rie``) and the function's layers (``/opt``), and mounts
the built function at ``/var/task``. This module puts that base image in place:

1. already there (the official image, or a stand-in built earlier): nothing to do;
2. Docker can pull the official image: it is pulled;
3. otherwise (no registry but the package registries, as on this machine kind) a **stand-in** is built from
   Debian's packages and PyPI only, and tagged with the official name so that ``sam local invoke
   --skip-pull-image`` builds on it:
   - ``debootstrap --variant=minbase --include=python3.11,ca-certificates bookworm``: Debian 12, whose CPython is
     3.11, the runtime's minor version; nothing else is installed in it (no pip, no boto3);
   - Lambda's runtime interface client, ``awslambdaric``, from PyPI, in ``/var/runtime`` as in Lambda;
   - ``/var/runtime/bootstrap``, which runs ``python3.11 -m awslambdaric $_HANDLER`` with Lambda's module path:
     the function (``/var/task``), then the layers (``/opt/python/lib/python3.11/site-packages``,
     ``/opt/python``), then the runtime (``/var/runtime``);
   - Lambda's environment (``LAMBDA_TASK_ROOT``, ``LAMBDA_RUNTIME_DIR``, ``PATH``, ``LD_LIBRARY_PATH``, ``TZ``) and
     working directory.

It is not Amazon Linux (glibc 2.36, not Amazon Linux 2's 2.26; Debian's build of CPython 3.11.2, not Lambda's
3.11.x) and has no runtime-provided boto3: what runs in it is the built function, its layer and the standard
library, nothing else. ``image_kind()`` tells the two apart by a label the stand-in carries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON_VERSION = "3.11"  # template.yaml's PythonRuntime default; Debian bookworm's CPython
REPOSITORY = "public.ecr.aws/lambda/python"
# The tag sam local invoke builds on for a python3.11 x86_64 zip function; the short tag is the one users pull.
IMAGE = f"{REPOSITORY}:{PYTHON_VERSION}-x86_64"
ALIASES = (f"{REPOSITORY}:{PYTHON_VERSION}",)
STAND_IN_LABEL = "org.ckpt-pipeline.lambda-stand-in"
SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
AWSLAMBDARIC = "awslambdaric>=3,<5"
WORK_DIR = REPO_ROOT / ".lambda-image"

BOOTSTRAP = f"""#!/bin/sh
# Stand-in for Lambda's python{PYTHON_VERSION} bootstrap (tests/invoke/image.py): Debian's CPython runs Lambda's
# runtime interface client, which takes events from the Runtime API (in sam local invoke, SAM's emulator) and
# calls the handler. The module path is Lambda's: the function, the layers, then the runtime.
export AWS_EXECUTION_ENV=AWS_Lambda_python{PYTHON_VERSION}
export PYTHONPATH=/var/task:/opt/python/lib/python{PYTHON_VERSION}/site-packages:/opt/python:/var/runtime
exec /var/lang/bin/python{PYTHON_VERSION} -m awslambdaric "${{_HANDLER:-$AWS_LAMBDA_FUNCTION_HANDLER}}"
"""

# The official image's environment and working directory (its Dockerfile), less what does not apply.
IMAGE_CHANGES = (
    "ENV LANG=C.UTF-8",
    "ENV TZ=:/etc/localtime",
    "ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "ENV LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib"
    ":/opt/lib",
    "ENV LAMBDA_TASK_ROOT=/var/task",
    "ENV LAMBDA_RUNTIME_DIR=/var/runtime",
    "WORKDIR /var/task",
    'ENTRYPOINT ["/var/runtime/bootstrap"]',
)


class ImageError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"lambda-image: {text}", flush=True)


def image_kind(image: str = IMAGE) -> str | None:
    """``"official"``, ``"stand-in: …"`` (what it is built from), or None when Docker has no such image."""
    found = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        if "No such image" in found.stderr or "No such object" in found.stderr:
            return None
        raise ImageError(f"docker image inspect failed (is the Docker daemon running?): {found.stderr.strip()}")
    labels = json.loads(found.stdout or "null") or {}
    stand_in = labels.get(STAND_IN_LABEL)
    return f"stand-in: {stand_in}" if stand_in else "official"


def ensure(rebuild: bool = False) -> str:
    """The base image in place; returns its kind."""
    if not rebuild:
        kind = image_kind()
        if kind is not None:
            say(f"{IMAGE} is present ({kind})")
            return kind
        if pull_official():
            return "official"
    build_stand_in()
    kind = image_kind()
    if kind is None:
        raise ImageError(f"{IMAGE} is still missing after the build")
    return kind


def prune_invoke_images() -> None:
    """Remove the invoke images SAM built on the stand-in and left untagged when it built a newer one (each
    holds a copy of the layer). Only those older than a few minutes: a build in progress keeps its own."""
    subprocess.run(
        ["docker", "image", "prune", "--force", "--filter", f"label={STAND_IN_LABEL}", "--filter", "until=5m"],
        capture_output=True,
        check=False,
    )


def pull_official() -> bool:
    say(f"pulling the official image {IMAGE}")
    pulled = subprocess.run(["docker", "pull", IMAGE], capture_output=True, text=True, check=False, timeout=900)
    if pulled.returncode != 0:
        say(f"cannot pull it here ({(pulled.stderr.strip().splitlines() or ['no reason given'])[-1]})")
        return False
    for alias in ALIASES:
        subprocess.run(["docker", "tag", IMAGE, alias], check=True)
    say(f"using the official image {IMAGE}")
    return True


def build_stand_in() -> None:
    """Debian's CPython 3.11 + awslambdaric, imported into Docker under the official tag."""
    if os.geteuid() != 0:
        raise ImageError("building the stand-in needs root (debootstrap): run make lambda-image as root")
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is missing: apt-get install -y debootstrap")
    say(
        f"building a STAND-IN for {IMAGE} (the official image cannot be pulled here): Debian {SUITE} "
        f"(python{PYTHON_VERSION}, from Debian's packages) + {AWSLAMBDARIC} (from PyPI). It is not Amazon Linux."
    )
    started = time.monotonic()
    rootfs = WORK_DIR / "rootfs"
    _remove(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include=python{PYTHON_VERSION},ca-certificates",
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            "debootstrap",
        )
        say(f"· Debian {SUITE} root file system: {time.monotonic() - started:.0f} s")
        runtime = rootfs / "var" / "runtime"
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-cache-dir",
                "--target",
                str(runtime),
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                PYTHON_VERSION,
                "--platform",
                "manylinux2014_x86_64",
                AWSLAMBDARIC,
            ],
            "pip install awslambdaric",
        )
        version = _installed_version(runtime, "awslambdaric")
        (runtime / "bootstrap").write_text(BOOTSTRAP)
        (runtime / "bootstrap").chmod(0o755)
        lang_bin = rootfs / "var" / "lang" / "bin"
        lang_bin.mkdir(parents=True, exist_ok=True)
        for name in (f"python{PYTHON_VERSION}", "python3", "python"):
            (lang_bin / name).symlink_to(f"/usr/bin/python{PYTHON_VERSION}")
        for folder in ("var/task", "opt", "tmp"):
            (rootfs / folder).mkdir(parents=True, exist_ok=True)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            _empty(rootfs / leftover)
        debian_python = _debian_python_version(rootfs)
        description = (
            f"Debian {SUITE}, CPython {debian_python} (Debian's python{PYTHON_VERSION}), awslambdaric {version}"
        )
        changes = [*IMAGE_CHANGES, f'LABEL {STAND_IN_LABEL}="{description}"']
        say("· importing it into Docker")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        command = ["docker", "import"]
        for change in changes:
            command += ["--change", change]
        imported = subprocess.run([*command, "-", IMAGE], stdin=tar.stdout, capture_output=True, text=True, check=False)
        if tar.stdout is not None:
            tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ImageError(f"docker import failed: {imported.stderr.strip()}")
        for alias in ALIASES:
            subprocess.run(["docker", "tag", IMAGE, alias], check=True)
    finally:
        _remove(rootfs)
    say(f"built the stand-in {IMAGE} ({description}) in {time.monotonic() - started:.0f} s")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise ImageError(f"{what} failed ({done.returncode}):\n{tail}")


def _installed_version(target: Path, distribution: str) -> str:
    for info in target.glob(f"{distribution}-*.dist-info"):
        return info.name.removeprefix(f"{distribution}-").removesuffix(".dist-info")
    raise ImageError(f"{distribution} is not in {target}")


def _debian_python_version(rootfs: Path) -> str:
    status = (rootfs / "var" / "lib" / "dpkg" / "status").read_text()
    for paragraph in status.split("\n\n"):
        if f"Package: python{PYTHON_VERSION}-minimal\n" in paragraph:
            for line in paragraph.splitlines():
                if line.startswith("Version: "):
                    return line.removeprefix("Version: ")
    return "unknown"


def _empty(folder: Path) -> None:
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def _remove(rootfs: Path) -> None:
    """Delete a root file system, first unmounting what a failed debootstrap may have left mounted in it."""
    if not rootfs.exists():
        return
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{rootfs}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(rootfs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="build the stand-in even if an image is present")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        print("lambda-image: docker is missing (apt-get install -y docker.io, then start dockerd)", file=sys.stderr)
        return 2
    try:
        ensure(rebuild=args.rebuild)
    except ImageError as exc:
        print(f"lambda-image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
