#!/usr/bin/env python3
"""veild's GET /metrics and audit log, read the way their consumers do
(tests/test_metrics.sh): the exposition through the parser of the
Prometheus Python client (Debian python3-prometheus-client), the audit
log as JSON lines.

  metrics_check.py valid FILE
      FILE parses; every family is veild_*, has HELP and TYPE; counters
      end in _total; every histogram's buckets are cumulative, end in
      le="+Inf" equal to its _count, and have a _sum.  Prints the
      families.
  metrics_check.py sum FILE SAMPLE LABELS EXPECTED
      the sum of the samples named SAMPLE whose labels include LABELS
      ("k=v,k=v"; "" for any) is EXPECTED (a number; ">=N" for at least)
  metrics_check.py audit FILE
      every line is one JSON object with exactly the audit fields, of
      their types; prints one line per record: key model tier protocol
      status prompt_tokens completion_tokens payload_id_sha256 ("-" for
      null)

Exit 0 when it holds, 1 when not (saying why), 2 on usage.
"""
import json
import math
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

AUDIT_FIELDS = {
    "time": str, "key": (str, type(None)), "model": (str, type(None)),
    "tier": (str, type(None)), "route": str, "protocol": str,
    "status": int, "prompt_tokens": (int, type(None)),
    "completion_tokens": (int, type(None)),
    "payload_id_sha256": (str, type(None)), "duration_ms": int,
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def families(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return list(text_string_to_metric_families(text)), text


def fail(msg):
    print("metrics_check: " + msg)
    sys.exit(1)


def valid(path):
    fams, text = families(path)
    if not fams:
        fail("no metric families")
    for fam in fams:
        if not fam.name.startswith("veild_"):
            fail("family %s is not veild_*" % fam.name)
        if not fam.documentation:
            fail("family %s has no HELP" % fam.name)
        if fam.type not in ("counter", "gauge", "histogram"):
            fail("family %s has type %s" % (fam.name, fam.type))
        if fam.type == "counter":
            if not re.search(r"^# TYPE %s_total counter$" % fam.name, text,
                             re.M):
                fail("counter %s does not end in _total" % fam.name)
        if fam.type == "histogram":
            if not fam.name.endswith("_seconds"):
                fail("histogram %s is not in _seconds" % fam.name)
            check_histogram(fam)
        print("family %s %s %d samples" % (fam.name, fam.type,
                                           len(fam.samples)))


def check_histogram(fam):
    series = {}
    for s in fam.samples:
        labels = dict(s.labels)
        le = labels.pop("le", None)
        key = tuple(sorted(labels.items()))
        d = series.setdefault(key, {"buckets": [], "sum": None,
                                    "count": None})
        if s.name.endswith("_bucket"):
            d["buckets"].append((float(le), s.value))
        elif s.name.endswith("_sum"):
            d["sum"] = s.value
        elif s.name.endswith("_count"):
            d["count"] = s.value
    for key, d in series.items():
        b = d["buckets"]
        if not b or not math.isinf(b[-1][0]):
            fail("%s%s: no le=+Inf bucket" % (fam.name, key))
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            fail("%s%s: buckets not cumulative" % (fam.name, key))
        if d["count"] is None or d["sum"] is None:
            fail("%s%s: no _count or _sum" % (fam.name, key))
        if b[-1][1] != d["count"]:
            fail("%s%s: +Inf bucket %g != count %g" %
                 (fam.name, key, b[-1][1], d["count"]))


def total(path, sample, labels, expected):
    want = {}
    for kv in filter(None, labels.split(",")):
        k, _, v = kv.partition("=")
        want[k] = v
    fams, _ = families(path)
    got = sum(s.value for fam in fams for s in fam.samples
              if s.name == sample and
              all(s.labels.get(k) == v for k, v in want.items()))
    at_least = expected.startswith(">=")
    e = float(expected[2:] if at_least else expected)
    if (got < e) if at_least else (got != e):
        fail("%s{%s} is %g, expected %s" % (sample, labels, got, expected))
    print("%s{%s} = %g" % (sample, labels, got))


def audit(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[-1] != "":
        fail("the audit log does not end in a line feed")
    for n, line in enumerate(lines[:-1], 1):
        try:
            rec = json.loads(line)
        except ValueError as e:
            fail("line %d is not JSON: %s" % (n, e))
        if not isinstance(rec, dict) or set(rec) != set(AUDIT_FIELDS):
            fail("line %d has fields %s" % (n, sorted(rec)))
        for k, t in AUDIT_FIELDS.items():
            if isinstance(rec[k], bool) or not isinstance(rec[k], t):
                fail("line %d: %s is %r" % (n, k, rec[k]))
        if not RFC3339.match(rec["time"]):
            fail("line %d: time %s" % (n, rec["time"]))
        h = rec["payload_id_sha256"]
        if h is not None and not re.match(r"^[0-9a-f]{64}$", h):
            fail("line %d: payload_id_sha256 %s" % (n, h))
        print(" ".join("-" if rec[k] is None else str(rec[k]) for k in (
            "key", "model", "tier", "protocol", "status", "prompt_tokens",
            "completion_tokens", "payload_id_sha256")))


def main(argv):
    if len(argv) == 3 and argv[1] == "valid":
        valid(argv[2])
    elif len(argv) == 6 and argv[1] == "sum":
        total(argv[2], argv[3], argv[4], argv[5])
    elif len(argv) == 3 and argv[1] == "audit":
        audit(argv[2])
    else:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
