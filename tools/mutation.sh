#!/usr/bin/env bash
# Mutation testing of the sans-I/O protocol package (spiralfast/protocol/) with mutmut 3, on demand.
#
#   tools/mutation.sh                      # every module of spiralfast/protocol/
#   tools/mutation.sh scheduling states    # only these modules' mutants (the others are "not checked")
#
# Only the fast protocol tests run against each mutant (tests/protocol/: a fake clock, no event
# loop, no services).  The run happens in a scratch copy of the checkout ($MUTATION_WORKDIR,
# default build/mutation/, which is git-ignored): spiralfast/ (with its compiled .so files),
# tests/ and pyproject.toml are copied there, so the checkout gets no mutants/ folder and a run
# sees one snapshot of the code.  The mutmut settings are pyproject.toml's [tool.mutmut]; while
# that section is missing, the same settings below are appended to the scratch copy's pyproject.
#
# Prints the score per module: killed / total (a timeout counts as killed: the tests noticed),
# and lists each surviving mutant; a survivor named in tools/mutation-equivalent.txt is listed
# as equivalent (with the reason given there), any other one is "unexplained".
# See docs/mutation.md for the last score and the explained survivors.
#
# Environment: MUTATION_WORKDIR (scratch folder), MUTATION_JOBS (mutmut's --max-children,
# default 1: the machine has 2 cores), MUTATION_KEEP=1 (reuse the last run's mutants/ and
# results; by default each run starts fresh, since mutmut does not rerun a survivor when only
# the tests changed).  Exit status: 0, or 1 when the score is under MUTATION_MIN (percent, unset
# by default).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${MUTATION_WORKDIR:-$ROOT/build/mutation}"
JOBS="${MUTATION_JOBS:-1}"
EQUIV="$ROOT/tools/mutation-equivalent.txt"

if [[ -x "$ROOT/.venv/bin/python" && -z "${VIRTUAL_ENV:-}" ]]; then
    # shellcheck disable=SC1091
    . "$ROOT/.venv/bin/activate"
fi
command -v mutmut >/dev/null || { echo "mutmut is not installed (pip install 'mutmut>=3.2')" >&2; exit 2; }

mkdir -p "$WORK"
rsync -a --delete --exclude __pycache__ --exclude '*.c' --exclude '*.html' "$ROOT/spiralfast/" "$WORK/spiralfast/"
rsync -a --delete --exclude __pycache__ --exclude .hypothesis "$ROOT/tests/" "$WORK/tests/"
cp "$ROOT/pyproject.toml" "$WORK/pyproject.toml"
if ! grep -q '^\[tool\.mutmut\]' "$WORK/pyproject.toml"; then
    cat >>"$WORK/pyproject.toml" <<'EOF'

[tool.mutmut]
source_paths = ["spiralfast/protocol"]
also_copy = ["spiralfast"]
pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = ["tests/protocol"]
EOF
fi
if [[ "${MUTATION_KEEP:-0}" != "1" ]]; then
    rm -rf "$WORK/mutants"
fi

cd "$WORK"
patterns=()
for m in "$@"; do
    patterns+=("spiralfast.protocol.${m}.*")
done
log="$WORK/mutmut-run.log"
echo "mutmut run --max-children $JOBS ${patterns[*]:-} (log: $log)"
start=$(date +%s)
nice -n 10 mutmut run --max-children "$JOBS" "${patterns[@]}" >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    echo "mutmut run failed (log: $log)" >&2
    exit 2
}
echo "done in $(( $(date +%s) - start )) s"

mutmut results --all true 2>/dev/null >"$WORK/results.txt"
python - "$WORK/results.txt" "$EQUIV" "${MUTATION_MIN:-}" "$@" <<'EOF'
import re
import sys
from collections import defaultdict

results_path, equiv_path, minimum, *modules = sys.argv[1:]
equivalent: dict[str, str] = {}
try:
    with open(equiv_path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                equivalent[name] = reason.strip().lstrip("#").strip()
except FileNotFoundError:
    pass

counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
survivors: list[tuple[str, str]] = []
for line in open(results_path):
    m = re.match(r"\s*(spiralfast\.protocol\.(\w+)\.\S+): (.+)$", line)
    if not m:
        continue
    name, module, status = m.group(1), m.group(2), m.group(3).strip()
    if modules and module not in modules:
        continue
    if status == "not checked":
        continue
    c = counts[module]
    c["total"] += 1
    if status in ("killed", "timeout", "caught by type check"):
        c["killed"] += 1
    else:
        survivors.append((name, status))
        if name in equivalent:
            c["equivalent"] += 1

print()
print(f"{'module':<14}{'killed':>8}{'total':>8}{'score':>9}{'equivalent':>12}{'unexplained':>13}")
k_all = t_all = e_all = 0
for module in sorted(counts):
    c = counts[module]
    k, t, e = c["killed"], c["total"], c["equivalent"]
    k_all, t_all, e_all = k_all + k, t_all + t, e_all + e
    print(f"{module:<14}{k:>8}{t:>8}{100 * k / t:>8.1f}%{e:>12}{t - k - e:>13}")
if t_all:
    print(f"{'all':<14}{k_all:>8}{t_all:>8}{100 * k_all / t_all:>8.1f}%{e_all:>12}{t_all - k_all - e_all:>13}")
if survivors:
    print("\nsurvivors (mutmut show NAME, in the work folder, prints the change):")
    for name, status in survivors:
        why = equivalent.get(name)
        print(f"  {name}: {status}" + (f" -- equivalent: {why}" if why is not None else " -- unexplained"))
if minimum and t_all and 100 * k_all / t_all < float(minimum):
    print(f"\nscore under MUTATION_MIN={minimum}%")
    sys.exit(1)
EOF
