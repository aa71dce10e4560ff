"""``make invoke EVENT=events/<file>``: one event through ``sam local invoke`` and the built function, end to end.

    python -m tests.invoke events/s3-object-created.json [--function NAME]

The local stack ``events/env.json`` names is started (``stack.py``), the attempt the event names is staged with
the trainer's code and the platform's rows are written, then the real ``sam local invoke`` runs the function in
a Lambda container (``sam.py``); the function's answer and the job's ``validation_results`` follow (✓ on a row
that names an ``r2://`` checkpoint). Exits 1 when the invocation fails, 2 when it cannot be run here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.invoke import image, sam
from tests.invoke.stack import PROMOTION_FUNCTION, StackError, local_stack

POLLER = "R2QueuePollerFunction"
POLLER_NOT_LOCAL = f"""\
{POLLER} (events/r2-queue-poll.json) cannot run under sam local invoke on this machine yet:
- the local Cloudflare Queue would be reached at http://{{host}}:PORT, and the poller sends its API token only
  over https:// or to a loopback host (ckpt/adapters/cloudflare_queues.py check_base_url), rightly: a relaxation for
  sam local needs an explicit, documented switch in that check, not a quiet exception;
- its token secret is read from Secrets Manager, and template.yaml declares no endpoint variable that
  --env-vars could point at the local one.
make demo R2=1 runs the poller's real handler against a local Cloudflare Queue, R2's rules and moto."""


def function_for(event: Path) -> str:
    """The function an event file is for: the poller's schedule, the API's requests, else the promotion."""
    if event.name == "r2-queue-poll.json":
        return POLLER
    if event.name.startswith("api-"):
        return "CheckpointApiFunction"
    return PROMOTION_FUNCTION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("event", type=Path, help="an event file, e.g. events/s3-object-created.json")
    parser.add_argument("--function", help="the function to invoke (default: the one the event file is for)")
    args = parser.parse_args(argv)
    event_path: Path = args.event if args.event.is_absolute() else Path.cwd() / args.event
    if not event_path.is_file():
        print(f"invoke: no event file {args.event}", file=sys.stderr)
        return 2
    function = args.function or function_for(event_path)
    if function == POLLER:
        print(POLLER_NOT_LOCAL.format(host="host.docker.internal"), file=sys.stderr)
        return 2
    kind = image.image_kind()
    if kind is None:
        print(f"invoke: the base image {image.IMAGE} is missing: run make lambda-image", file=sys.stderr)
        return 2
    say = print
    say(f"· base image {image.IMAGE}: {kind}")
    event = json.loads(event_path.read_text())
    try:
        with local_stack(function) as stack:
            settings = stack.settings
            say(
                f"· local stack (events/env.json): moto S3 on {stack.endpoint}, as {settings['AWS_S3_ENDPOINT_URL']} "
                f"in the container; PostgreSQL {stack.database_url.split('@')[-1]}, as "
                f"{settings['DATABASE_URL'].split('@')[-1]}; forwarded from {stack.gateway} (docker0)"
            )
            stack.reset()
            refs = stack.prepare(event)
            for ref in refs:
                folder = stack.layout.attempt_folder(ref)
                say(
                    f"· trainer: interrupted at epoch 20, staged {folder}{{best.pt (epoch 18), last.pt, manifest.json}}"
                )
            jobs = list(dict.fromkeys(ref.job for ref in refs))
            for job in jobs:
                say(f"· platform: job {job.job_id} has validation_results for epochs 1-20")
            if function != PROMOTION_FUNCTION:  # a function that reads promotions: give it one to read
                for ref in refs:
                    say(f"· promoted here first, for {function} to read: {stack.promote(ref)}")
            say(f"$ {' '.join(sam.command(function, event_path, stack.gateway))}", flush=True)
            invocation = sam.invoke(function, event_path, stack.gateway, echo_log=True)
            say(f"\n· answer of {function} ({invocation.seconds:.1f} s):")
            say(json.dumps(invocation.answer, indent=2) if invocation.answer is not None else invocation.stdout)
            for job in jobs:
                say("")
                say(stack.table(job.job_id))
    except (StackError, image.ImageError, FileNotFoundError, OSError) as exc:
        print(f"invoke: {exc}", file=sys.stderr)
        return 2
    image.prune_invoke_images()
    return 1 if invocation.failed else 0


if __name__ == "__main__":
    sys.exit(main())
