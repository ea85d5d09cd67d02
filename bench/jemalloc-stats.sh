#!/usr/bin/env bash
# What a running medpool's memory is (for memory.sh's AFTER_CMD): its threads, its memory map's
# largest resident mappings, then an experiment through gdb: jemalloc is asked to purge every
# arena's unused pages (`arena.<all>.purge`) and the resident set is read again. What the purge
# gives back was jemalloc's unused (dirty) pages; what stays is live allocations or partly used
# slabs. (The jemalloc built by tikv-jemalloc-sys has no statistics: `config.stats` is off.)
#
# Usage: bench/jemalloc-stats.sh PID        (needs gdb and a binary with jemalloc's symbols)
set -u
pid=$1
rss() { awk '/^VmRSS:/{print $2}' "/proc/$pid/status"; }
echo "== /proc/$pid/status"
grep -E '^(VmRSS|RssAnon|RssFile|VmHWM|Threads):' "/proc/$pid/status"
echo "== threads"
cat /proc/"$pid"/task/*/comm | sort | uniq -c
echo "== the 10 largest resident mappings (kB)"
awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; range=$1} /^Rss:/{print $2, range, name}' "/proc/$pid/smaps" | sort -rn | head -10
echo "rss_before_purge_kib=$(rss)"
gdb -p "$pid" -batch -ex 'call (int)_rjem_mallctl("arena.4096.purge", 0, 0, 0, 0)' 2>&1 | grep -E '^\$' | sed 's/^/mallctl returned /'
echo "rss_after_purge_kib=$(rss)"
sleep 5
echo "rss_after_purge_5s_kib=$(rss)"
