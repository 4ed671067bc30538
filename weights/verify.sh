#!/usr/bin/env bash
# Usage: weights/verify.sh CHECKPOINT [EXPECTED_SHA256]
# Prints the file's SHA-256, compares it with EXPECTED_SHA256 or with weights/SHA256SUMS (if listed there),
# then checks keys/shapes/dtypes against the full SAM3 configuration with `sam3 inspect`.
set -euo pipefail
file=${1:?usage: weights/verify.sh CHECKPOINT [EXPECTED_SHA256]}
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$file" ] || { echo "verify: no such file: $file" >&2; exit 2; }
actual=$(sha256sum "$file" | cut -d' ' -f1)
echo "sha256 $actual  $file"
expected=${2:-}
if [ -z "$expected" ] && [ -f "$here/SHA256SUMS" ]; then
  expected=$(awk -v n="$(basename "$file")" '$2 == n {print $1}' "$here/SHA256SUMS")
fi
if [ -n "$expected" ]; then
  if [ "$expected" = "$actual" ]; then echo "sha256: OK"; else echo "sha256: MISMATCH (expected $expected)" >&2; exit 1; fi
else
  echo "sha256: no expected hash given (pass it as the second argument)"
fi
dotnet run --project "$here/../src/Sam3.Cli" -c Release -- inspect "$file" --config full
