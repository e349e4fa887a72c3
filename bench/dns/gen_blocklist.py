#!/usr/bin/env python3
"""Generate the DNS benchmark inputs, deterministically (fixed seed).

    gen_blocklist.py OUTDIR [--names N] [--seed S]

Writes into OUTDIR:
  blocklist.txt            N unique names, plain-domain format (one per line)
  unbound-blocklist.conf   the same names as `local-zone: "NAME." always_nxdomain`
  dnsmasq-blocklist.conf   the same names as `address=/NAME/` (NXDOMAIN)
  q-hits.txt               1000 names under miss.test (answered by the test
                           authority), queried over and over: cache hits
  q-blocked.txt            200k queries for listed names and their subdomains
  q-misses.txt             2M unique names under miss.test: cache misses
"""
import argparse
import os
import random

TLDS = ["com", "net", "org", "io", "info", "xyz", "biz", "co", "de", "uk", "ru", "top", "site", "online"]
SYL = ["ad", "ads", "trk", "an", "met", "ric", "pix", "el", "cdn", "srv", "log", "stat", "beacon", "tag",
       "click", "media", "data", "sync", "cnt", "px", "img", "api", "edge", "node", "cloud", "ly", "io",
       "zo", "ka", "mi", "ro", "te", "ba", "qu", "vex", "nor", "dal", "fin", "gor", "hul", "jet", "kip"]


def label(rng):
    n = rng.randint(2, 4)
    s = "".join(rng.choice(SYL) for _ in range(n))
    if rng.random() < 0.4:
        s += str(rng.randint(0, 999))
    return s[:40]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20240601)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.outdir, exist_ok=True)
    names = []
    seen = set()
    while len(names) < a.names:
        depth = rng.choice([1, 1, 2, 2, 2, 3])
        n = ".".join([label(rng) for _ in range(depth)] + [rng.choice(TLDS)])
        if n not in seen:
            seen.add(n)
            names.append(n)
    # Parents before children would let unbound/dnsmasq merge nothing: the
    # order does not matter to any of the three, keep generation order.
    with open(os.path.join(a.outdir, "blocklist.txt"), "w") as f:
        f.write("# synthetic blocklist, seed %d\n" % a.seed)
        f.writelines(n + "\n" for n in names)
    with open(os.path.join(a.outdir, "unbound-blocklist.conf"), "w") as f:
        f.writelines('local-zone: "%s." always_nxdomain\n' % n for n in names)
    with open(os.path.join(a.outdir, "dnsmasq-blocklist.conf"), "w") as f:
        f.writelines("address=/%s/\n" % n for n in names)
    with open(os.path.join(a.outdir, "q-hits.txt"), "w") as f:
        f.writelines("h%d.miss.test A\n" % i for i in range(1000))
    with open(os.path.join(a.outdir, "q-blocked.txt"), "w") as f:
        for _ in range(200_000):
            n = rng.choice(names)
            if rng.random() < 0.3:
                n = "www." + n
            f.write("%s %s\n" % (n, rng.choice(["A", "A", "AAAA"])))
    with open(os.path.join(a.outdir, "q-misses.txt"), "w") as f:
        f.writelines("m%d-%d.miss.test A\n" % (a.seed, i) for i in range(2_000_000))


if __name__ == "__main__":
    main()
