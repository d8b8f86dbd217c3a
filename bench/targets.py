#!/usr/bin/env python3
"""Issue 3's targets from one peers.sh run that had deskfuse as a hook (bench/peers.d/deskfuse.sh).

usage: targets.py RESULTS_TSV [PEERS_DIR]   -> markdown on stdout, one table per target

Figures are medians over the run's reps (as in the harness tables), except agent peak RSS (the
largest of any rep). Wire = bytes both directions / the run's own reference (changed 4 KiB blocks,
zstd -3: bound:changed4k+zstd3). "rsync" = the fastest rsync variant of the same run.
"""
import csv
import re
import statistics
import sys

MiB = 1 << 20


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    g = {}
    for r in rows:
        g.setdefault((r["scenario"], r["peer"]), []).append(r)

    def med(sc, peer, col):
        xs = [float(r[col]) for r in g.get((sc, peer), []) if r[col] not in ("", "-")]
        return statistics.median(xs) if xs else None

    def mx(sc, peer, col):
        xs = [float(r[col]) for r in g.get((sc, peer), []) if r[col] not in ("", "-")]
        return max(xs) if xs else None

    def wire(sc, peer):
        d, u = med(sc, peer, "net_down_B"), med(sc, peer, "net_up_B")
        return None if d is None else d + u

    def oks(sc, peer):
        s = {r["ok"] for r in g.get((sc, peer), [])} - {"-"}
        return "sha256 ok" if s == {"ok"} else ("n/a" if not s else "FAILED " + ",".join(sorted(s)))

    def yes(c):
        return "yes" if c else "**NO**"

    def f(x, d=2):
        return "–" if x is None else f"{x:.{d}f}"

    reps = max((len(v) for (sc, _), v in g.items() if sc in ("update", "capture")), default=0)
    out = [f"### Issue 3 targets (this run; medians of {reps} reps; wire = both directions incl. HTTP headers)", ""]
    w = out.append

    def fastest_rsync(sc):
        best = None
        for (s, peer) in g:
            if s == sc and peer.startswith("rsync"):
                t = med(s, peer, "wall_s")
                if best is None or t < best[1]:
                    best = (peer, t)
        return best

    def peer_list(sc, col, fmt, names):
        parts = []
        for n in names:
            v = fmt(n)
            if v is not None:
                parts.append(f"{n} {v}")
        return "; ".join(parts) if parts else "–"

    for sc, ref_target, title in (("update", 1.05, "update (disk holds base, reach v2)"),
                                  ("capture", 1.10, "capture (disk holds local, server holds base)")):
        ref = med(sc, "bound:changed4k+zstd3", "net_down_B")
        dfp = "deskfuse"
        if (sc, dfp) not in g:
            w(f"#### {title}: no deskfuse rows in this run")
            w("")
            continue
        peers = [p for (s, p) in g if s == sc and not p.startswith(("bound:", "deskfuse"))]
        rs = fastest_rsync(sc)
        w(f"#### {title}")
        w("")
        w("| what | deskfuse | peers, same run | target | met? |")
        w("|---|---|---|---|---|")
        dw = wire(sc, dfp)
        x = dw / ref if ref else None
        w(f"| wire MiB (x ref {ref / MiB:.2f} MiB) | {dw / MiB:.2f} ({f(x, 3)}x) | "
          + peer_list(sc, "", lambda n: f"{wire(sc, n) / ref:.2f}x" if ref and wire(sc, n) else None, peers)
          + f" | ≤ {ref_target:.2f}x | {yes(x is not None and x <= ref_target)} |")
        if sc == "update":
            rq = med(sc, dfp, "requests")
            w(f"| HTTP requests | {rq:.0f} | "
              + peer_list(sc, "", lambda n: f"{med(sc, n, 'requests'):.0f}" if not n.startswith("rsync") else "(1 TCP)", peers)
              + f" | ≤ 50 | {yes(rq <= 50)} |")
        dwall = med(sc, dfp, "wall_s")
        w(f"| endpoint wall s | {dwall:.2f} | "
          + peer_list(sc, "", lambda n: f"{med(sc, n, 'wall_s'):.2f}" if n.startswith("rsync") else None, peers)
          + (f" | ≤ {rs[1]:.2f} ({rs[0]}, fastest rsync) | {yes(dwall <= rs[1])} |" if rs else " | ≤ rsync (not run) | – |"))
        if sc == "update":
            first = "deskfuse-first-client"
            for label, p in (("server CPU s per client (next client)", dfp), ("server CPU s per client (first client)", first)):
                v = med(sc, p, "srv_cpu_s")
                if v is None:
                    continue
                w(f"| {label} | {v:.2f} | "
                  + peer_list(sc, "", lambda n: f"{med(sc, n, 'srv_cpu_s'):.2f}", [n for n in peers if n.startswith(("rsync", "casync", "zsync"))])
                  + f" | ≤ 0.10 | {yes(v <= 0.10)} |")
            pub = med("prep", "prep:deskfuse-publish(v2)", "srv_cpu_s")
            if pub is not None:
                w(f"| server CPU s once per version (publish incl. building the delta) | {pub:.2f} | – | (info) | |")
            w(f"| endpoint CPU s | {f(med(sc, dfp, 'user_s') + med(sc, dfp, 'sys_s'))} | "
              + peer_list(sc, "", lambda n: f"{med(sc, n, 'user_s') + med(sc, n, 'sys_s'):.2f}", [n for n in peers if n.startswith("rsync")])
              + " | (info) | |")
            w(f"| disk after update | {oks(sc, dfp)} (first client: {oks(sc, first)}) | | = v2.img | {yes(oks(sc, dfp) == 'sha256 ok')} |")
        else:
            w(f"| HTTP requests | {med(sc, dfp, 'requests'):.0f} | – | (info) | |")
            w(f"| server CPU s (incl. the new version's delta) | {f(med(sc, dfp, 'srv_cpu_s'))} | "
              + peer_list(sc, "", lambda n: f"{med(sc, n, 'srv_cpu_s'):.2f}", [n for n in peers if n.startswith("rsync")])
              + " | (info) | |")
            w(f"| exported desktop version | {oks(sc, dfp)} | | = local.img | {yes(oks(sc, dfp) == 'sha256 ok')} |")
        w("")

    if ("scan", "deskfuse-scan-dirty") in g:
        xx = med("scan", "xxhsum-H2", "wall_s")
        sd = med("scan", "deskfuse-scan-dirty", "wall_s")
        sc_ = med("scan", "deskfuse-sync-clean", "wall_s")
        note = g[("scan", "xxhsum-H2")][0]["note"]
        def note_med(key):
            xs = []
            for r in g[("scan", "deskfuse-scan-dirty")]:
                m = re.search(key + r"=([0-9.]+)", r["note"])
                if m:
                    xs.append(float(m.group(1)))
            return statistics.median(xs) if xs else None
        secs, scan_s = note_med("agent seconds"), note_med("scanSeconds")
        dirty_ok = {r["ok"] for r in g[("scan", "deskfuse-scan-dirty")]}
        clean_ok = {r["ok"] for r in g[("scan", "deskfuse-sync-clean")]}
        w("#### scan (a dirty disk: `agent handoff`, then `agent sync` with nothing new on the server)")
        w("")
        w("| what | deskfuse | xxhsum -H2, same file, same run | target | met? |")
        w("|---|---|---|---|---|")
        w(f"| dirty disk: agent sync wall s (whole command) | {sd:.2f} ({sd / xx:.1f}x) | {xx:.2f} | ≤ 1.5x = {1.5 * xx:.2f} | {yes(sd <= 1.5 * xx)} |")
        if scan_s is not None:
            w(f"| dirty disk: the scan alone (agent JSON `scanSeconds`; whole sync `seconds` {f(secs)}) | {scan_s:.2f} ({scan_s / xx:.1f}x) | {xx:.2f} | ≤ 1.5x = {1.5 * xx:.2f} | {yes(scan_s <= 1.5 * xx)} |")
        w(f"| dirty disk scanned | {','.join(sorted(dirty_ok))} | | scanned=true | {yes(dirty_ok == {'scanned=true'})} |")
        w(f"| clean disk: agent sync wall s | {sc_:.2f} ({','.join(sorted(clean_ok))}) | | not scanned | {yes(clean_ok == {'scanned=false'})} |")
        w("")
        w(f"xxhsum: {note}.")
        w("")

    w("#### memory (agent peak RSS, the largest over the reps)")
    w("")
    w("| agent step | peak RSS MiB | target | met? |")
    w("|---|---|---|---|")
    for label, sc, p in (("provision a blank disk (agent sync)", "provision", "deskfuse-provision"),
                         ("update base -> v2 (agent sync)", "update", "deskfuse"),
                         ("update, first client", "update", "deskfuse-first-client"),
                         ("capture (agent commit)", "capture", "deskfuse"),
                         ("scan of a dirty disk (agent sync)", "scan", "deskfuse-scan-dirty"),
                         ("sync of a clean disk", "scan", "deskfuse-sync-clean")):
        rss = None
        for pp in (p, p + "-b", p + "-cap") if sc == "provision" else (p,):
            v = mx(sc, pp, "maxrss_kb")
            if v is not None:
                rss = v if rss is None else max(rss, v)
        if rss is None:
            continue
        w(f"| {label} | {rss / 1024:.0f} | ≤ 256 | {yes(rss / 1024 <= 256)} |")
    w("")
    w("Not growing with disk size: `bench/memory.sh` (SIZE=8G next to 2G).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
