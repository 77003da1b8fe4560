#!/usr/bin/env bash
# Benchmark `keyward scan` against ripgrep (one literal), Kingfisher and
# detect-secrets on the same corpora, in one run. See docs/BENCHMARKS.md.
#
#   cargo build --release -p keyward && benches/scan.sh
#
# On a shared machine, hold the benchmark lock so that no other timed run
# overlaps: flock /tmp/keyward-bench.lock benches/scan.sh
#
# Corpora (built once under $WORK, reused by later runs):
#   tree     real source: the cargo registry sources, copied until >= MIN_MB
#   history  a git repository whose history commits those crate sources one
#            crate per commit (versions of a crate replace each other)
#   subset   a slice of the tree for detect-secrets, which is too slow for all
#
# Each tool runs once untimed (to warm the page cache) and once under
# /usr/bin/time -v. Reported: wall time, MB/s, peak RSS, finding count.
#
# One timed run per tool swings with the machine's load, so the ratio to
# ripgrep is better measured with runs interleaved (rg, an older build, this
# build, rg, ...), which `ab` does on the tree and reports medians:
#
#   benches/scan.sh ab OLD_KEYWARD_BIN [ROUNDS]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${KEYWARD_BENCH_DIR:-/tmp/keyward-bench}
KEYWARD=${KEYWARD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/keyward}
SRC=${KEYWARD_BENCH_SRC:-$HOME/.cargo/registry/src}
MIN_MB=${KEYWARD_BENCH_MIN_MB:-300}
SUBSET_MB=${KEYWARD_BENCH_SUBSET_MB:-25}
LITERAL=${KEYWARD_BENCH_LITERAL:-AKIA}

mkdir -p "$WORK"
[ -x "$KEYWARD" ] || { echo "build keyward first: cargo build --release -p keyward ($KEYWARD)" >&2; exit 2; }
command -v rg >/dev/null || { echo "ripgrep (rg) is required" >&2; exit 2; }

mb() { du -sm --apparent-size "$1" | cut -f1; }

# --- corpora -----------------------------------------------------------------
TREE=$WORK/tree
if [ ! -d "$TREE" ]; then
  mkdir -p "$TREE"; i=0
  while [ "$(mb "$TREE")" -lt "$MIN_MB" ]; do
    i=$((i + 1)); cp -r "$SRC" "$TREE/copy-$i"
  done
fi
HISTORY=$WORK/history
if [ ! -d "$HISTORY/.git" ]; then
  mkdir -p "$HISTORY"; git -C "$HISTORY" init -q -b main
  for crate in $(find "$SRC" -mindepth 2 -maxdepth 2 -type d | sort); do
    name=$(basename "$crate" | sed -E 's/-[0-9]+\.[0-9]+\.[0-9]+.*$//')
    rm -rf "$HISTORY/vendor/$name"; mkdir -p "$HISTORY/vendor/$name"
    cp -r "$crate/." "$HISTORY/vendor/$name/"
    find "$HISTORY/vendor/$name" -name .git -prune -exec rm -rf {} +
    git -C "$HISTORY" add -A >/dev/null
    git -C "$HISTORY" -c user.name=bench -c user.email=bench@localhost commit -q -m "vendor $(basename "$crate")" --allow-empty
  done
  git -C "$HISTORY" gc -q
fi
SUBSET=$WORK/subset
if [ ! -d "$SUBSET" ]; then
  mkdir -p "$SUBSET"
  for crate in $(find "$TREE/copy-1" -mindepth 2 -maxdepth 2 -type d | sort); do
    [ "$(mb "$SUBSET")" -ge "$SUBSET_MB" ] && break
    cp -r "$crate" "$SUBSET/"
  done
fi
TREE_MB=$(mb "$TREE")
SUBSET_MB=$(mb "$SUBSET")
HISTORY_MB=$(git -C "$HISTORY" cat-file --batch-all-objects --batch-check='%(objecttype) %(objectsize)' | awk '$1=="blob"{s+=$2} END{printf "%d", s/1e6}')
COMMITS=$(git -C "$HISTORY" rev-list --all --count)

# --- interleaved A/B on the tree ------------------------------------------------
if [ "${1:-}" = ab ]; then
  OLD=${2:?usage: benches/scan.sh ab OLD_KEYWARD_BIN [ROUNDS]}
  ROUNDS=${3:-15}
  TIMES=$WORK/ab-times.txt
  : > "$TIMES"
  names=(rg old new)
  cmds=("rg -F -c -uuu $LITERAL $TREE"
        "$OLD scan --no-progress --format jsonl $TREE"
        "$KEYWARD scan --no-progress --format jsonl $TREE")
  for c in "${cmds[@]}"; do $c >/dev/null 2>&1 || true; done
  for _ in $(seq "$ROUNDS"); do
    for i in 0 1 2; do
      /usr/bin/time -a -o "$TIMES" -f "${names[$i]} %e %U %S %M" ${cmds[$i]} >/dev/null 2>&1 || true
    done
  done
  echo "# interleaved, $ROUNDS rounds, tree ${TREE_MB} MB, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 - "$TIMES" <<'PY'
import collections, statistics as st, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 5 and f[0] in ("rg", "old", "new"):
        runs[f[0]].append([float(x) for x in f[1:]])
med = {k: st.median(r[0] for r in v) for k, v in runs.items()}
print("| tool | wall min | wall median | CPU median (user + sys) | peak RSS | wall median / rg |")
print("| --- | --- | --- | --- | --- | --- |")
for k in ("rg", "old", "new"):
    v = runs[k]
    cpu = st.median(r[1] + r[2] for r in v)
    print(f"| {k} | {min(r[0] for r in v):.2f} s | {med[k]:.2f} s | {cpu:.2f} s | {max(r[3] for r in v) / 1024:.0f} MB | {med[k] / med['rg']:.2f}x |")
PY
  exit 0
fi

# --- measurement ---------------------------------------------------------------
RESULTS=$WORK/results.md
: > "$RESULTS"
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@" | tee -a "$RESULTS"; }

# run LABEL CORPUS_MB COUNT_FN CMD...: warm-up, then timed run.
run() {
  local label=$1 size=$2 counter=$3; shift 3
  "$@" >/dev/null 2>&1 || true
  /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || true
  local wall rss secs
  wall=$(grep 'Elapsed (wall clock)' "$WORK/time.txt" | awk '{print $NF}')
  rss=$(grep 'Maximum resident set size' "$WORK/time.txt" | awk '{printf "%d", $NF/1024}')
  secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  row "$label" "$size MB" "${secs}s" "$(awk -v s="$size" -v t="$secs" 'BEGIN{ if (t>0) printf "%.0f", s/t; else print "-" }')" "${rss} MB" "$($counter)"
}

count_rg() { awk -F: '{s+=$NF} END{print s+0}' "$WORK/out.txt"; }
count_json_array() { python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/out.txt"; }
count_kingfisher() { python3 -c '
import json,sys
text=open(sys.argv[1]).read().strip()
try:
    d=json.loads(text)
except Exception:
    print(sum(1 for l in text.splitlines() if l.strip())); sys.exit()
f=d.get("findings", d) if isinstance(d, dict) else d
print(len(f))' "$WORK/out.txt"; }
count_detect_secrets() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(len(v) for v in d["results"].values()))' "$WORK/out.txt"; }

echo "# keyward scan benchmark $(date -u +%F) on $(nproc) cores; tree ${TREE_MB} MB, history ${COMMITS} commits / ${HISTORY_MB} MB of blobs, subset ${SUBSET_MB} MB" | tee -a "$RESULTS"
row "tool" "corpus" "wall" "MB/s" "peak RSS" "findings"
row "---" "---" "---" "---" "---" "---"

run "rg -F -c -uuu $LITERAL (tree)" "$TREE_MB" count_rg rg -F -c -uuu "$LITERAL" "$TREE"
run "keyward scan (tree)" "$TREE_MB" count_json_array "$KEYWARD" scan --no-progress --format json "$TREE"
cp "$WORK/out.txt" "$WORK/keyward-tree.json"
if command -v kingfisher >/dev/null; then
  run "kingfisher scan --no-validate (tree)" "$TREE_MB" count_kingfisher kingfisher scan "$TREE" --no-validate --git-history none --format json --no-update-check
fi
run "keyward scan --git (history)" "$HISTORY_MB" count_json_array "$KEYWARD" scan --no-progress --git --format json "$HISTORY"
if command -v kingfisher >/dev/null; then
  run "kingfisher scan --no-validate (history)" "$HISTORY_MB" count_kingfisher kingfisher scan "$HISTORY" --no-validate --git-history full --format json --no-update-check
fi
run "keyward scan (subset)" "$SUBSET_MB" count_json_array "$KEYWARD" scan --no-progress --format json "$SUBSET"
if command -v detect-secrets >/dev/null; then
  run "detect-secrets scan --all-files (subset)" "$SUBSET_MB" count_detect_secrets detect-secrets scan --all-files "$SUBSET"
fi

echo
echo "keyward findings on the tree by rule (each copy of the sources repeats them):"
python3 - "$WORK/keyward-tree.json" <<'PY'
import collections, json, sys
findings = json.load(open(sys.argv[1]))
first = [f for f in findings if "/copy-1/" in f["path"]]
print(f"{len(findings)} findings in all copies, {len(first)} in one copy of the sources")
for rule, n in collections.Counter(f["rule_id"] for f in first).most_common():
    print(f"  {n:5d}  {rule}")
print("sample:")
for f in first[:15]:
    print(f"  {f['rule_id']:32} {f['path'].split('/copy-1/')[-1]}:{f['line']}  {f['redacted']}")
PY
