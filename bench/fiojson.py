"""fio's JSON output as the bench reports read it (lib.sh puts this directory
on PYTHONPATH for the scripts' inline Python)."""

import json


def job(path):
    """The one job of a fio JSON file (anything fio printed before the JSON
    is skipped)."""
    with open(path) as f:
        text = f.read()
    return json.loads(text[text.index("{"):])["jobs"][0]


def with_ramp(job, d):
    """Requests and bytes over the ramp as well as the measured run, at the
    rate fio measured after the ramp: what CPU taken over both is divided
    by (fio's own figures leave the ramp out)."""
    ios, nbytes = d["total_ios"], d["io_bytes"]
    ramp = float(job["job options"].get("ramp_time", 0) or 0)
    if ramp and d["runtime"]:
        scale = (d["runtime"] / 1000.0 + ramp) / (d["runtime"] / 1000.0)
        ios, nbytes = ios * scale, nbytes * scale
    return ios, nbytes
