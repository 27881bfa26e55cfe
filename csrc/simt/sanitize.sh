#!/usr/bin/env bash
# Sanitizer builds of the SIMT emulator and the kernels that run on it (no torch needed).
#
#   csrc/simt/sanitize.sh            # from anywhere; builds into ${SIMT_SAN_DIR:-/tmp/simt_sanitize}
#
# Builds csrc/simt/standalone_test.cc (the emulator self-test kernels, the planted bugs and the
# kernels of csrc/cuda it can drive without torch) twice:
#   AddressSanitizer: fibers announced with __sanitizer_{start,finish}_switch_fiber; dynamic
#                     shared memory guard bytes are ASan-poisoned.
#   ThreadSanitizer:  each fiber is a TSan fiber (__tsan_create_fiber / __tsan_switch_to_fiber with
#                     no_sync); __syncthreads and warp ops are release/acquire pairs on per-block /
#                     per-warp sync objects, so TSan sees exactly the CUDA happens-before edges.
#                     The emulator runtime itself (simt.cpp) is not instrumented (its bookkeeping is
#                     handed between fibers by the scheduler, which TSan cannot see), only kernels.
# and checks: zero reports on the correct kernels, a report on each planted bug.
# Exit status 0 and the line "ALL SANITIZER CHECKS PASSED" when every expectation holds.
#
#   csrc/simt/sanitize.sh --ext [pytest args...]
# Additionally builds the whole fastconv._simt extension (every CUDA kernel + its launcher) with
# -fsanitize=address into an overlay copy of the fastconv package and runs pytest on it with
# libasan preloaded (default pytest args: tests -q -rf -k "simt and not planted"; the planted
# bugs of test_simt_emulator.py would stop the run at the first, expected, ASan report). Needs the torch venv's python
# (PYTHON=...) and a built fastconv._C; takes several minutes.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CSRC="$(dirname "$HERE")"
OUT="${SIMT_SAN_DIR:-/tmp/simt_sanitize}"
CXX="${CXX:-g++}"
mkdir -p "$OUT"

# Torch headers are only needed if csrc/cuda/*.cuh include c10 headers (header-only parts).
PY="${PYTHON:-python3}"
TORCH_INC="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)"
INC=(-I"$CSRC")
[ -n "$TORCH_INC" ] && INC+=(-I"$TORCH_INC")
COMMON=(-std=c++17 -g -O1 -Wno-tsan -mfma -fno-omit-frame-pointer -Wno-unknown-pragmas -DFASTCONV_SIMT -DFASTCONV_SIMT_STANDALONE "${INC[@]}")

fail=0
note() { printf '%s\n' "$*"; }
bad() { printf 'FAILED: %s\n' "$*"; fail=1; }

# run NAME EXPECT CMD...: EXPECT is "clean" (exit 0, no sanitizer report) or a regex the output
# must match (a sanitizer report).
run() {
  local name="$1" expect="$2"; shift 2
  local log="$OUT/$name.log"
  "$@" >"$log" 2>&1
  local rc=$?
  if [ "$expect" = clean ]; then
    if [ $rc -eq 0 ] && ! grep -q "Sanitizer" "$log"; then note "ok   $name: no findings";
    else bad "$name: expected no findings (rc=$rc), see $log"; tail -30 "$log"; fi
  else
    if grep -Eq "$expect" "$log"; then note "ok   $name: caught ($(grep -Eo "$expect" "$log" | head -1))";
    else bad "$name: expected a report matching '$expect' (rc=$rc), see $log"; tail -30 "$log"; fi
  fi
}

if [ "${SIMT_SAN_STANDALONE:-1}" = 1 ]; then  # SIMT_SAN_STANDALONE=0: only the --ext stage
note "== AddressSanitizer build"
if "$CXX" "${COMMON[@]}" -fsanitize=address "$HERE/standalone_test.cc" "$HERE/simt.cpp" -lpthread -o "$OUT/simt_asan"; then
  export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=1:abort_on_error=0"
  run asan_clean clean "$OUT/simt_asan" clean
  run asan_oob_smem "AddressSanitizer: use-after-poison" "$OUT/simt_asan" planted oob_smem
  run asan_oob_global "AddressSanitizer: heap-buffer-overflow" "$OUT/simt_asan" planted oob_global
  unset ASAN_OPTIONS
else
  bad "ASan build"
fi

note "== ThreadSanitizer build"
# Kernels instrumented; the emulator runtime compiled plainly with the fiber/sync annotations.
if "$CXX" "${COMMON[@]}" -DSIMT_TSAN -fPIE -c "$HERE/simt.cpp" -o "$OUT/simt_tsan_rt.o" &&
   "$CXX" "${COMMON[@]}" -fsanitize=thread -fPIE -pie "$HERE/standalone_test.cc" "$OUT/simt_tsan_rt.o" -lpthread -o "$OUT/simt_tsan"; then
  # TSan's fixed memory layout breaks under high-entropy ASLR on recent kernels; run without ASLR.
  TS=("$OUT/simt_tsan")
  if command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then TS=(setarch "$(uname -m)" -R "$OUT/simt_tsan"); fi
  export TSAN_OPTIONS="halt_on_error=0:report_signal_unsafe=0"
  run tsan_clean clean "${TS[@]}" clean
  run tsan_nonatomic "ThreadSanitizer: data race" "${TS[@]}" planted nonatomic
  run tsan_missing_barrier "ThreadSanitizer: data race" "${TS[@]}" planted race
  unset TSAN_OPTIONS
else
  bad "TSan build"
fi
fi  # SIMT_SAN_STANDALONE

if [ "${1:-}" = --ext ]; then
  shift
  note "== AddressSanitizer build of the fastconv._simt extension"
  ROOT="$(dirname "$CSRC")"
  PKG="$OUT/pkg/fastconv"
  rm -rf "$OUT/pkg" && mkdir -p "$PKG" "$OUT/ext_obj"
  cp -r "$ROOT"/fastconv/. "$PKG"/ && rm -f "$PKG"/_simt*.so
  EXT_SUFFIX="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
  PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  TLIB="$(dirname "$TORCH_INC")/lib"
  EFLAGS=(-std=c++20 -O1 -g -fPIC -mfma -fno-omit-frame-pointer -fsanitize=address -Wno-unknown-pragmas
          -DFASTCONV_SIMT=1 '-DFASTCONV_CUDA_ARCHS=""' -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_simt
          -I"$CSRC" -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" -I"$PYINC")
  objs=(); ok=1; pids=()
  for src in "$HERE"/*.cpp "$CSRC"/common/checks.cpp; do
    obj="$OUT/ext_obj/$(basename "$src" .cpp).o"; objs+=("$obj")
    "$CXX" "${EFLAGS[@]}" -c "$src" -o "$obj" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || ok=0; done
  if [ $ok -eq 1 ] && "$CXX" -shared -fsanitize=address "${objs[@]}" -L"$TLIB" -lc10 -ltorch -ltorch_cpu -ltorch_python \
       -Wl,-rpath,"$TLIB" -o "$PKG/_simt$EXT_SUFFIX"; then
    [ $# -eq 0 ] && set -- "$ROOT/tests" -q -rf -k "simt and not planted" -p no:cacheprovider
    log="$OUT/ext_pytest.log"
    # libstdc++ preloaded too: Python does not link it, and ASan's __cxa_throw interceptor must
    # find it at startup. Reports go to files (pytest's fd capture would swallow stderr).
    PRE="$("$CXX" -print-file-name=libasan.so):$("$CXX" -print-file-name=libstdc++.so.6)"
    rm -f "$OUT"/ext_asan_report.*
    AOPT="detect_leaks=0:log_path=$OUT/ext_asan_report"
    (cd "$OUT" && LD_PRELOAD="$PRE" ASAN_OPTIONS="$AOPT" \
       PYTHONPATH="$OUT/pkg" "$PY" -c 'import torch, fastconv._simt as m; print("testing", m.__file__)')
    (cd "$OUT" && LD_PRELOAD="$PRE" ASAN_OPTIONS="$AOPT" PYTHONPATH="$OUT/pkg" "$PY" -m pytest "$@") >"$log" 2>&1
    rc=$?
    tail -3 "$log"
    if [ $rc -eq 0 ] && ! ls "$OUT"/ext_asan_report.* >/dev/null 2>&1; then note "ok   ext_asan: kernel tests pass, no findings";
    else bad "ext_asan (rc=$rc), see $log and $OUT/ext_asan_report.*"; head -40 "$OUT"/ext_asan_report.* 2>/dev/null; fi
  else
    bad "ASan build of the extension"
  fi
fi

if [ $fail -eq 0 ]; then note "ALL SANITIZER CHECKS PASSED"; else note "SANITIZER CHECKS FAILED"; fi
exit $fail
