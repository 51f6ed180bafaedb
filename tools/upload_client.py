"""Post a data file to the upload service and print the top-ranked lines (a small client for `serving.upload`).

    python tools/upload_client.py --url http://127.0.0.1:8867 --file data/synthetic/test/part-00000.txt --top_k 5

Waits for GET /ready (the service loads and self-checks its model first), posts the file to /upload with
debug timings, and prints each top-ranked line's number, predicted CTR and its first token (the click label
when the file has one). Exit status 1 when the service is not ready in time or answers an error.
"""
import argparse
import os
import sys
import time

import requests


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    sys.exit(f"error: upload service at {url} not ready after {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8867")
    parser.add_argument("--file", required=True, help="slot-format or raw Criteo file")
    parser.add_argument("--user_id", default="quickstart")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--wait_ready", type=float, default=150, help="seconds to wait for GET /ready")
    args = parser.parse_args()
    if not 1 <= args.top_k <= 10000:
        parser.error(f"--top_k must be from 1 to 10000, got {args.top_k}")
    if not os.path.isfile(args.file):
        parser.error(f"--file {args.file}: no such file")
    wait_ready(args.url, args.wait_ready)
    with open(args.file, "rb") as f:
        start = time.perf_counter()
        try:
            answer = requests.post(args.url + "/upload", files={"file": f}, timeout=600,
                                   params={"user_id": args.user_id, "top_k": args.top_k, "debug": "true"}).json()
        except (requests.RequestException, ValueError) as exc:
            sys.exit(f"error: upload to {args.url} failed: {exc}")
        seconds = time.perf_counter() - start
    if answer["code"] != 200:
        sys.exit(f"error: upload failed: HTTP {answer['code']}: {answer.get('msg')}")
    print(f"POST /upload of {args.file}: {answer['count']} lines in {seconds:.2f} s "
          f"({answer['count'] / seconds:,.0f} lines/s; server: {answer['debug']})")
    wanted = set(answer["index"])
    with open(args.file, encoding="utf-8", errors="replace") as f:
        first_tokens = {n: (line.split(None, 1) or [""])[0][:40] for n, line in enumerate(f, start=1) if n in wanted}
    for rank, (number, (p,)) in enumerate(zip(answer["index"], answer["data"]), start=1):
        print(f"  #{rank} line {number:>6}: predicted CTR {p:.4f} ({first_tokens[number]})")


if __name__ == "__main__":
    main()
