"""Build fastconv: the CPU kernels always, the CUDA kernels when a CUDA build of torch and nvcc exist.

Environment:
  FASTCONV_CUDA=0|1      force the CUDA kernels off / on (default: on when torch.version.cuda is set
                         and a CUDA toolkit is found; never decided by torch.cuda.is_available()).
  TORCH_CUDA_ARCH_LIST   GPU architectures to build (default below when unset).
  FASTCONV_ONLY=_C,_simt build only these extension modules (for iterating on one part).
  MAX_JOBS               parallel compile jobs (ninja).
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # Ampere and Hopper SASS, plus PTX that newer GPUs can JIT.


def _toolkit_root(path):
    """The CUDA toolkit directory that holds bin/nvcc and the runtime library, or None."""
    if path and os.path.isfile(os.path.join(path, "bin", "nvcc")) and (
        glob.glob(os.path.join(path, "lib64", "libcudart.so*")) or glob.glob(os.path.join(path, "lib", "libcudart.so*"))
    ):
        return path
    return None


def find_cuda_home():
    """Resolve the real toolkit: CUDA_HOME, else follow the nvcc on PATH (which may be a wrapper script
    that execs the real nvcc; torch would otherwise take the wrapper's prefix and fail to link cudart)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = _toolkit_root(os.environ.get(var))
        if root:
            return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        root = _toolkit_root(os.path.dirname(os.path.dirname(real)))
        if root:
            return root
        try:
            with open(real, "rb") as f:
                head = f.read(4096).decode("utf-8", "ignore")
        except OSError:
            head = ""
        for target in re.findall(r"(/[^\s\"']+)/bin/nvcc", head):
            root = _toolkit_root(target)
            if root:
                return root
    return _toolkit_root("/usr/local/cuda")


def want_cuda(torch_cuda_version, cuda_home):
    force = os.environ.get("FASTCONV_CUDA")
    have_sources = bool(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if force == "0":
        return False, "FASTCONV_CUDA=0"
    problems = []
    if torch_cuda_version is None:
        problems.append("torch is a CPU-only build")
    if cuda_home is None:
        problems.append("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    if not have_sources:
        problems.append("no CUDA sources")
    if problems:
        if force == "1":
            sys.exit("fastconv: FASTCONV_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, "torch %s + nvcc in %s" % (torch_cuda_version, cuda_home)


CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

WITH_CUDA, CUDA_REASON = want_cuda(torch.version.cuda, CUDA_HOME)
if WITH_CUDA:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # With no GPU visible torch cannot pick architectures itself (and crashes trying).
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    print("fastconv: building CPU and CUDA kernels (%s; archs %s)" % (CUDA_REASON, os.environ["TORCH_CUDA_ARCH_LIST"]))
else:
    print("fastconv: building CPU kernels only (%s)" % CUDA_REASON)


def sources(*patterns):
    out = []
    for p in patterns:
        out += sorted(glob.glob(os.path.join("csrc", p)))
    return out


# -fopenmp: at::parallel_for is a header template that runs its body serially unless the extension
# itself is compiled with OpenMP; linking it resolves to the libgomp torch already loaded.
CXX_FLAGS = ["-O3", "-g0", "-Wall", "-Wno-unknown-pragmas", "-fvisibility=hidden", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]
include_dirs = [os.path.join(ROOT, "csrc")]
define_macros = []
archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else ""
define_macros.append(("FASTCONV_CUDA_ARCHS", '"%s"' % archs))

ext_modules = []
main_sources = sources("ops.cpp", "common/*.cpp", "cpu/*.cpp")
if WITH_CUDA:
    # The toolkit here lacks the cuBLAS/cuSPARSE headers some ATen CUDA headers include; the
    # nvidia wheels that come with a CUDA torch have them.
    for site in sys.path:
        cand = os.path.join(site, "nvidia", "cu%s" % torch.version.cuda.split(".")[0], "include")
        if os.path.isdir(cand):
            include_dirs.append(cand)
            break
    ext_modules.append(
        CUDAExtension(
            "fastconv._C",
            main_sources + sources("cuda/*.cu"),
            include_dirs=include_dirs,
            define_macros=define_macros + [("FASTCONV_WITH_CUDA", "1")],
            # no --use_fast_math: its flush-to-zero of denormals in every FFMA is what neither
            # the emulator nor cuDNN does; the kernels use no division, sqrt or transcendental
            # that its approximations would speed up, and FFMA runs at full rate with denormals.
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=LINK_FLAGS,
        )
    )
else:
    ext_modules.append(
        CppExtension(
            "fastconv._C", main_sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=LINK_FLAGS,
        )
    )

# The SIMT emulator: the CUDA kernels' own sources compiled by the host compiler and run on the CPU
# (fastconv.testing uses it to verify the CUDA kernels on machines without a GPU).
simt_sources = sources("simt/*.cpp")
if simt_sources:
    ext_modules.append(
        CppExtension(
            "fastconv._simt",
            simt_sources + sources("common/checks.cpp"),
            include_dirs=include_dirs,
            define_macros=define_macros + [("FASTCONV_SIMT", "1")],
            # -g1: line tables, so the emulator's fault messages name the kernel's file:line.
            extra_compile_args={"cxx": ["-O2", "-g1", "-mfma", "-Wno-unknown-pragmas",
                                        "-fvisibility=hidden"]},
        )
    )

only = os.environ.get("FASTCONV_ONLY")
if only:
    keep = {"fastconv." + name.strip() for name in only.split(",")}
    ext_modules = [e for e in ext_modules if e.name in keep]

def read_version():
    """The version is written once, as fastconv.__version__."""
    with open(os.path.join(ROOT, "fastconv", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


# What each entry point imports beyond torch (the library itself, `import fastconv`, needs only torch).
# torchvision is left unpinned here: install it together with torch (torchvision pins its torch).
BENCH_REQUIRES = ["tqdm", "matplotlib"]  # benchmarks/: progress bars, --plot
EXAMPLES_REQUIRES = ["torchvision", "pillow", "numpy", "tqdm", "matplotlib"]  # examples/: data, plots
ONNX_REQUIRES = ["onnx", "onnxscript", "onnxruntime"]  # torch.onnx.export of converted models, and running them
# benchmarks/zoo_bench.py: torchvision's models; its engine columns ONNX Runtime and OpenVINO
ZOO_REQUIRES = sorted(set(BENCH_REQUIRES + ["torchvision"] + ONNX_REQUIRES + ["openvino"]))
TEST_REQUIRES = ["pytest", "expecttest"] + sorted(set(BENCH_REQUIRES + EXAMPLES_REQUIRES + ONNX_REQUIRES))

setup(
    name="fastconv",
    version=read_version(),
    description="Hand-written CPU and CUDA kernels for conv2d, max-pool 2d and ReLU as PyTorch ops",
    packages=find_packages(include=["fastconv", "fastconv.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"bench": BENCH_REQUIRES, "examples": EXAMPLES_REQUIRES, "onnx": ONNX_REQUIRES, "zoo": ZOO_REQUIRES,
                    "test": TEST_REQUIRES},
    zip_safe=False,
)
