"""A writer process for concurrency tests: `python -m tests.support.appender URL WORKER N`.

Appends N events to the shared stream SHARED (reloading and retrying on conflict) and N to its
own stream W-<WORKER>, printing one JSON line per committed append (positions), so a test can
check that everything reported committed is in the log.
"""

from __future__ import annotations

import json
import sys

from cli.logging_setup import configure
from events.envelope import NewEvent
from events.errors import ConcurrencyConflict, StoreUnavailable
from events.store import AppendContext
from workflow.bootstrap import build_app


def main(url: str, worker: str, count: int) -> None:
    configure("warning", sys.stderr)
    store = build_app(url).store
    context = AppendContext(actor=f"worker{worker}", role="coordinator")
    for i in range(count):
        for stream in ("SHARED", f"W-{worker}"):
            while True:
                try:
                    version = store.stream_version(stream)
                    result = store.append(
                        stream, version, [NewEvent("Tested", {"worker": worker, "i": i})],
                        AppendContext(actor=context.actor, role=context.role,
                                      command_id=f"w{worker}-{stream}-{i}"),
                    )
                    break
                except (ConcurrencyConflict, StoreUnavailable) as error:
                    if isinstance(error, StoreUnavailable) and not error.retryable:
                        raise
            print(json.dumps({"stream": stream, "positions": list(result.positions)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
