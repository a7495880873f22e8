#!/usr/bin/env bash
# The main job: set up, run the quickstart sweep on the embedded demo data, then the report and the export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
STORAGE=${STORAGE:-runs}
if [ -z "${NAME:-}" ]; then  # runs/quickstart, or quickstart-2, -3, ... when it exists
  NAME=quickstart; i=2
  while [ -e "$STORAGE/$NAME" ]; do NAME=quickstart-$i; i=$((i + 1)); done
fi
gentune sweep search/specs/quickstart.yaml --storage "$STORAGE" --name "$NAME"
gentune report "$STORAGE/$NAME" --out "$STORAGE/$NAME/report"
gentune export "$STORAGE/$NAME" --study dann --out "$STORAGE/$NAME/export/dann"
gentune export "$STORAGE/$NAME" --study ddpm --out "$STORAGE/$NAME/export/ddpm"
gentune generate "$STORAGE/$NAME/export/ddpm" --out "$STORAGE/$NAME/export/ddpm/samples.png" --n 20 --seed 0
echo
gentune summary "$STORAGE/$NAME"   # the final table: what each family reached
cat <<MSG

gentune quickstart finished. Where to look:
  report:       $STORAGE/$NAME/report/index.html  (and report.md)
  best models:  $STORAGE/$NAME/export/{dann,ddpm}/   (safetensors + bundle.json; try gentune generate / predict)
  all trials:   gentune compare $STORAGE/$NAME     |  gentune ui $STORAGE/$NAME   (MLflow UI on 127.0.0.1)
MSG
