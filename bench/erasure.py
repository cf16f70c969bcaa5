"""`make bench` (fourth part): how long a per-user erasure takes. 10,000 records of one subject
(9,000 with blobs of their own, 1,000 deduplicated against another user's 100 blobs, which must
stay), seeded straight into PostgreSQL (`MEDIA_DATABASE_URL`, else an embedded one) and a volume
store in a temp dir, erased by `erasure.run` in process on one thread: the same batches, locks and
receipt as the job. Figures: seconds for the 10,000, records per second, and the receipt.

Written to bench/results/erasure.json. `python -m bench.erasure` runs it alone (`--records N`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import database
from common import erasure
from common.config import Config
from common.migrate import migrate
from common.services import build_services
from localdev.seed import insert_records, random_blobs

RESULTS = Path(__file__).resolve().parent / "results" / "erasure.json"


def measure(database_url: str, data_dir: Path, records: int) -> dict[str, Any]:
    migrate(database_url)
    cas = data_dir / "cas"
    shared = random_blobs(cas, 100)
    own = random_blobs(cas, records - 1000)
    subject = f"bench-erase-{time.time_ns()}"
    insert_records(database_url, subject, own + shared * 10)
    insert_records(database_url, f"bench-keep-{time.time_ns()}", shared)
    config = Config.from_env(
        {
            "MEDIA_DATA_DIR": str(data_dir),
            "MEDIA_DATABASE_URL": database_url,
            "MEDIA_JWT_SECRET": "bench-" + "x" * 40,
            "MEDIA_PRESIGN_SECRET": "bench-" + "p" * 40,
        }
    )
    services = build_services(config, background=False)
    try:
        job = services.repo.start_erasure(subject, "bench")
        assert services.repo.claim_erasure(erasure.LEASE_SECONDS, job.id) is not None
        started = time.perf_counter()
        cpu = time.process_time()
        assert erasure.run(services.store, services.repo, job.id, time.monotonic() + 3600, audited=False)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu
        done = services.repo.erasure(job.id)
        assert done is not None
        assert done.records_removed == records
        assert done.blobs_removed == len(own)
    finally:
        services.repo.close()
    return {
        "records": records,
        "seconds": round(seconds, 2),
        "records_per_second": round(records / seconds),
        "client_cpu_seconds": round(cpu_seconds, 2),
        "receipt": {
            "records_removed": done.records_removed,
            "blobs_removed": done.blobs_removed,
            "bytes_freed": done.bytes_freed,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="merase", dir="/tmp") as tmp:  # a short socket path
        url, stop_database = database(Path(tmp))
        try:
            result = measure(url, Path(tmp) / "data", args.records)
        finally:
            stop_database()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"erasure: {result['records']} records in {result['seconds']} s"
        f" ({result['records_per_second']} records/s, {result['client_cpu_seconds']} CPU s in the"
        f" function); receipt {result['receipt']}"
    )


if __name__ == "__main__":
    main()
