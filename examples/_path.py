"""Imported first by every example script.

Lets the examples run from a source checkout without installing (puts the repository root on
sys.path when ``fastconv`` is not importable as an installed package), and stops with one line
naming the install command when a package the examples need is missing.
"""
import importlib.util
import os
import sys

if importlib.util.find_spec("fastconv") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_missing = [name for module, name in (("PIL", "pillow"), ("numpy", "numpy"), ("torchvision", "torchvision"))
            if importlib.util.find_spec(module) is None]
if _missing:
    print(f"{os.path.basename(sys.argv[0])}: error: the examples need {', '.join(_missing)}: install fastconv with its "
          "[examples] extra (pip install --no-build-isolation \".[examples]\", after torch and torchvision)",
          file=sys.stderr)
    sys.exit(2)
