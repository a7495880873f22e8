#!/usr/bin/env bash
# Mutation testing of gentune's pure-logic core (mutmut 3): docs/mutation.md. Not part of CI.
#   scripts/mutation.sh                 every module, 2 mutants at a time (docs/mutation.md: times measured)
#   scripts/mutation.sh fid gan         some modules;  --jobs N: N at a time;  --before: without tests/test_mutation_*.py
#   scripts/mutation.sh --list          the modules, the functions mutated and the tests selected for each
# Scores: .mutation/scores.md and .mutation/scores.json; each survivor's diff: .mutation/MODULE/survivors.txt
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && . .venv/bin/activate
if ! python -c "import mutmut" 2>/dev/null; then
  echo "mutation.sh: mutmut is not installed; run: pip install -e '.[mutation]'" >&2
  exit 2
fi
exec python scripts/mutation.py "$@"
