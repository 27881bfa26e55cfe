"""Per-kernel GPU resources of fastconv's CUDA kernels, from ptxas, for each architecture.

Compiles csrc/cuda/kernels.cu with nvcc `-Xptxas -v` for each requested architecture (no GPU
needed) and prints, per kernel: registers per thread, static / dynamic shared memory per block,
spill bytes, threads per block and the theoretical occupancy (resident warps / max warps per SM)
they allow. Exits with status 1 if any kernel spills.

    python benchmarks/cuda_resources.py                 # sm_80 and sm_90
    python benchmarks/cuda_resources.py --arch 80       # one architecture
    python benchmarks/cuda_resources.py --log build.log # parse a saved `ptxas -v` log instead
    python benchmarks/cuda_resources.py --sass          # + SASS instruction census per kernel
    python benchmarks/cuda_resources.py --counters      # emulator performance counters (no GPU)

--sass disassembles the compiled kernels with cuobjdump (from the CUDA toolkit on PATH / CUDA_HOME,
or the nvidia-cuda-cuobjdump wheel in site-packages/nvidia/cu13/bin) and counts, per kernel and
architecture: HMMA (tensor-core mma), FFMA, LDGSTS (cp.async), LDSM (ldmatrix), LDS / STS, LDG / STG,
local-memory traffic (LDL / STL: spills or local arrays) and integer division: IDIV32 (inlined
32-bit divisions / modulos, each starting with I2F.U32.RP), DIV64 (64-bit division subroutines,
I2F.U64.RP) and CALL (calls into them); LOOPDIV counts those inside the main loops (backward
branches whose body issues HMMA or FFMA).

--counters runs a few convolutions through the SIMT emulator (fastconv.testing) with its performance
counters on and prints, per kernel and source line: warp-level requests, 32-byte sectors (global)
or bank-conflict wavefronts (shared, ldmatrix), bytes, mma instructions and barriers. The emulator
counts the accesses it sees: __ldg, ld_/st_global, ld_/st_shared, ldmatrix, cp.async, mma and
barriers, not plain pointer dereferences.

Threads per block and dynamic shared memory are launch parameters that ptxas does not see; they
are derived from the kernel's template arguments exactly as csrc/cuda/conv2d_launch.h chooses them, or
for a fixed-size kernel 'X_kernel' read from its 'constexpr int X_threads' in csrc/cuda/*.cuh.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-SM limits: max threads, max blocks, registers, shared memory (bytes), per-block smem reserve.
SM_LIMITS = {
    "80": dict(threads=2048, blocks=32, regs=65536, smem=164 * 1024, reserved=1024),
    "86": dict(threads=1536, blocks=16, regs=65536, smem=100 * 1024, reserved=1024),
    "89": dict(threads=1536, blocks=24, regs=65536, smem=100 * 1024, reserved=1024),
    "90": dict(threads=2048, blocks=32, regs=65536, smem=228 * 1024, reserved=1024),
}


def nvcc_path():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cand = os.path.join(home, "bin", "nvcc")
    return cand if os.path.exists(cand) else shutil.which("nvcc")


def object_path(arch):
    """The compiled object of one architecture: per process, so concurrent runs do not overwrite
    each other's (FASTCONV_RESOURCES_OBJ_DIR keeps it somewhere else, e.g. to disassemble it)."""
    d = os.environ.get("FASTCONV_RESOURCES_OBJ_DIR") or "/tmp"
    return os.path.join(d, "fastconv_resources_%d_sm%s.o" % (os.getpid(), arch))


def compile_log(arch):
    import torch.utils.cpp_extension as ce
    import torch

    inc = ["-I", os.path.join(ROOT, "csrc")]
    for p in ce.include_paths():
        inc += ["-I", p]
    inc += ["-I", sysconfig.get_paths()["include"]]
    for site in sys.path:  # cuBLAS & co headers of the CUDA wheels (some ATen headers include them)
        cand = os.path.join(site, "nvidia", "cu%s" % (torch.version.cuda or "13").split(".")[0], "include")
        if os.path.isdir(cand):
            inc += ["-I", cand]
            break
    out = object_path(arch)
    cmd = [nvcc_path(), "-std=c++20", "-O3", "-c", os.path.join(ROOT, "csrc/cuda/kernels.cu"),
           "-o", out, "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
           "-gencode", "arch=compute_%s,code=sm_%s" % (arch, arch), "-Xptxas", "-v"] + inc
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("nvcc failed:\n" + res.stderr[-4000:])
    return res.stderr


def demangle(names):
    try:
        res = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return res.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def parse(log):
    """{arch: [(mangled, regs, static_smem, spill_st, spill_ld, stack)]} from a ptxas -v log."""
    out = {}
    cur = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for 'sm_(\d+)'", line)
        if m:
            cur = dict(name=m.group(1), arch=m.group(2), regs=0, smem=0, spill_st=0, spill_ld=0, stack=0)
            out.setdefault(cur["arch"], []).append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
    return out


def block_sizes():
    """{kernel name: threads per block} from the named constants of csrc/cuda/*.cuh: a kernel
    'X_kernel' with a fixed block size declares 'constexpr int X_threads = N;', which its
    __launch_bounds__ and its launch in csrc/cuda/<op>_launch.h both use."""
    sizes = {}
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    for name in sorted(os.listdir(cuda_dir)):
        if name.endswith(".cuh"):
            with open(os.path.join(cuda_dir, name)) as f:
                for m in re.finditer(r"constexpr int (\w+)_threads = (\d+);", f.read()):
                    sizes[m.group(1) + "_kernel"] = int(m.group(2))
    return sizes


BLOCK_SIZES = block_sizes()


def launch_shape(pretty):
    """(threads per block, dynamic smem bytes) as csrc/cuda/<op>_launch.h launches the kernel."""
    acc = 8 if "double" in pretty else 4
    m = re.search(r"igemm_kernel<.*?, (\d+), (\d+), (\d+), (\d+), (\d+)>", pretty)
    if m:
        bm, bn, bk, tm, tn = map(int, m.groups())
        return (bm // tm) * (bn // tn), 2 * bk * (bm + bn) * acc
    m = re.search(r"conv2d_tc(?:_wgrad)?_kernel<.*?, (\d+), (\d+), (\d+), (\d+), (\d+), \d+>", pretty)
    if m:  # BM, BN, WARPS_M, WARPS_N, STAGES, MIN_BLOCKS: 32*WM*WN threads, STAGES*(BM+BN)*64 bytes (conv2d_tc*.cuh)
        bm, bn, wm, wn, st = map(int, m.groups())
        return 32 * wm * wn, st * (bm + bn) * 64
    m = re.search(r"bias_grad_kernel<.*?, (\d+)>", pretty)  # NT, launched as bias_grad_threads
    if m:
        return int(m.group(1)), int(m.group(1)) * acc
    m = re.search(r"(\w+_kernel)\b", pretty)
    if m and m.group(1) in BLOCK_SIZES:
        return BLOCK_SIZES[m.group(1)], 0
    raise SystemExit("cuda_resources.py: no block size for %s (declare 'constexpr int <name>_threads' "
                     "next to its '<name>_kernel' in csrc/cuda)" % pretty)


def occupancy(arch, regs, smem, threads):
    lim = SM_LIMITS.get(arch, SM_LIMITS["80"])
    warps = (threads + 31) // 32
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = lim["regs"] // (regs_per_warp * warps)
    by_threads = lim["threads"] // (warps * 32)
    by_smem = lim["smem"] // (smem + lim["reserved"]) if smem else lim["blocks"]
    blocks = min(by_regs, by_threads, by_smem, lim["blocks"])
    return blocks, blocks * warps / (lim["threads"] // 32)


def short(pretty):
    pretty = pretty.replace("fastconv::cuda::", "").replace("c10::", "")
    pretty = re.sub(r"\(.*\)$", "", pretty)
    pretty = pretty.replace("void ", "")
    return pretty


def cuobjdump_path():
    """cuobjdump from PATH / CUDA_HOME, else the nvidia-cuda-cuobjdump wheel; None if absent."""
    cands = [shutil.which("cuobjdump")]
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cands.append(os.path.join(home, "bin", "cuobjdump"))
    for site in sys.path:
        cands.append(os.path.join(site, "nvidia", "cu13", "bin", "cuobjdump"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


SASS_CLASSES = [
    ("HMMA", r"^HMMA\b"),
    ("FFMA", r"^FFMA\b"),
    ("LDGSTS", r"^LDGSTS\b"),
    ("LDSM", r"^LDSM\b"),
    ("LDS", r"^LDS(\.|$)"),
    ("STS", r"^STS\b"),
    ("LDG", r"^LDG\b"),
    ("STG", r"^STG\b"),
    ("LDL", r"^LDL\b"),
    ("STL", r"^STL\b"),
    ("IDIV32", r"^I2F\.U32\.RP\b"),  # starts every inlined 32-bit unsigned division / modulo
    ("DIV64", r"^I2F\.U64\.RP\b"),   # starts a 64-bit division / modulo subroutine
    ("CALL", r"^CALL\b"),              # subroutine calls (here: the 64-bit division slow path)
]


def loop_divisions(insts):
    """Integer divisions inside the main loops: IDIV32 / DIV64 markers, and CALLs into a subroutine
    that holds one (the 64-bit division slow path; a CALL.REL.NOINC to just past the loop is the
    compiler's loop-exit idiom, not a division), within the address ranges [target, branch] of
    backward branches whose body issues HMMA or FFMA."""
    addr_index = {a: i for i, (a, _, _) in enumerate(insts)}
    first_exit = next((a for a, o, _ in insts if o.startswith("EXIT")), None)

    def calls_division(target):  # subroutines sit after the kernel body's first EXIT
        if first_exit is None or target is None or target < first_exit:
            return False
        for _, o, _ in insts[addr_index.get(target, len(insts)):]:
            if o.startswith(("RET", "EXIT")):
                return False
            if re.match(r"^I2F\.U(32|64)\.RP\b", o):
                return True
        return False

    n = 0
    for a, op, target in insts:
        if op.startswith("BRA") and target is not None and target < a:
            body = [(o, t) for b, o, t in insts if target <= b <= a]
            if any(re.match(r"^(HMMA|FFMA)\b", o) for o, _ in body):
                n += sum(1 for o, t in body if re.match(r"^I2F\.U(32|64)\.RP\b", o)
                         or (o.startswith("CALL") and calls_division(t)))
    return n


def sass_census(obj):
    """{mangled kernel: {class: count}} from `cuobjdump -sass obj`; 'LOOPDIV': division markers
    inside loops that issue HMMA / FFMA (loop_divisions)."""
    tool = cuobjdump_path()
    if tool is None:
        return None
    res = subprocess.run([tool, "-sass", obj], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit("cuobjdump failed:\n" + res.stderr[-2000:])
    out, insts, cur = {}, {}, None
    for line in res.stdout.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1)
            out.setdefault(cur, {k: 0 for k, _ in SASS_CLASSES})
            insts[cur] = []
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*)", line)
        if not m or cur is None:
            continue
        op = m.group(3)
        t = re.search(r"0x([0-9a-f]+)", m.group(4)) if op.startswith(("BRA", "CALL")) else None
        insts[cur].append((int(m.group(1), 16), op, int(t.group(1), 16) if t else None))
        for name, pat in SASS_CLASSES:
            if re.match(pat, op):
                out[cur][name] += 1
    for k in out:
        out[k]["LOOPDIV"] = loop_divisions(insts[k])
    return out


def print_sass(per_arch_census):
    for arch in sorted(per_arch_census):
        cen = per_arch_census[arch]
        names = sorted(cen)
        pretty = demangle(names)
        cols = [k for k, _ in SASS_CLASSES] + ["LOOPDIV"]
        print("\n## SASS census sm_%s (%d kernels)\n" % (arch, len(names)))
        print("| kernel | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for p, n in sorted(zip(pretty, names), key=lambda r: short(r[0])):
            print("| `%s` | " % short(p) + " | ".join(str(cen[n][c]) for c in cols) + " |")


def print_counters():
    """Emulator performance counters for a few representative convolutions."""
    sys.path.insert(0, ROOT)
    import torch
    import fastconv.functional as FF
    from fastconv import testing

    if not testing.simt_available():
        sys.exit("fastconv._simt (the SIMT emulator) is not built")
    # (input, weight, stride, groups, channels_last); groups == channels: the depthwise kernels
    cases = [((2, 32, 16, 16), (64, 32, 3, 3), 1, 1, False), ((2, 64, 12, 12), (64, 64, 1, 1), 1, 1, False),
             ((2, 32, 56, 56), (32, 1, 3, 3), 1, 32, False), ((2, 32, 56, 56), (32, 1, 3, 3), 2, 32, False),
             ((2, 32, 28, 28), (32, 1, 5, 5), 1, 32, False),
             ((2, 32, 28, 28), (32, 1, 3, 3), 1, 32, True), ((2, 32, 28, 28), (32, 1, 3, 3), 2, 32, True)]
    for xs, ws, stride, groups, cl in cases:
        x = torch.randn(xs)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w = torch.randn(ws, requires_grad=True)
        b = torch.randn(ws[0], requires_grad=True)
        with testing.simt_backend(), testing.counters(sample_every=4) as rows:
            FF.conv2d(x, w, b, stride, ws[2] // 2, 1, groups).sum().backward()
        print("\n## counters: conv2d x%s w%s stride %d groups %d%s forward + backward (every 4th block)\n" % (
            list(xs), list(ws), stride, groups, " channels_last" if cl else ""))
        print("| kernel | line | kind | requests | sectors / wavefronts | per request | bytes |")
        print("|---|---|---|---:|---:|---:|---:|")
        for r in rows:
            per = "%.1f" % (r["units"] / r["requests"]) if r["requests"] and r["units"] else "-"
            print("| `%s` | %s:%d | %s | %d | %d | %s | %d |" % (
                short(r["kernel"]), os.path.relpath(r["file"], ROOT), r["line"], r["kind"], r["requests"], r["units"],
                per, r["bytes"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", help="compute capability without the dot (default: 80 and 90)")
    ap.add_argument("--log", help="parse this saved ptxas -v log instead of compiling")
    ap.add_argument("--sass", action="store_true", help="also print the SASS instruction census (needs cuobjdump)")
    ap.add_argument("--counters", action="store_true", help="only print the emulator's performance counters")
    args = ap.parse_args()
    if args.counters:
        print_counters()
        return 0
    census = {}
    if args.log:
        with open(args.log) as f:
            per_arch = parse(f.read())
    else:
        per_arch = {}
        for arch in args.arch or ["80", "90"]:
            print("compiling csrc/cuda/kernels.cu for sm_%s ..." % arch, file=sys.stderr, flush=True)
            per_arch.update(parse(compile_log(arch)))
            if args.sass:
                c = sass_census(object_path(arch))
                if c is None:
                    print("--sass: cuobjdump not found (CUDA toolkit bin/, PATH, or pip install "
                          "nvidia-cuda-cuobjdump): no SASS census", file=sys.stderr)
                else:
                    census[arch] = c
    spills = 0
    for arch in sorted(per_arch):
        ks = per_arch[arch]
        pretty = demangle([k["name"] for k in ks])
        rows = sorted(zip(pretty, ks), key=lambda r: short(r[0]))
        print("\n## sm_%s (%d kernels)\n" % (arch, len(ks)))
        print("| kernel | regs | static smem | dyn smem | threads | spill st/ld | blocks/SM | occupancy |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for p, k in rows:
            threads, dyn = launch_shape(p)
            blocks, occ = occupancy(arch, k["regs"], k["smem"] + dyn, threads)
            spills += k["spill_st"] + k["spill_ld"]
            print("| `%s` | %d | %d | %d | %d | %d/%d | %d | %.0f%% |" % (
                short(p), k["regs"], k["smem"], dyn, threads, k["spill_st"], k["spill_ld"], blocks, 100 * occ))
    print("\ntotal spill bytes: %d" % spills)
    if census:
        print_sass(census)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
