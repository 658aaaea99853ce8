#!/usr/bin/python3
"""Dependent writes across two NBD exports, for the group-freeze coherence
check of tests/freeze.rs.

    dependent_writer.py --records URI_A --commits URI_B --slots S --stop-file PATH

For n = 1, 2, ...: record n goes to A's slot n % S (a 4 KiB block holding n as
eight little-endian bytes, repeated); only once A acknowledged it does commit n
go to B's slot n % S. So at every instant, for every slot, B's value is at most
A's: a copy of both that shows a commit newer than its record was not taken at
one instant. Runs until PATH exists; prints the last n; exit 0, or 2 if a
request failed.
"""

import argparse
import os
import struct
import sys

import nbd

BLOCK = 4096


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--records", required=True)
    p.add_argument("--commits", required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--stop-file", required=True)
    a = p.parse_args()
    records = nbd.NBD()
    records.connect_uri(a.records)
    commits = nbd.NBD()
    commits.connect_uri(a.commits)
    n = 0
    try:
        while not os.path.exists(a.stop_file):
            for _ in range(64):
                n += 1
                block = struct.pack("<Q", n) * (BLOCK // 8)
                offset = (n % a.slots) * BLOCK
                records.pwrite(block, offset)
                commits.pwrite(block, offset)
    except nbd.Error as e:
        print(f"request failed at n={n}: {e}", flush=True)
        return 2
    print(f"last n={n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
