"""The fold of a rebuild, alone and once, for counting its machine instructions: timings on a
shared virtual machine move by 15% from run to run, the count of instructions by well under 1%,
so a before/after of the clinical rules is measured as instructions (docs/performance.md,
"Fold: what stop 26 bought").

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python -m bench.fold_count STUDY.db --subjects 60 --folds 1
    # the same with --folds 0 (opening, reading the study's facts); the difference is the fold

STUDY.db: a study made by `trialflow demo --subjects N` (bench.projections keeps one under
/tmp/trialflow-bench/). The first `--subjects` subject streams, in order of their ids, are
folded `--folds` times for every subject read model (`projections.parallel.fold_chunk`, as a
rebuild's worker folds a chunk: read, decode, fold, rules, rows encoded).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from events.engine import create_store_engine
from events.store import EventStore
from events.streams import STUDY_STREAM
from projections import registry
from projections.parallel import fold_chunk
from projections.runner import is_subject_stream
from workflow.study import fold_study


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fold_count",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a SQLite file made by `trialflow demo`")
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--folds", type=int, default=1)
    args = parser.parse_args(argv)
    engine = create_store_engine(f"sqlite:///{args.study}")
    store = EventStore(engine)
    study = fold_study(store.read_stream(STUDY_STREAM))
    for version in study.protocol_texts:  # parsed before, as a rebuild's runner has them
        study.protocol_of(version)
    subjects = sorted(s for s in store.stream_heads() if is_subject_stream(s))[:args.subjects]
    wanted = {s: [n for n in registry.NAMES if n != registry.STUDY] for s in subjects}
    head = store.last_position()
    for _ in range(args.folds):
        start = time.process_time()
        fold_chunk(store, study, subjects, wanted, head)
        print(f"{len(subjects)} subjects folded in {time.process_time() - start:.3f} s of CPU")
    engine.dispose()


if __name__ == "__main__":
    main()
