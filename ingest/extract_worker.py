"""One extraction worker: reads a JSON request on stdin, writes the pages it read as JSON on stdout.

Started by ingest.extract for each page range of a long PDF (`python -m ingest.extract_worker`); the
request and reply are described in ingest.extract.read_range.
"""

from __future__ import annotations

import json
import sys

from ingest.extract import read_range


def main() -> None:
    reply = read_range(json.loads(sys.stdin.buffer.read()))
    sys.stdout.write(json.dumps(reply))


if __name__ == "__main__":
    main()
