#!/usr/bin/env bash
# Fills .carry/ (git-ignored) with what scripts/gpu_verify.sh needs on the GPU machine and cannot get
# there (it reaches no package registry): wheels of the test packages its Python lacks, and a record of
# the source the run is made from. Run it here, just before the device call that carries .carry/;
# ignored folders do not survive to a new machine, so a fresh checkout runs it again.
#   .carry/wheels/*.whl   GPU_CARRY_PACKAGES (default: expecttest, which torch.library.opcheck needs and
#                         the GPU machine's image lacks), pure-Python wheels for its Python 3.12
#   .carry/source.txt     commit, branch, uncommitted changes (git status) and the date
#   .carry/tree.sha256    sha256 of every file that travels (tracked, and untracked but not ignored):
#                         gpu_verify.sh checks that the tree it ran on is this one
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.carry
PACKAGES="${GPU_CARRY_PACKAGES:-expecttest==0.3.0}"
PY="${PYTHON:-python3}"

git check-ignore -q "$CARRY/" || { echo "gpu_carry_prepare: $CARRY/ must be git-ignored (.gitignore)" >&2; exit 1; }
mkdir -p "$CARRY/wheels"
rm -f "$CARRY"/wheels/*.whl
# --no-deps: name every missing package in GPU_CARRY_PACKAGES; two versions of one would stop the install.
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$CARRY/wheels" $PACKAGES
for whl in "$CARRY"/wheels/*.whl; do
  case "$whl" in
    *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
    *) echo "gpu_carry_prepare: $whl is not a pure-Python wheel (py3-none-any): check it fits the GPU machine" >&2 ;;
  esac
  needs=$(unzip -p "$whl" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true)
  [ -z "$needs" ] || echo "gpu_carry_prepare: $(basename "$whl") needs (not downloaded: add them if missing there):" \
    "$needs" >&2
done

{
  echo "commit: $(git rev-parse HEAD)"
  echo "branch: $(git rev-parse --abbrev-ref HEAD)"
  echo "prepared: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "uncommitted changes (git status --short; the run carries the working tree as it is):"
  git status --short | sed 's/^/  /'
} > "$CARRY/source.txt"
# A tracked file deleted here has no hash; the others still make the list.
git ls-files -z --cached --others --exclude-standard | xargs -0 sha256sum 2> /dev/null > "$CARRY/tree.sha256" || true

echo "gpu_carry_prepare: $CARRY/ holds $(ls "$CARRY"/wheels | tr '\n' ' ')and $(wc -l < "$CARRY/tree.sha256") file hashes;" \
  "$(du -sh "$CARRY" | cut -f1) in all (a device call carries 64 MiB at most)"
